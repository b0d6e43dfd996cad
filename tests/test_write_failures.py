"""A read-only or full output location is one line naming it (exit 2), found before the work, and
never leaves a half-written file (issue 18, item 2).

Tests may run as root, whom permission bits do not stop, so a read-only folder is simulated the way
a read-only mount behaves for everyone: every call that would create, open for writing, rename or
make a folder under it fails with EROFS (``read_only``). Each verb's own work is replaced by a
sentinel that fails the test if reached: the refusal must come first.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: writes under ``folder`` fail with EROFS, reads still work."""
    blocked: list[Path] = []
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    real_replace, real_rename, real_connect = os.replace, os.rename, sqlite3.connect

    def inside(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False  # a file descriptor
        p = Path(os.fsdecode(path)).absolute()
        return any(p == b or b in p.parents for b in blocked)

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wxa+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fsdecode(path))
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def fake_move(real):
        def move(src, dst, *args, **kwargs):
            if inside(src) or inside(dst):
                refuse(dst)
            return real(src, dst, *args, **kwargs)
        return move

    def fake_connect(database, *args, **kwargs):
        if not kwargs.get("uri") and inside(database):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_connect(database, *args, **kwargs)

    for target, name, fake in ((builtins, "open", fake_open), (io, "open", fake_open), (os, "open", fake_os_open),
                               (os, "mkdir", fake_mkdir), (os, "replace", fake_move(real_replace)),
                               (os, "rename", fake_move(real_rename)), (sqlite3, "connect", fake_connect)):
        monkeypatch.setattr(target, name, fake)

    def block(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        blocked.append(folder.absolute())
        return folder

    return block


@pytest.fixture
def never(monkeypatch):
    """``never(module, name)``: the verb's work; reaching it fails the test (the refusal must come first)."""

    def install(module, name: str) -> None:
        def reached(*args, **kwargs):
            raise AssertionError(f"{module.__name__}.{name} ran before the output location was checked")

        monkeypatch.setattr(module, name, reached)

    return install


def assert_one_line_naming(code: int, err: str, folder: Path) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("pgolf: error: ") and str(folder) in err, err
    assert "Read-only file system" in err or "cannot write" in err, err
    assert not any(folder.iterdir())  # nothing written, not even a temporary file


def data_sets(shared_data: Path) -> list[str]:
    d = shared_data / "datasets"
    return [f"--set=DATA_PATH={d / 'fineweb10B_sp1024_trainsample'}",
            f"--set=VAL_FILES={d / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"--set=TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
            "--set=ITERATIONS=3", "--set=VAL_MAX_TOKENS=4096", "--set=TRAIN_LOG_EVERY=0"]


def eval_inputs(shared_data: Path) -> list[str]:
    return ["--tokenizer", str(shared_data / "tokenizers" / "fineweb_1024_bpe.model"),
            "--val", str(shared_data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"),
            "--max-tokens", "2048"]


def test_train(shared_data, tmp_path, run_pgolf, read_only, never):
    from pgolf.train import loop

    never(loop, "setup")
    runs = read_only(tmp_path / "runs")
    code, _, err = run_pgolf(["train", "--preset", "tiny_cpu", "--runs-dir", str(runs), *data_sets(shared_data)])
    assert_one_line_naming(code, err, runs)


def test_bundle(tmp_path, run_pgolf, read_only, never):
    from pgolf.bundle import build

    never(build, "bundle_source")
    out = read_only(tmp_path / "out")
    code, _, err = run_pgolf(["bundle", "--preset", "tiny_cpu", "--out", str(out / "train_gpt.py")])
    assert_one_line_naming(code, err, out)


def test_report(finished_run, tmp_path, run_pgolf, read_only, never):
    from pgolf.experiments import report

    never(report, "_curves")
    out = read_only(tmp_path / "out")
    code, _, err = run_pgolf(["report", str(finished_run), "--runs-dir", str(finished_run.parent), "--out", str(out / "rep")])
    assert_one_line_naming(code, err, out)


def test_quant_sweep(shared_data, finished_run, tmp_path, run_pgolf, read_only, never):
    from pgolf.eval import cli

    never(cli, "_load_state")  # reading the checkpoint starts the work
    out = read_only(tmp_path / "out")
    code, _, err = run_pgolf(["quant", "sweep", str(finished_run / "checkpoint.safetensors"), "--schemes", "int8",
                              *eval_inputs(shared_data), "--out", str(out)])
    assert_one_line_naming(code, err, out)


def test_data_prepare(tmp_path, run_pgolf, read_only, never):
    from pgolf.data import prepare

    never(prepare, "document_files")
    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(6)))
    out = read_only(tmp_path / "out")
    code, _, err = run_pgolf(["data", "prepare", "--docs", str(docs), "--out", str(out / "o"), "--vocab-size", "320",
                              "--val-docs", "2", "--quiet"])
    assert_one_line_naming(code, err, out)


def test_submit(finished_run, tmp_path, run_pgolf, read_only, never):
    from pgolf.submit import records

    never(records, "_stage_bundle")
    script = tmp_path / "train_gpt.py"
    script.write_text("print('a bundle')\n")
    out = read_only(tmp_path / "records")
    code, _, err = run_pgolf(["submit", str(finished_run), "--name", "x", "--author", "a", "--github-id", "a",
                              "--bundle", str(script), "--records-dir", str(out), "--track", "non_record_16mb"])
    assert_one_line_naming(code, err, out)


def test_eval_token_losses(shared_data, finished_run, tmp_path, run_pgolf, read_only, never):
    from pgolf.eval import cli

    never(cli, "_load_state")
    out = read_only(tmp_path / "out")
    code, _, err = run_pgolf(["eval", "--checkpoint", str(finished_run / "checkpoint.safetensors"), *eval_inputs(shared_data),
                              "--device", "cpu", "--token-losses", str(out / "losses.npy")])
    assert_one_line_naming(code, err, out)


def test_bench(shared_data, tmp_path, run_pgolf, read_only, never):
    from pgolf.bench import run

    never(run, "bench_train")
    out = read_only(tmp_path / "out")
    code, _, err = run_pgolf(["bench", "train", "--preset", "tiny_cpu", *data_sets(shared_data), "--out", str(out)])
    assert_one_line_naming(code, err, out)


def test_runs_list_reads_a_read_only_runs_folder(finished_run, tmp_path, run_pgolf, read_only):
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs / "w")
    read_only(runs)
    code, out, err = run_pgolf(["runs", "list", "--runs-dir", str(runs)])
    assert code == 0, err
    bpb = json.loads((runs / "w" / "results.json").read_text())["val_bpb"]
    row = out.splitlines()[1].split()
    assert row[0] == "w" and float(row[3]) == pytest.approx(bpb, abs=1e-5)
    assert not (runs / "index.sqlite").exists()  # the index was kept in memory


def test_a_full_disk_at_checkpoint_save_is_one_line_and_leaves_no_partial_file(shared_data, tmp_path, run_pgolf, monkeypatch):
    real_open = builtins.open

    class FullDisk(io.RawIOBase):
        """A file whose device fills up after 1000 bytes."""

        def __init__(self, file):
            self.file, self.room = file, 1000

        def writable(self):
            return True

        def write(self, data):
            if len(data) > self.room:
                self.file.write(bytes(data[: self.room]))
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.file.write(data)

        def fileno(self):
            return self.file.fileno()

        def close(self):
            self.file.close()
            super().close()

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode and "checkpoint.safetensors" in os.fspath(file) else f

    monkeypatch.setattr(builtins, "open", open_on_a_full_disk)
    runs = tmp_path / "runs"
    code, _, err = run_pgolf(["train", "--preset", "tiny_cpu", "--runs-dir", str(runs), *data_sets(shared_data), "--set=RUN_ID=full"])
    run = runs / "full"
    assert code == 2 and err.count("\n") == 1, err
    assert str(run / "checkpoint.safetensors") in err and "No space left on device" in err
    assert not any(p.name.startswith((".checkpoint", "checkpoint")) for p in run.iterdir())  # no partial checkpoint
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["detail"]
