"""The runs index finds finished runs by itself; list/show/compare read it; report writes plots."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from pgolf.presets import build_config
from pgolf.train.loop import train


@pytest.fixture(scope="module")
def two_runs(shared_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    common = [
        f"DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
        "ITERATIONS=6", "VAL_MAX_TOKENS=4096", "TRAIN_LOG_EVERY=0",
    ]
    train(build_config("tiny_cpu", common + ["RUN_ID=alpha"], environ={}), runs_dir=runs, echo=False)
    train(build_config("tiny_cpu", common + ["RUN_ID=beta", "MATRIX_LR=0.02"], environ={}), runs_dir=runs, echo=False)
    return runs


def test_list_syncs_finished_runs_into_sqlite(two_runs, run_pgolf, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(two_runs, runs)
    (runs / "unfinished").mkdir()  # no results.json: not a run yet
    code, out, err = run_pgolf(["runs", "list", "--runs-dir", str(runs), "--sort", "val_bpb"])
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:]] == sorted(
        ["alpha", "beta"], key=lambda r: json.loads((runs / r / "results.json").read_text())["val_bpb"])
    with sqlite3.connect(runs / "index.sqlite") as db:
        assert {r[0] for r in db.execute("SELECT run_id FROM runs")} == {"alpha", "beta"}
        bpb = db.execute("SELECT val_bpb FROM runs WHERE run_id = 'alpha'").fetchone()[0]
    assert bpb == json.loads((runs / "alpha" / "results.json").read_text())["val_bpb"]
    code, out, err = run_pgolf(["runs", "list", "--runs-dir", str(runs), "--json"])
    listed = {r["run_id"]: r for r in json.loads(out)}
    assert code == 0 and set(listed) == {"alpha", "beta"} and listed["alpha"]["val_bpb"] == bpb


def test_show_and_compare(two_runs, run_pgolf):
    code, out, _ = run_pgolf(["runs", "show", "alp", "--runs-dir", str(two_runs)])
    assert code == 0 and json.loads(out)["config"]["train"]["run_id"] == "alpha"
    code, out, _ = run_pgolf(["runs", "compare", "alpha", "beta", "--runs-dir", str(two_runs)])
    diff = out.split("results")[0]
    assert code == 0 and "optim.matrix_lr" in diff and "0.02" in diff and "model.num_layers" not in diff
    code, out, _ = run_pgolf(["runs", "compare", "alpha", "beta", "--runs-dir", str(two_runs), "--json"])
    compared = json.loads(out)
    assert code == 0 and compared["beta"]["config"] == {"optim.matrix_lr": 0.02, "train.run_id": "beta"}
    assert compared["alpha"]["results"]["val_bpb"] == json.loads((two_runs / "alpha" / "results.json").read_text())["val_bpb"]
    code, _, err = run_pgolf(["runs", "show", "gamma", "--runs-dir", str(two_runs)])
    assert code == 2 and "not in" in err


def test_report_writes_plots_and_a_page(two_runs, run_pgolf, tmp_path):
    code, out, err = run_pgolf(["report", "alpha", "beta", "--runs-dir", str(two_runs), "--out", str(tmp_path / "rep")])
    assert code == 0, err
    for name in ("train_loss.png", "val_bpb.png", "bpb_by_phase.png", "artifact_bytes.png"):
        data = (tmp_path / "rep" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "alpha" in page and "beta" in page and 'src="val_bpb.png"' in page and "optim.matrix_lr" in page
    assert "Artifact bytes by tensor group" in page and "<th>attn</th>" in page and "<th>code</th>" in page


def test_artifact_groups_sum_to_the_runs_total(two_runs):
    from pgolf.experiments.read import load_run
    from pgolf.experiments.report import artifact_groups

    run = load_run(two_runs / "alpha")
    groups = artifact_groups(run)
    assert sum(groups.values()) == run.results["bytes_total"] and groups["code"] == run.results["bytes_code"]
    assert {"embed", "attn", "mlp", "container"} <= set(groups)


def test_sweep_parsing_and_sampling():
    from pgolf.experiments.sweep import combinations, parse_grid

    grid = parse_grid(["MATRIX_LR=0.02,0.04", "model.num_layers=2,3,4"])
    combos = combinations(grid)
    assert len(combos) == 6 and ["MATRIX_LR=0.02", "model.num_layers=3"] in combos
    sample = combinations(grid, sample=4, seed=1)
    assert len(sample) == 4 and len({tuple(c) for c in sample}) == 4 and all(c in combos for c in sample)
    assert sample == combinations(grid, sample=4, seed=1)


@pytest.mark.parametrize("argv,message", [
    (["sweep", "--preset", "tiny_cpu"], "at least one --grid"),
    (["sweep", "--preset", "tiny_cpu", "--grid", "MATRIX_LR"], "expected KEY=v1,v2"),
    (["sweep", "--preset", "tiny_cpu", "--grid", "NUM_LAYERS=2,two"], "NUM_LAYERS='two'"),
])
def test_sweep_rejects_bad_grids_before_training(run_pgolf, tmp_path, argv, message):
    code, _, err = run_pgolf([*argv, "--runs-dir", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and message in err


def test_sweep_runs_the_grid_and_names_the_best(shared_data, run_pgolf, tmp_path):
    sets = [f"--set=DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
            f"--set=VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"--set=TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
            "--set=ITERATIONS=3", "--set=VAL_MAX_TOKENS=4096", "--set=TRAIN_LOG_EVERY=0"]
    code, out, err = run_pgolf(["sweep", "--preset", "tiny_cpu", *sets, "--grid", "MATRIX_LR=0.0,0.08",
                                "--name", "sw", "--runs-dir", str(tmp_path)])
    assert code == 0, err
    bpb = {i: json.loads((tmp_path / f"sw_00{i}" / "results.json").read_text())["val_bpb"] for i in (0, 1)}
    winner = min(bpb, key=bpb.get)
    assert f"best: sw_00{winner} val_bpb {bpb[winner]:.6f}" in out
    code, out, _ = run_pgolf(["runs", "list", "--runs-dir", str(tmp_path), "--sweep", "sw"])
    assert code == 0 and {line.split()[0] for line in out.splitlines()[1:]} == {"sw_000", "sw_001"}


def test_sweep_and_seeds_json_list_every_run_and_the_best(two_runs, run_pgolf, monkeypatch):
    """The --json of pgolf sweep and pgolf seeds, over two finished runs (their training is tested above)."""
    import pgolf.experiments.sweep
    import pgolf.submit.seeds
    from pgolf.experiments.read import load_run
    from pgolf.experiments.sweep import SweepResult
    from pgolf.submit.seeds import SeedOutcome

    runs = {name: load_run(two_runs / name) for name in ("alpha", "beta")}
    bpb = {name: run.results["val_bpb"] for name, run in runs.items()}
    monkeypatch.setattr(pgolf.experiments.sweep, "run_sweep", lambda *a, **k: [
        SweepResult(("MATRIX_LR=0.04",), "alpha", 0, runs["alpha"]), SweepResult(("MATRIX_LR=0.02",), "beta", 0, runs["beta"])])
    code, out, _ = run_pgolf(["sweep", "--preset", "tiny_cpu", "--grid", "MATRIX_LR=0.04,0.02", "--json"])
    doc = json.loads(out.splitlines()[-1])
    assert code == 0 and doc["best"] == min(bpb, key=bpb.get)
    assert {r["run_id"]: r["val_bpb"] for r in doc["runs"]} == bpb
    monkeypatch.setattr(pgolf.submit.seeds, "run_seeds", lambda plan: [
        SeedOutcome(1, "alpha", 0, runs["alpha"]), SeedOutcome(2, "t_seed2", 1, None)])
    code, out, _ = run_pgolf(["seeds", "--preset", "tiny_cpu", "--seeds", "1", "2", "--name", "t", "--json"])
    doc = json.loads(out.splitlines()[-1])
    assert code == 1  # a seed failed
    assert doc == [{"seed": 1, "run_id": "alpha", "returncode": 0, "run_dir": str(two_runs / "alpha"), "val_bpb": bpb["alpha"],
                    "val_loss": runs["alpha"].results["val_loss"]},
                   {"seed": 2, "run_id": "t_seed2", "returncode": 1, "run_dir": None, "val_bpb": None, "val_loss": None}]
