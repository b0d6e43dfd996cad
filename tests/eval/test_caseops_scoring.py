"""CaseOps val sets are scored on the original text's bytes, from the byte sidecar, on every path.

The data is the record's own (R44's prepare_caseops_data.py on real docs); the standard score is
compared with R44's own ``eval_val`` over its own sidecar loader; sliding windows, every TTT kind and
a training run's round trip charge exactly the sidecar bytes of the targets they score; a CaseOps
val set without its sidecar is refused in one line.
"""

from __future__ import annotations

import math
import shutil
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.data.shards import read_shard
from pgolf.errors import PgolfError
from pgolf.eval.evaluate import evaluate
from pgolf.eval.phases import run_phase
from pgolf.eval.sliding import evaluate_sliding
from pgolf.eval.valdata import load_validation
from pgolf.tokenizer.luts import build_byte_table
from tests.conftest import CASEOPS_VAL_PREFIX_DOCS
from tests.eval.conftest import make_ttt_settings

VOCAB = 8192
SEQ = 256
WINDOWS = 32  # scored windows of the comparison with the record's eval_val


class PrevTokenModel(torch.nn.Module):
    """Logits that depend on the previous token only (elementwise, so exact whatever the batch shape)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(VOCAB, generator=g)
        self.w = torch.randn(VOCAB, generator=g) * 2

    def forward_logits(self, x, cu_seqlens=None, max_seqlen=None):  # R44's interface
        return self.a[x][..., None] * self.w

    def forward(self, x, y, reduction="mean"):  # pgolf's
        logits = self.forward_logits(x)
        return F.cross_entropy(logits.reshape(-1, VOCAB).float(), y.reshape(-1), reduction=reduction).view_as(y)


@pytest.fixture(scope="module")
def record_val(record_caseops_data, r44_tokenizer):
    folder, _ = record_caseops_data
    return load_validation(r44_tokenizer, folder, VOCAB, SEQ)


@pytest.fixture(scope="module")
def sidecar(record_caseops_data) -> np.ndarray:
    folder, _ = record_caseops_data
    return np.asarray(read_shard(folder / "fineweb_val_bytes_000000.bin")).astype(np.int64)


def test_standard_score_equals_the_records_eval_val(record_caseops_data, r44_script, r44_tokenizer):
    folder, _ = record_caseops_data
    r44 = r44_script
    tokens = r44.load_validation_tokens(str(folder / "fineweb_val_*.bin"), SEQ)
    val_bytes = r44.load_validation_byte_sidecar(str(folder / "fineweb_val_bytes_*.bin"), SEQ, tokens.numel())
    n = WINDOWS * SEQ + 1
    val_data = types.SimpleNamespace(val_tokens=tokens[:n], val_bytes=val_bytes[:n], caseops_enabled=True)
    h = types.SimpleNamespace(eval_seq_len=SEQ, val_batch_tokens=4 * SEQ, world_size=1, grad_accum_steps=1, rank=0)
    model = PrevTokenModel()
    with pytest.warns(UserWarning, match="CUDA is not available"):  # its autocast("cuda") is off on CPU
        their_loss, their_bpb = r44.eval_val(h, torch.device("cpu"), val_data, model)

    ours = load_validation(r44_tokenizer, folder, VOCAB, SEQ, max_tokens=WINDOWS * SEQ)
    score = evaluate(model, ours.tokens, SEQ, ours.table, batch_tokens=3 * SEQ).score
    assert score.tokens == WINDOWS * SEQ
    assert score.bytes == int(val_bytes[1:n].sum())
    assert score.val_loss == pytest.approx(their_loss, rel=1e-12)
    assert score.val_bpb == pytest.approx(their_bpb, rel=1e-12)


def test_the_byte_rule_would_charge_the_case_operators(record_val, sidecar):
    """Issue 16's measurement: on 300 val-prefix documents the tokenizer's byte rule charges 900,004
    bytes for text of 823,636 UTF-8 bytes (val_bpb x0.915); the sidecar charges the 823,636."""
    tokens = record_val.tokens
    bos = np.flatnonzero(tokens == 1)
    end = int(bos[CASEOPS_VAL_PREFIX_DOCS])  # the BOS after the 300th document
    lut = build_byte_table(record_val.sp, VOCAB).to_torch()
    prev, tgt = torch.from_numpy(tokens[: end - 1].astype(np.int64)), torch.from_numpy(tokens[1:end].astype(np.int64))
    from pgolf.tokenizer.luts import count_target_bytes

    assert int(count_target_bytes(prev, tgt, lut).sum()) == 900_004
    assert int(sidecar[1:end].sum()) == 823_636
    assert int(count_target_bytes(prev, tgt, record_val.table, torch.arange(1, end)).sum()) == 823_636


@pytest.fixture(scope="module")
def tiny_caseops_gpt():
    from pgolf.model.gpt import build_model
    from pgolf.presets import build_config

    torch.manual_seed(0)
    return build_model(build_config("tiny_cpu", [f"VOCAB_SIZE={VOCAB}"], environ={}).model, "cpu").eval()


STREAM = 512


@pytest.mark.parametrize("phase", ["sliding", "sliding_doc", "sgd", "lora", "phased"])
def test_sliding_and_ttt_charge_the_sidecar_bytes_of_every_target(record_val, sidecar, tiny_caseops_gpt, phase):
    tokens = record_val.tokens[: STREAM + 1]
    if phase.startswith("sliding"):
        score = evaluate_sliding(tiny_caseops_gpt, tokens, 128, 64, record_val.table,
                                 bos_id=1 if phase == "sliding_doc" else None).score
    else:
        settings = make_ttt_settings(f"PGOLF_TTT={phase}", "EVAL_STRIDE=64")
        score = run_phase("ttt", tiny_caseops_gpt, tokens, 128, record_val.table, settings, 1,
                          torch.device("cpu")).result.score
    assert (score.tokens, score.bytes) == (STREAM, int(sidecar[1 : STREAM + 1].sum()))
    assert score.val_bpb == pytest.approx(score.val_loss / math.log(2) * STREAM / score.bytes, rel=1e-12)


def test_a_training_run_scores_its_round_trip_on_the_sidecar(pgolf_caseops_data, r44_tokenizer, tmp_path, sidecar):
    from pgolf.presets import build_config
    from pgolf.train.loop import train

    cfg = build_config("tiny_cpu", [
        f"DATA_PATH={pgolf_caseops_data}", f"TOKENIZER_PATH={r44_tokenizer}", f"VOCAB_SIZE={VOCAB}", "ITERATIONS=1",
        "VAL_MAX_TOKENS=1024", "TRAIN_BATCH_TOKENS=256", "EVAL_STRIDE=64", "TRAIN_LOG_EVERY=0", "RUN_ID=caseops",
    ], environ={})
    results = train(cfg, runs_dir=tmp_path, echo=False)
    seq = cfg.eval_seq_len
    standard = results["phases"]["standard"]
    usable = 1024 // seq * seq
    assert (standard["tokens"], standard["bytes"]) == (usable, int(sidecar[1 : usable + 1].sum()))
    assert results["phases"]["sliding"]["bytes"] == int(sidecar[1 : usable + 1].sum())


def test_a_caseops_val_set_without_its_sidecar_is_refused(record_caseops_data, r44_tokenizer, tmp_path):
    folder, _ = record_caseops_data
    shutil.copy(folder / "fineweb_val_000000.bin", tmp_path / "fineweb_val_000000.bin")
    with pytest.raises(PgolfError, match="needs its byte sidecar fineweb_val_bytes_") as err:
        load_validation(r44_tokenizer, tmp_path, VOCAB, SEQ)
    assert "\n" not in str(err.value) and str(tmp_path / "fineweb_val_000000.bin") in str(err.value)


def test_a_manifest_recording_caseops_needs_the_sidecar_whatever_the_tokenizer(sp1024_model, val_prefix_shard, tmp_path):
    """The manifest says the text was case-transformed: refused without a sidecar, even with a tokenizer
    that has no case operators (the one the manifest records)."""
    import json

    from pgolf.data.shards import file_sha256, write_shard

    write_shard(tmp_path / "fineweb_val_000000.bin", np.asarray(read_shard(val_prefix_shard))[:4097])
    tokenizer = {"path": str(sp1024_model), "sha256": file_sha256(sp1024_model)}
    (tmp_path / "manifest.json").write_text(json.dumps({"tokenizer": tokenizer, "text_transform": "caseops_v1"}))
    with pytest.raises(PgolfError, match="a caseops_v1 val set needs its byte sidecar"):
        load_validation(sp1024_model, tmp_path, 1024, SEQ)


def test_a_sidecar_that_does_not_fit_its_shard_is_refused(record_caseops_data, r44_tokenizer, tmp_path):
    from pgolf.data.shards import write_shard

    folder, _ = record_caseops_data
    shutil.copy(folder / "fineweb_val_000000.bin", tmp_path / "fineweb_val_000000.bin")
    counts = np.asarray(read_shard(folder / "fineweb_val_bytes_000000.bin"))
    write_shard(tmp_path / "fineweb_val_bytes_000000.bin", counts[:-1])
    with pytest.raises(PgolfError, match="byte counts for the"):
        load_validation(r44_tokenizer, tmp_path, VOCAB, SEQ)
    charged_bos = counts.copy()
    charged_bos[0] = 5
    write_shard(tmp_path / "fineweb_val_bytes_000000.bin", charged_bos)
    with pytest.raises(PgolfError, match="charges 5 bytes to the BOS at stream position 0"):
        load_validation(r44_tokenizer, tmp_path, VOCAB, SEQ)
