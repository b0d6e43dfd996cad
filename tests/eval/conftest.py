"""A tiny model trained once per session on the real train sample, shared by the evaluation tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

TRAIN_STEPS = 150
# Doubled LRs and a small batch: the fewest CPU steps that learn to use context (stride-64 sliding
# beats standard evaluation by ~0.002 bpb on 8192 val tokens; at 60 default steps it does not).
TRAIN_SETTINGS = ("WARMDOWN_ITERS=30", "MATRIX_LR=0.08", "TIED_EMBED_LR=0.1", "SCALAR_LR=0.08", "TRAIN_BATCH_TOKENS=1024")
EVAL_TOKENS = 8192


@dataclass
class TrainedTiny:
    model: torch.nn.Module
    cfg: object
    val_tokens: np.ndarray  # the first EVAL_TOKENS + 1 val tokens
    table: object
    bos_id: int


@pytest.fixture(scope="session")
def trained_tiny(shared_data: Path, tmp_path_factory) -> TrainedTiny:
    from safetensors.torch import load_file

    from pgolf.data.shards import load_tokens
    from pgolf.model.gpt import build_model
    from pgolf.presets import build_config
    from pgolf.tokenizer.luts import build_byte_table
    from pgolf.tokenizer.spm import load_tokenizer
    from pgolf.train.loop import CHECKPOINT_NAME, train

    data = shared_data / "datasets"
    cfg = build_config("tiny_cpu", [
        f"DATA_PATH={data / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={data / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
        f"ITERATIONS={TRAIN_STEPS}", "VAL_MAX_TOKENS=2048", "TRAIN_LOG_EVERY=0", "RUN_ID=evaltiny", *TRAIN_SETTINGS,
    ], environ={})
    runs = tmp_path_factory.mktemp("evalruns")
    train(cfg, runs_dir=runs, echo=False)
    model = build_model(cfg.model, "cpu")
    model.load_state_dict(load_file(str(runs / "evaltiny" / CHECKPOINT_NAME)))
    model.eval()
    sp = load_tokenizer(cfg.data.tokenizer_path)
    tokens = load_tokens(cfg.data.val_glob(), "val", cfg.model.vocab_size)[: EVAL_TOKENS + 1]
    table = build_byte_table(sp, cfg.model.vocab_size).to_torch()
    return TrainedTiny(model, cfg, np.ascontiguousarray(tokens), table, int(sp.bos_id()))


def make_ttt_settings(*extra: str):
    """Small TTT settings for the 1k-token streams of the tests."""
    from pgolf.presets import build_config

    return build_config("tiny_cpu", [
        "TTT_CHUNK_TOKENS=512", "TTT_EPOCHS=2", "TTT_BATCH_SEQS=8", "TTT_LR=0.01", "TTT_FREEZE_BLOCKS=1",
        "TTT_CHUNK_SIZE=64", "TTT_EVAL_SEQ_LEN=128", "TTT_BATCH_SIZE=16", "TTT_LORA_LR=0.001", "TTT_LORA_RANK=4",
        "PHASED_TTT_PREFIX_DOCS=4", "PHASED_TTT_NUM_PHASES=2", "GLOBAL_TTT_CHUNK_TOKENS=512",
        "GLOBAL_TTT_BATCH_SEQS=8", "GLOBAL_TTT_LR=0.01", *extra,
    ], environ={}).eval


@pytest.fixture(scope="session")
def ttt_settings():
    return make_ttt_settings
