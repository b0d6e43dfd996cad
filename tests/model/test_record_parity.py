"""Every record preset computes its record's function, on the record's own checkpoint.

For each of the seven presets: the record's own ``GPT`` (imported from its script in the oracles,
FlashAttention 3 replaced by SDPA), built with the preset's hyperparameters, gets random
non-trivial fp32 weights (zero-initialised projections too) and is saved as its ``main()`` saves
``final_model.pt``. pgolf reads that file as ``pgolf eval --checkpoint`` does (banks, key names:
pgolf.export.record_layout) and must give the record's logits on real tokens at the record's
sequence length. The other way round, random pgolf weights written in the record's layout must
load into the record's model with ``strict=True`` and give pgolf's logits.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from oracles import RECORDS, no_orthogonal_init, randomise_, record_logits

from pgolf.export.loading import load_weights
from pgolf.export.record_layout import in_pgolf_layout, record_layout
from pgolf.model.gpt import build_model
from pgolf.presets import build_config

TOLERANCE = 1e-4  # max |logit difference|, fp32; logits are softcapped at 30


def parity_tokens(request, cfg, seq_len: int) -> torch.Tensor:
    """One sequence of real val tokens (sp1024), or random ids with planted BOS tokens (sp8192:
    no such shards offline)."""
    if cfg.model.vocab_size == 1024:
        from pgolf.data.shards import load_tokens

        shard = request.getfixturevalue("val_prefix_shard")  # skips where the real data is absent
        return torch.from_numpy(load_tokens(shard, "val", 1024)[:seq_len].astype(np.int64))[None]
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(2, cfg.model.vocab_size, (1, seq_len), generator=g)
    ids[0, [0, seq_len // 5, seq_len // 5 + 1, seq_len // 2]] = cfg.model.bos_id  # documents, one empty
    return ids


@pytest.fixture(scope="module", params=list(RECORDS))
def pair(request, oracle):
    """(preset, config, Record, record module, record's GPT, pgolf's GPT), built once per preset."""
    preset = request.param
    record = RECORDS[preset]
    mod = oracle(record.script)
    cfg = build_config(preset, environ={})
    with no_orthogonal_init():  # every weight is overwritten before use
        ours = build_model(cfg.model).eval()
        theirs = record.build(mod, cfg).float().eval()
    return preset, cfg, record, mod, theirs, ours


def test_pgolf_reads_the_records_checkpoint_and_computes_its_logits(pair, tmp_path, request):
    preset, cfg, record, mod, theirs, ours = pair
    seq_len = cfg.train.train_seq_len
    randomise_(theirs, seed=1)
    torch.save(theirs.state_dict(), tmp_path / "final_model.pt")  # as the record's main() saves it
    state, _ = load_weights(tmp_path / "final_model.pt")
    ours.load_state_dict(in_pgolf_layout(state, ours.state_dict(), preset), strict=True)
    ids = parity_tokens(request, cfg, seq_len)
    with torch.no_grad():
        expected = record_logits(mod, record, theirs, ids, seq_len)
        got = ours.logits(ids)
    assert expected.shape == got.shape == (1, seq_len, cfg.model.vocab_size)
    assert expected.std() > 0.5, "the random weights must give non-trivial logits"
    delta = (got - expected).abs().max().item()
    print(f"{preset}: max |delta logit| {delta:.3g} over {seq_len} tokens")
    assert delta < TOLERANCE


def test_pgolf_weights_in_the_records_layout_load_strictly_into_the_record(pair):
    preset, cfg, record, mod, theirs, ours = pair
    randomise_(ours, seed=2)
    saved = io.BytesIO()
    torch.save(record_layout(preset).to_record(ours.state_dict()), saved)
    theirs.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True), strict=True)
    ids = parity_tokens_short(cfg)
    with torch.no_grad():
        expected = ours.logits(ids)
        got = record_logits(mod, record, theirs, ids, ids.size(1))
    assert expected.std() > 0.5
    assert (got - expected).abs().max().item() < TOLERANCE


def parity_tokens_short(cfg, seq_len: int = 256) -> torch.Tensor:
    """A short random sequence with a BOS inside: the round trip checks names and shapes, not length."""
    ids = torch.randint(2, cfg.model.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(3))
    ids[0, [0, seq_len // 3]] = cfg.model.bos_id
    return ids
