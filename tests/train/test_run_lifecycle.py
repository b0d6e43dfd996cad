"""A run is never lost, overwritten or silent (issue 18, items 1, 4 and 6).

Through the real ``pgolf`` entry point: a finished run's id is refused, ``--replace`` starts it
afresh (never appended to) and the index shows what is on disk; whatever ``pgolf train`` would
refuse, it refuses before writing anything, and ``pgolf doctor`` fails on the same things with the
same words; an interrupted or failed run says so in its log, its status file, ``pgolf runs list``
and ``pgolf report``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def train_args(shared_data: Path, runs: Path, *extra: str) -> list[str]:
    d = shared_data / "datasets"
    sets = [f"DATA_PATH={d / 'fineweb10B_sp1024_trainsample'}", f"VAL_FILES={d / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}", "ITERATIONS=3", "VAL_MAX_TOKENS=4096",
            "TRAIN_LOG_EVERY=0", *extra]
    return ["train", "--preset", "tiny_cpu", "--runs-dir", str(runs), *(f"--set={s}" for s in sets)]


def doctor_args(shared_data: Path, runs: Path, *extra: str) -> list[str]:
    return ["doctor", "--preset", "tiny_cpu", "--runs-dir", str(runs), "--json",
            *(a for a in train_args(shared_data, runs, *extra) if a.startswith("--set="))]


def listed(run_pgolf, runs: Path) -> dict[str, dict]:
    """``pgolf runs list`` as {run_id: {column: cell}} (cells split on runs of two spaces)."""
    code, out, err = run_pgolf(["runs", "list", "--runs-dir", str(runs)])
    assert code == 0, err
    lines = out.splitlines()
    header = lines[0].split()
    found = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        found[cells[0]] = dict(zip(header, cells))
    return found


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- item 1: never overwritten, never appended to ------------------------------------------------


def test_a_finished_runs_id_is_refused_and_replace_starts_it_afresh(shared_data, tmp_path, run_pgolf):
    runs = tmp_path / "runs"
    code, _, err = run_pgolf(train_args(shared_data, runs, "RUN_ID=r", "SEED=1"))
    assert code == 0, err
    first = snapshot(runs / "r")
    old_bpb = json.loads(first["results.json"])["val_bpb"]
    assert float(listed(run_pgolf, runs)["r"]["val_bpb"]) == pytest.approx(old_bpb, abs=1e-5)

    code, out, err = run_pgolf(train_args(shared_data, runs, "RUN_ID=r", "SEED=2"))
    assert code == 2 and err.count("\n") == 1 and "already holds a finished run" in err and "--replace" in err
    assert snapshot(runs / "r") == first  # not a byte of the finished run changed

    code, _, err = run_pgolf([*train_args(shared_data, runs, "RUN_ID=r", "SEED=2"), "--replace"])
    assert code == 0, err
    log = (runs / "r" / "train.log").read_text()
    assert log.count("\nrun_id: r\n") == 1 and log.count("=" * 80) == 2  # one header, one run
    steps = [json.loads(line)["step"] for line in (runs / "r" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == [1, 2, 3]  # one run's curve, not two runs' appended
    new_bpb = json.loads((runs / "r" / "results.json").read_text())["val_bpb"]
    assert new_bpb != old_bpb
    assert float(listed(run_pgolf, runs)["r"]["val_bpb"]) == pytest.approx(new_bpb, abs=1e-5)  # the index follows the disk
    assert sorted(p.name for p in runs.iterdir()) == ["index.sqlite", "r"]  # the old run moved aside is gone

    shutil.rmtree(runs / "r")
    assert "r" not in listed(run_pgolf, runs)  # a deleted run leaves the index too


def test_a_reused_sweep_name_is_refused_before_anything_trains(shared_data, tmp_path, run_pgolf):
    runs = tmp_path / "runs"
    assert run_pgolf(train_args(shared_data, runs, "RUN_ID=lr_000"))[0] == 0  # what `--name lr` made last time
    before = snapshot(runs / "lr_000")
    sets = [a for a in train_args(shared_data, runs) if a.startswith("--set=")]
    code, out, err = run_pgolf(["sweep", "--preset", "tiny_cpu", "--runs-dir", str(runs), *sets,
                                "--grid", "MATRIX_LR=0.02,0.04", "--name", "lr"])
    assert code == 2 and err.count("\n") == 1 and "lr_000" in err and "already holds a finished run" in err
    assert "--name" in err and "--replace" in err and out == ""  # nothing trained
    assert snapshot(runs / "lr_000") == before and not (runs / "lr_001").exists()


# ---- item 4: refused before anything is written, and doctor fails on the same ---------------------


def _lrzip_missing() -> bool:
    return shutil.which("lrzip") is None


REFUSALS = [
    pytest.param(["PGOLF_COMPRESSOR=lrzip"], "compressor", "PGOLF_COMPRESSOR=lrzip",
                 marks=pytest.mark.skipif(not _lrzip_missing(), reason="lrzip is installed here")),
    pytest.param(["TRAIN_BATCH_TOKENS=1000"], "batch", "TRAIN_BATCH_TOKENS=1000 gives 1000 tokens per rank micro-step"),
]


@pytest.mark.parametrize(("sets", "check", "words"), REFUSALS)
def test_train_refuses_before_writing_and_doctor_fails_with_the_same_line(shared_data, tmp_path, run_pgolf, sets, check, words):
    runs = tmp_path / "runs"
    code, _, err = run_pgolf(train_args(shared_data, runs, "RUN_ID=x", *sets))
    assert code == 2 and err.count("\n") == 1 and words in err
    assert not runs.exists()  # not even the runs folder
    code, out, _ = run_pgolf(doctor_args(shared_data, runs, "RUN_ID=x", *sets))
    found = {f["check"]: f for f in json.loads(out)}
    assert code == 1 and found[check]["status"] == "fail"
    assert err == f"pgolf: error: {found[check]['detail']}\n"  # one check, one wording, both verbs


def test_a_taken_run_id_fails_doctor_too(shared_data, tmp_path, run_pgolf):
    runs = tmp_path / "runs"
    assert run_pgolf(train_args(shared_data, runs, "RUN_ID=x"))[0] == 0
    code, out, _ = run_pgolf(doctor_args(shared_data, runs, "RUN_ID=x"))
    found = {f["check"]: f for f in json.loads(out)}
    assert code == 1 and found["run id"]["status"] == "fail" and "already holds a finished run" in found["run id"]["detail"]
    code, out, _ = run_pgolf(doctor_args(shared_data, runs, "RUN_ID=y"))
    assert code == 0 and {f["check"]: f for f in json.loads(out)}["run id"]["status"] == "ok"


def test_no_room_for_the_checkpoint_is_refused_before_training(shared_data, tmp_path, run_pgolf, monkeypatch):
    import shutil as shutil_module

    real = shutil_module.disk_usage
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: real(p)._replace(free=10 << 20))  # a nearly full disk
    runs = tmp_path / "runs"
    code, _, err = run_pgolf(train_args(shared_data, runs, "RUN_ID=x"))
    assert code == 2 and err.count("\n") == 1 and "MB free" in err and not runs.exists()
    code, out, _ = run_pgolf(doctor_args(shared_data, runs))
    assert code == 1 and {f["check"]: f for f in json.loads(out)}["run space"]["status"] == "fail"


# ---- item 6: interrupted and failed runs say so, and stay visible ----------------------------------


def test_an_interrupted_run_is_recorded_listed_and_reported(shared_data, tmp_path, run_pgolf, monkeypatch):
    from pgolf.train import loop

    real_step, calls = loop.train_step, []

    def ctrl_c_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", ctrl_c_at_step_3)
    runs = tmp_path / "runs"
    code, _, err = run_pgolf(train_args(shared_data, runs, "RUN_ID=cc", "ITERATIONS=10"))
    assert code == 130 and "interrupted" in err
    run = runs / "cc"
    assert (run / "train.log").read_text().splitlines()[-1] == "run interrupted at step 2"
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert listed(run_pgolf, runs)["cc"]["status"] == "interrupted at step 2"
    code, out, err = run_pgolf(["report", "cc", "--runs-dir", str(runs), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "interrupted at step 2" in page and (tmp_path / "rep" / "train_loss.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_pgolf(train_args(shared_data, runs, "RUN_ID=cc"))  # not appended to either
    assert code == 2 and "did not finish (interrupted at step 2)" in err


def test_a_failed_run_is_recorded_with_its_reason(shared_data, tmp_path, run_pgolf, monkeypatch):
    from pgolf.errors import PgolfError
    from pgolf.train import loop

    def diverge(s, hessians=None):
        raise PgolfError("export: something went wrong here")

    monkeypatch.setattr(loop, "export_and_score", diverge)
    runs = tmp_path / "runs"
    code, _, err = run_pgolf(train_args(shared_data, runs, "RUN_ID=f"))
    assert code == 2 and "something went wrong here" in err
    status = json.loads((runs / "f" / "status.json").read_text())
    assert status["status"] == "failed" and status["detail"] == "at step 3: export: something went wrong here"
    assert (runs / "f" / "train.log").read_text().splitlines()[-1] == "run failed at step 3: export: something went wrong here"
    assert listed(run_pgolf, runs)["f"]["status"].startswith("failed at step 3: export")
    code, out, _ = run_pgolf(["runs", "show", "f", "--runs-dir", str(runs)])
    assert code == 0 and json.loads(out)["status"] == "failed" and json.loads(out)["results"] == {}


def test_a_run_whose_process_died_is_listed_as_died(tmp_path, run_pgolf):
    from pgolf.train.lifecycle import run_state

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = tmp_path / "runs" / "k"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "status.json").write_text(json.dumps({"status": "running", "pid": int(gone.stdout), "host": socket.gethostname()}))
    assert run_state(run)[0] == "died"
    assert listed(run_pgolf, tmp_path / "runs")["k"]["status"].startswith("died")
