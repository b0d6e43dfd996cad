"""``pgolf eval`` and ``pgolf convert`` on a record's own ``final_model.pt`` (R22: parameter banks,
its own key names, a ParameterList, the SmearGate turned round), built by the record's own script."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from oracles import RECORDS, no_orthogonal_init, randomise_

from pgolf.presets import build_config

R22 = "leakyrelu_ttt_parallel_muon"
WINDOW = 1024  # one window (R22's own 2048 is tests/model/test_record_parity.py's)


@pytest.fixture(scope="module")
def r22_checkpoint(oracle, tmp_path_factory):
    """(record module, record model, its final_model.pt as its main() saves it)."""
    record = RECORDS[R22]
    mod = oracle(record.script)
    with no_orthogonal_init():  # randomised next
        model = record.build(mod, build_config(R22, environ={})).float().eval()
    randomise_(model, seed=5)
    path = tmp_path_factory.mktemp("r22") / "final_model.pt"
    torch.save(model.state_dict(), path)
    return mod, model, path


def test_pgolf_eval_scores_the_records_final_model_pt_with_the_records_loss(
        r22_checkpoint, run_pgolf, sp1024_model, val_prefix_shard):
    from pgolf.data.shards import load_tokens

    _, model, path = r22_checkpoint
    with no_orthogonal_init():  # the checkpoint replaces every weight of the model pgolf builds
        code, out, err = run_pgolf(["eval", "--checkpoint", str(path), "--preset", R22, "--tokenizer", str(sp1024_model),
                                    "--val", str(val_prefix_shard), "--max-tokens", str(WINDOW), "--seq-len", str(WINDOW),
                                    "--device", "cpu", "--set", "EVAL_STRIDE=0", "--set", "PGOLF_TTT=", "--json"])
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    tokens = torch.from_numpy(load_tokens(val_prefix_shard, "val", 1024)[: WINDOW + 1].astype(np.int64))
    with torch.no_grad():
        record_loss = model(tokens[None, :-1], tokens[None, 1:]).item()  # the record's own loss function
    assert result["tokens"] == WINDOW
    assert abs(result["val_loss"] - record_loss) < 1e-5


def test_pgolf_convert_round_trips_the_records_file_bit_for_bit(r22_checkpoint, run_pgolf, tmp_path):
    _, model, path = r22_checkpoint
    ours = tmp_path / "checkpoint.safetensors"
    code, out, err = run_pgolf(["convert", str(path), "--preset", R22, "--to", "pgolf", "--out", str(ours)])
    assert code == 0, err
    back = tmp_path / "final_model.pt"
    code, out, err = run_pgolf(["convert", str(ours), "--to", "record", "--out", str(back)])  # the config is inside
    assert code == 0, err
    assert "R22 (PR #549)'s layout" in out
    original, again = torch.load(path, weights_only=True), torch.load(back, weights_only=True)
    assert sorted(again) == sorted(original)
    assert all(torch.equal(again[k], original[k]) for k in original)
    model.load_state_dict(again, strict=True)


def test_convert_refuses_a_preset_without_a_record(r22_checkpoint, run_pgolf, tmp_path):
    _, _, path = r22_checkpoint
    out = tmp_path / "x.pt"
    code, _, err = run_pgolf(["convert", str(path), "--preset", "tiny_cpu", "--to", "record", "--out", str(out)])
    assert code == 2 and "reproduces no record" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_records_file_under_another_record_preset_is_named_and_nothing_is_written(r22_checkpoint, run_pgolf, tmp_path):
    _, _, path = r22_checkpoint
    out = tmp_path / "x.safetensors"
    code, _, err = run_pgolf(["convert", str(path), "--preset", "sp8192_lqer_sparsegate_bossmear", "--to", "pgolf",
                              "--out", str(out)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "nor R44 (PR #1855)'s" in err
    assert list(tmp_path.iterdir()) == []


def test_a_toml_preset_reads_the_layout_of_the_record_it_builds_on(r22_checkpoint, run_pgolf, tmp_path):
    _, model, path = r22_checkpoint
    toml = tmp_path / "mine.toml"
    toml.write_text(f'base = "{R22}"\n[eval]\neval_stride = 0\n', encoding="utf-8")
    ours = tmp_path / "checkpoint.safetensors"
    code, _, err = run_pgolf(["convert", str(path), "--preset", str(toml), "--to", "pgolf", "--out", str(ours)])
    assert code == 0, err
    from safetensors.torch import load_file

    assert torch.equal(load_file(ours)["blocks.3.attn.c_k.weight"], model.kv_bank.detach()[3])
