"""The training time budget: GPTQ calibration after the loop must end inside MAX_WALLCLOCK_SECONDS, and a
run in record mode (a cap of at most 600 s) that overruns says so in its log and results.json, and
`pgolf check record` / `pgolf submit` refuse it for the record track."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pgolf.check.record import check_record
from pgolf.errors import PgolfError
from pgolf.presets import PRESETS, build_config
from pgolf.submit.records import Submission, write_records_folder
from pgolf.train.budget import record_mode, time_budget
from pgolf.train.loop import train

CAP_S = 0.3  # a tiny cap, and no reserve: the loop ends at the cap, so any calibration runs past it


@pytest.fixture(scope="module")
def overrun(shared_data, tmp_path_factory):
    data = shared_data / "datasets"
    runs = tmp_path_factory.mktemp("budget")
    cfg = build_config("tiny_cpu", [
        f"DATA_PATH={data / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={data / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
        "ITERATIONS=100000", f"MAX_WALLCLOCK_SECONDS={CAP_S}", "VAL_MAX_TOKENS=1024", "TRAIN_LOG_EVERY=0", "RUN_ID=over",
        "USE_GPTQ=1", "GPTQ_RESERVE_SECONDS=0", "GPTQ_CALIBRATION_BATCHES=2", "PGOLF_QUANT_SCHEME=int6",
    ], environ={})
    return runs / "over", train(cfg, runs_dir=runs, echo=False)


def test_an_overrun_in_record_mode_is_an_error_in_the_log_and_results(overrun):
    run_dir, results = overrun
    # the run really overran: its own measured times, summed here
    total_s = results["train_time_s"] + results["gptq_hessian_time_s"]
    assert results["gptq_hessian_time_s"] > 0 and total_s > CAP_S
    budget = results["time_budget"]
    assert budget["verdict"] == "error" and budget["record_mode"] and budget["cap_s"] == CAP_S
    assert budget["over_s"] == pytest.approx(total_s - CAP_S, abs=2e-3)
    assert json.loads((run_dir / "results.json").read_text())["time_budget"] == budget
    [line] = [x for x in (run_dir / "train.log").read_text().splitlines() if x.startswith("time_budget:")]
    assert "ERROR, not a valid record-track run" in line and "raise GPTQ_RESERVE_SECONDS" in line


def test_check_record_and_submit_refuse_the_overrun(overrun, tmp_path):
    run_dir, _ = overrun
    folder = tmp_path / "records" / "track_10min_16mb" / "2026-05-01_Over"
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("# over\n")
    (folder / "train_gpt.py").write_text("print('x')\n")
    (folder / "submission.json").write_text(json.dumps({"author": "a", "github_id": "a", "name": "n", "date": "2026-05-01",
                                                        "val_bpb": 1.0}))
    shutil.copyfile(run_dir / "train.log", folder / "train_seed1337.log")
    [finding] = [f for f in check_record(folder).findings if f.rule == "time-budget"]
    assert finding.severity == "error" and f"over the {CAP_S:g} s cap" in finding.message
    with pytest.raises(PgolfError) as info:
        write_records_folder([run_dir], Submission("Over", "a", "a"), tmp_path / "out")
    assert any(line.startswith("seed 1337: training") and "raise GPTQ_RESERVE_SECONDS" in line
               for line in str(info.value).splitlines())


def test_the_budget_judges_the_published_numbers():
    r44 = time_budget(600, 599_592, 4_700)  # R44 seed 42: 0.5 s reserve, then 4.7 s of Hessians
    assert r44.verdict == "error" and r44.over_ms == pytest.approx(4_292)
    assert time_budget(600, 592_054, 3_500).verdict == "ok"  # R46's rerun with an 8 s reserve
    assert time_budget(600, 600_038, 0).verdict == "ok"  # no calibration: the reference's stopping rule
    assert time_budget(4850, 4_851_000, 3_000).verdict == "warning"  # a non-record cap: a warning only
    assert time_budget(0, 10_000, 3_000) is None
    assert [record_mode(s) for s in (0, 120, 600, 600.5, 4850)] == [False, True, True, False, False]


def test_the_r44_preset_reserves_what_r46_showed_fits():
    cfg = PRESETS["sp8192_lqer_sparsegate_bossmear"]()
    assert cfg.quant.gptq_enabled and cfg.quant.gptq_reserve_seconds == 8.0
    # R44's own numbers with this reserve: stop at 592 s (+ its 92 ms last-step overshoot), then 4.7 s of Hessians
    assert time_budget(cfg.train.max_wallclock_seconds, 1000 * (600 - 8) + 92, 4_700).verdict == "ok"


def test_data_built_by_pgolf_data_prepare_is_recognised(tmp_path, sp1024_model, val_prefix_shard):
    from pgolf.data.prepare import prepare
    from pgolf.data.shards import prepared_manifest

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"document number {i} about golf."}) + "\n" for i in range(6)))
    out = prepare(docs, tmp_path / "mine", tokenizer=sp1024_model, val_docs=2, progress=False)
    assert prepared_manifest(tmp_path / "mine" / "fineweb_val_*.bin") == str(out.manifest_path.resolve())
    assert prepared_manifest(val_prefix_shard) is None  # the challenge's own shards
    # the challenge's download keeps its manifest two folders above the shards
    shards = tmp_path / "download" / "datasets" / "fineweb10B_sp1024"
    shards.mkdir(parents=True)
    shutil.copyfile(Path(val_prefix_shard), shards / "fineweb_val_000000.bin")
    (tmp_path / "download" / "manifest.json").write_text(json.dumps({"version": 1, "datasets": []}))
    assert prepared_manifest(shards / "fineweb_val_*.bin") is None
