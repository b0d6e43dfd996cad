"""pgolf.progress: long phases are shown on stderr (a bar on a terminal, else a start and an end line
once they outlast the delay), never on stdout, and PGOLF_PROGRESS chooses."""

from __future__ import annotations

import time

import pytest

from pgolf import progress
from pgolf.errors import PgolfError


def test_lines_mode_prints_start_and_end_on_stderr_only(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    with progress.phase("eval: standard windows", 4096, detail="32 windows of 128") as bar:
        bar.update(2048)
        bar.update(2048)
    out, err = capsys.readouterr()
    assert out == ""
    start, end = err.splitlines()
    assert start == "eval: standard windows, 32 windows of 128 ..."
    assert end.startswith("eval: standard windows: done in ") and end.endswith(" s")


def test_the_start_line_names_the_total_without_a_detail(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    with progress.phase("train: compile warm-up", 40, "step"):
        pass
    assert capsys.readouterr().err.splitlines()[0] == "train: compile warm-up, 40 steps ..."


def test_off_a_terminal_a_short_phase_prints_nothing(monkeypatch, capsys):
    monkeypatch.delenv(progress.ENV, raising=False)
    with progress.phase("train: export") as bar:
        bar.update(1)
    assert capsys.readouterr() == ("", "")


def test_off_a_terminal_a_long_phase_prints_both_lines(monkeypatch, capsys):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(progress, "DELAY_S", 0.05)
    with progress.phase("train: round trip of the artifact", 1000) as lines:
        deadline = time.monotonic() + 10.0  # the timer fires after 0.05 s; a loaded machine may take longer
        while not lines.printed and time.monotonic() < deadline:
            time.sleep(0.02)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "train: round trip of the artifact, 1,000 tokens ..."
    assert err[1].startswith("train: round trip of the artifact: done in ")


def test_a_failed_phase_says_it_stopped(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    with pytest.raises(KeyboardInterrupt):
        with progress.phase("eval: sliding windows", 10):
            raise KeyboardInterrupt
    assert capsys.readouterr().err.splitlines()[1].startswith("eval: sliding windows: stopped after ")


def test_bar_mode_draws_a_tqdm_bar_on_stderr(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "bar")
    with progress.phase("eval: standard windows", 4096) as bar:
        bar.update(4096)
    out, err = capsys.readouterr()
    assert out == "" and "eval: standard windows:   0%|" in err and "/4.10k" in err and bar.n == 4096


@pytest.mark.parametrize("total", [0, 4096])
def test_off_prints_nothing(monkeypatch, capsys, total):
    monkeypatch.setenv(progress.ENV, "off")
    with progress.phase("eval: standard windows", total) as bar:
        bar.update(4096)
    assert capsys.readouterr() == ("", "")


def test_a_bad_setting_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(progress.ENV, "loud")
    with pytest.raises(PgolfError, match="PGOLF_PROGRESS='loud': expected one of auto, bar, lines, off"):
        progress.display_mode()


def test_run_phases_follow_one_another_and_a_counted_one_ends_itself(monkeypatch, capsys):
    import contextlib

    import numpy as np

    monkeypatch.setenv(progress.ENV, "lines")
    held = []

    @contextlib.contextmanager
    def context(name, shown):
        held.append(name)
        yield
        held.append(f"/{name}")

    run = progress.RunPhases("train: ", {"round trip": "round trip of the artifact"}, world_size=2,
                             context=lambda name, shown: context(name, shown) if name == "sliding" else None)
    run("compile warm-up")
    bar = run("round trip", np.zeros(4097))  # 4096 targets, half of them this rank's
    bar.update(2048)  # the whole share: done
    run("sliding", np.zeros(4097))
    run("")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": done in")[0] for line in lines] == [
        "train: compile warm-up ...", "train: compile warm-up",
        "train: round trip of the artifact, 2,048 tokens ...", "train: round trip of the artifact",
        "train: sliding, 2,048 tokens ...", "train: sliding"]
    assert held == ["sliding", "/sliding"]
