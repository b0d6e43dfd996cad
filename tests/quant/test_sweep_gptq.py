"""``pgolf quant sweep`` with ``gptq:`` / ``lqer:`` entries, calibrated on train shards or on the
model's own samples."""

from __future__ import annotations

import json

import pytest
import safetensors.torch

from pgolf.errors import PgolfError
from pgolf.export.container import read_artifact
from pgolf.presets import tiny_cpu
from pgolf.quant.sweep import SweepSpec, parse_sweep_spec


def test_sweep_specs_parse_method_prefixes():
    assert parse_sweep_spec("int6") == SweepSpec("int6")
    assert parse_sweep_spec("gptq:int6:sd12.85") == SweepSpec("int6:sd12.85", gptq=True)
    assert parse_sweep_spec("lqer:gptq:embed=int8:sd20,*=int6") == SweepSpec("embed=int8:sd20,*=int6", True, True)
    with pytest.raises(PgolfError, match="int9"):
        parse_sweep_spec("gptq:int9")


@pytest.mark.parametrize("source", ["self", "train", "shuffled"])
def test_sweep_runs_gptq_and_lqer_entries(source, trained_tiny, shared_data, tmp_path, run_pgolf, monkeypatch):
    """``shuffled``: train calibration on R44's windows (PGOLF_GPTQ_CALIBRATION_LOADER), not the stream."""
    import pgolf.data.loader
    from pgolf.data.rank_loader import RankShuffledLoader

    model, _ = trained_tiny
    ckpt = tmp_path / "checkpoint.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(ckpt), metadata={"pgolf_config": tiny_cpu().to_json()})
    data = shared_data / "datasets"
    if source != "train":  # self-generated calibration must not open the training data, shuffled not the stream
        monkeypatch.setattr(pgolf.data.loader, "build_loader", lambda *a, **k: pytest.fail("read the train stream"))
    windows = []
    batch = RankShuffledLoader.next_batch
    monkeypatch.setattr(RankShuffledLoader, "next_batch", lambda self, *a: windows.append(a) or batch(self, *a))
    specs = ["int4,small=0", "gptq:int4,small=0", "gptq:lqer:int4,small=0"]
    shuffled = ["--set", "PGOLF_GPTQ_CALIBRATION_LOADER=shuffled"] if source == "shuffled" else []
    source = "train" if source == "shuffled" else source
    code, out, err = run_pgolf([
        "quant", "sweep", str(ckpt), "--schemes", *specs, "--calibration", source, *shuffled,
        "--train", str(data / "fineweb10B_sp1024_trainsample" / "fineweb_train_*.bin"),
        "--set", "GPTQ_CALIBRATION_BATCHES=1", "--set", "GPTQ_CALIB_SAMPLES=2", "--set", "GPTQ_BATCH_SIZE=2",
        "--set", "TRAIN_SEQ_LEN=32", "--set", "TRAIN_BATCH_TOKENS=256",
        "--val", str(data / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"),
        "--tokenizer", str(shared_data / "tokenizers" / "fineweb_1024_bpe.model"), "--max-tokens", "1024",
        "--out", str(tmp_path),
    ])
    assert code == 0, err
    assert f"from {source} calibration" in out
    assert len(windows) == (1 if shuffled else 0)
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [r["policy"] for r in rows] == specs
    rtn, gptq, lqer = (read_artifact(tmp_path / f"sweep_{i}_zlib.pgolf")[0] for i in range(3))
    name = "blocks.0.mlp.fc.weight"
    assert not rtn.entry(name).values.equal(gptq.entry(name).values)
    assert gptq.entry(name).values.equal(lqer.entry(name).values)
    assert sum(e.lqer is not None for e in lqer) == 3 and all(e.lqer is None for e in gptq)
