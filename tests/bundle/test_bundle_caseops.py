"""A bundle scores a CaseOps val set on its byte sidecar, as the package does (pgolf.eval.valdata is inlined)."""

from __future__ import annotations

import numpy as np
import pytest

from pgolf.config import override_env
from pgolf.data.shards import read_shard
from tests.bundle.test_bundle_runs import run_bundle


@pytest.mark.slow
def test_bundle_charges_the_sidecar(stock_bundle, pgolf_caseops_data, r44_tokenizer, tmp_path):
    script = stock_bundle("tiny_cpu")[0] / "train_gpt.py"
    overrides = [f"DATA_PATH={pgolf_caseops_data}", f"TOKENIZER_PATH={r44_tokenizer}", "VOCAB_SIZE=8192", "ITERATIONS=1",
                 "VAL_MAX_TOKENS=1024", "TRAIN_BATCH_TOKENS=256", "TRAIN_LOG_EVERY=0"]
    results = run_bundle(script, tmp_path / "runs", "caseops", **override_env(overrides))
    sidecar = np.asarray(read_shard(pgolf_caseops_data / "fineweb_val_bytes_000000.bin")).astype(np.int64)
    standard = results["phases"]["standard"]
    assert (standard["tokens"], standard["bytes"]) == (1024, int(sidecar[1:1025].sum()))

