"""benchmarks/train_parity.py (the "same math" check, run on a GPU) reads both sides' runs right and
judges pgolf's seed mean against the reference's spread."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parity():
    spec = importlib.util.spec_from_file_location("train_parity", REPO_ROOT / "benchmarks" / "train_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFERENCE_LOG = """\
val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=x
step:1/3 train_loss:6.9357 train_time:353ms step_avg:353.31ms
step:2/3 train_loss:6.5000 train_time:690ms step_avg:345.00ms
step:3/3 train_loss:6.2500 train_time:1020ms step_avg:340.00ms
step:3/3 val_loss:6.1000 val_bpb:3.6130 train_time:1020ms step_avg:340.00ms
peak memory allocated: 10 MiB reserved: 12 MiB
final_int8_zlib_roundtrip val_loss:6.1100 val_bpb:3.6190 eval_time:900ms
final_int8_zlib_roundtrip_exact val_loss:6.11001234 val_bpb:3.61901234
"""


def test_a_reference_run_is_read_from_its_log(parity):
    run = parity.parse_reference_run(REFERENCE_LOG)
    assert run["losses"] == {1: 6.9357, 2: 6.5, 3: 6.25} and run["step_ms"] == 340.0
    assert run["pre_quant_val_bpb"] == 3.613 and run["val_bpb"] == 3.61901234  # the exact round-trip line
    with pytest.raises(SystemExit, match="did it finish"):
        parity.parse_reference_run(REFERENCE_LOG.split("step:3/3 val_loss")[0])


def test_a_pgolf_run_is_read_from_its_run_folder(parity, tmp_path):
    rows = [{"event": "train", "step": s, "train_loss": 7.0 - s} for s in (1, 2, 3)] + [{"event": "val", "step": 3, "val_bpb": 3.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "results.json").write_text(json.dumps({"step_avg_ms": 120.0, "pre_quant": {"val_bpb": 3.5}, "val_bpb": 3.51}))
    assert parity.parse_pgolf_run(tmp_path) == {"losses": {1: 6.0, 2: 5.0, 3: 4.0}, "step_ms": 120.0,
                                                  "pre_quant_val_bpb": 3.5, "val_bpb": 3.51}


def run(tail: float, bpb: float) -> dict:
    return {"losses": {s: tail for s in range(1, 21)}, "pre_quant_val_bpb": bpb}


def test_the_verdict_is_the_seed_mean_against_the_reference_spread(parity):
    reference = [run(4.00, 2.00), run(4.10, 2.02)]
    inside = parity.verdict([run(4.02, 2.01), run(4.06, 2.02)], reference)
    assert inside["within_spread"] and inside["tail_train_loss"]["reference_spread"] == pytest.approx(0.10)
    outside = parity.verdict([run(4.20, 2.01), run(4.30, 2.01)], reference)
    assert not outside["within_spread"] and outside["pre_quant_val_bpb"]["within_spread"]
    assert outside["tail_train_loss"]["mean_difference"] == pytest.approx(0.20)


def test_resume_keeps_the_earlier_runs_of_the_same_step_count(parity, tmp_path):
    out = tmp_path / "parity.json"
    assert parity.earlier_runs(out, 200) == {"pgolf": {}, "reference": {}}
    out.write_text(json.dumps({"steps": 200, "pgolf": {"1": {"losses": {"1": 6.9}, "pre_quant_val_bpb": 3.0}}}))
    assert parity.earlier_runs(out, 200) == {"pgolf": {"1": {"losses": {1: 6.9}, "pre_quant_val_bpb": 3.0}}, "reference": {}}
    with pytest.raises(SystemExit, match="holds 200-step runs, not 100"):
        parity.earlier_runs(out, 100)
