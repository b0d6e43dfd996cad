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
        while not lines.shown and time.monotonic() < deadline:
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


def test_a_bad_setting_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(progress.ENV, "loud")
    with pytest.raises(PgolfError, match="PGOLF_PROGRESS='loud': expected one of auto, bar, lines, off"):
        progress.display_mode()
