"""PGOLF_GPTQ_CALIBRATION_LOADER=shuffled is R44's GPTQ calibration: its loader's batches, its forward.

R44's own ``ShuffledSequenceLoader`` (imported from the oracles) and pgolf's, one instance per rank
as each process builds one: batch after batch the same inputs and targets, for 1 and 2 ranks, on
small synthetic shards (one with no window, one with exactly one, several new passes over the
shards) and on the real sp1024 train sample (through a new pass). Then the Hessians: pgolf's
calibration on a small R44 model (its weights loaded into pgolf's) equals R44's own
``collect_hessians`` on its own loader, plain causal attention included (the windows hold BOS).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from oracles import RECORDS, record_and_pgolf_via_checkpoint

from pgolf.data.rank_loader import RankShuffledLoader
from pgolf.data.shards import write_shard
from pgolf.errors import PgolfError
from pgolf.presets import build_config
from pgolf.quant.calibration import calibration_hessians
from pgolf.train.loop import collect_gptq_hessians

PRESET = "sp8192_lqer_sparsegate_bossmear"
BOS = 1
SEQ_LEN = 16


@pytest.fixture(scope="module")
def r44(oracle):
    return oracle(RECORDS[PRESET].script)


def synthetic_shards(folder, sizes=(300, 12, 17, 180, 95), vocab: int = 60) -> str:
    """Shards of short documents: 12 tokens hold no window of 17, 17 exactly one (no phase drawn)."""
    g = np.random.default_rng(4)
    for i, n in enumerate(sizes):
        tokens = g.integers(2, vocab, n)
        tokens[g.random(n) < 0.08] = BOS
        write_shard(folder / f"fineweb_train_{i:06d}.bin", tokens.astype(np.uint16))
    return str(folder / "fineweb_train_*.bin")


def record_loader(r44, pattern: str, rank: int, world_size: int, seq_len: int):
    h = SimpleNamespace(rank=rank, world_size=world_size, train_seq_len=seq_len, train_files=pattern)
    return r44.ShuffledSequenceLoader(h, torch.device("cpu"))


def compare(r44, pattern: str, world_size: int, global_tokens: int, accum: int, calls: int, seq_len: int,
            vocab: int) -> list[int]:
    """Both loaders for every rank, ``calls`` batches each; returns each rank's windows drawn per pass."""
    windows_per_pass = []
    for rank in range(world_size):
        theirs = record_loader(r44, pattern, rank, world_size, seq_len)
        ours = RankShuffledLoader(pattern, seq_len, rank, world_size, "cpu", vocab)
        windows_per_pass.append(sum(len(s) for s in ours.starts))
        for call in range(calls):
            x, y = theirs.next_batch(global_tokens, accum)
            gx, gy = ours.next_batch(global_tokens, seq_len, accum)
            assert torch.equal(gx, x) and torch.equal(gy, y), f"rank {rank} of {world_size}, batch {call}"
    return windows_per_pass


@pytest.mark.parametrize("world_size", [1, 2])
def test_shuffled_calibration_batches_are_r44s_on_synthetic_shards(r44, tmp_path, world_size):
    pattern = synthetic_shards(tmp_path)
    calls, rows = 30, 192 // (world_size * 2) // SEQ_LEN
    per_pass = compare(r44, pattern, world_size, global_tokens=192, accum=2, calls=calls, seq_len=SEQ_LEN, vocab=60)
    assert all(calls * rows > 2 * n for n in per_pass)  # every rank starts at least two new passes


@pytest.mark.parametrize("world_size", [1, 2])
def test_shuffled_calibration_batches_are_r44s_on_real_shards(r44, train_sample_dir, world_size):
    pattern = str(train_sample_dir / "fineweb_train_*.bin")
    calls = 12 if world_size == 2 else 50  # 48 windows per batch; rank 0 of 2 holds ~500, 1 rank ~2,300
    per_pass = compare(r44, pattern, world_size, global_tokens=48 * 2048 * world_size, accum=1, calls=calls,
                       seq_len=2048, vocab=1024)
    assert calls * 48 > per_pass[0]  # rank 0 passes into a new pass over its shards


def test_a_rank_without_shards_or_windows_is_refused(tmp_path):
    pattern = synthetic_shards(tmp_path, sizes=(12, 300))
    with pytest.raises(PgolfError, match="rank 2 gets none"):
        RankShuffledLoader(pattern, SEQ_LEN, 2, 3)
    with pytest.raises(PgolfError, match="no window of 17 tokens"):
        RankShuffledLoader(pattern, SEQ_LEN, 0, 2)


def test_only_r44_calibrates_on_shuffled_windows():
    assert build_config(PRESET, environ={}).quant.gptq_calibration_loader == "shuffled"
    assert build_config("baseline", environ={}).quant.gptq_calibration_loader == "stream"
    with pytest.raises(PgolfError, match="PGOLF_GPTQ_CALIBRATION_LOADER"):
        build_config("baseline", ["PGOLF_GPTQ_CALIBRATION_LOADER=random"], environ={})


# -- the Hessians: pgolf's calibration against R44's collect_hessians ---------------------------

WINDOW = 32
SHALLOW = ["NUM_LAYERS=3", "LOOP_START=1", "LOOP_END=1", "PARALLEL_START_LAYER=2", "XSA_LAST_N=3",
           f"TRAIN_SEQ_LEN={WINDOW}", f"PGOLF_MAX_DOC_LEN={WINDOW}", "GPTQ_CALIBRATION_BATCHES=3"]


@pytest.fixture(scope="module")
def models(r44, tmp_path_factory):
    cfg = build_config(PRESET, SHALLOW, environ={})
    theirs, ours = record_and_pgolf_via_checkpoint(r44, PRESET, cfg, 21, tmp_path_factory.mktemp("r44_calib"))
    return cfg, theirs, ours


class _TrainingStream:
    def next_batch(self, *args):
        raise AssertionError("shuffled calibration read the training loader's stream")


def test_shuffled_calibration_hessians_are_r44s(r44, models, tmp_path, monkeypatch):
    """The training run's calibration step (its session stood in for: CPU, one rank) on R44's windows."""
    cfg, theirs, ours = models
    assert cfg.model.bos_id == BOS
    monkeypatch.setattr(r44, "BOS_ID", BOS)
    pattern = synthetic_shards(tmp_path, sizes=(900, 400, 1300), vocab=cfg.model.vocab_size)
    q, batch_tokens, accum = cfg.quant, 4 * WINDOW, 1
    h = SimpleNamespace(rank=0, world_size=1, train_seq_len=WINDOW, train_files=pattern, train_batch_tokens=batch_tokens,
                        grad_accum_steps=accum)
    with torch.no_grad():
        expected = r44.collect_hessians(theirs, r44.ShuffledSequenceLoader(h, torch.device("cpu")), h, torch.device("cpu"),
                                        n_calibration_batches=q.gptq_calibration_batches)
    cfg.data.train_files, cfg.train.train_batch_tokens, cfg.train.max_wallclock_seconds = pattern, batch_tokens, 0
    session = SimpleNamespace(cfg=cfg, rt=SimpleNamespace(device=torch.device("cpu"), rank=0, world_size=1), model=ours,
                              loader=_TrainingStream(), grad_accum_steps=accum, watch=None, run=SimpleNamespace(log=print))
    got, _, _ = collect_gptq_hessians(session, 0.0)
    assert not hasattr(ours, "plain_causal")  # cut again after calibration
    assert set(expected) <= set(got) and len(expected) == 3 * 6 + 1  # R44 leaves out only the attention gates
    for name, want in expected.items():
        have = got[name] / q.gptq_calibration_batches  # R44 averages over its batches, pgolf sums
        assert torch.allclose(have, want, rtol=1e-4, atol=1e-4 * want.abs().max().item()), name


def test_shuffled_calibration_keeps_each_ranks_own_hessians(models, tmp_path, monkeypatch):
    """R44 never all-reduces its Hessians (rank 0's quantize the artifact it writes); pgolf's stream
    calibration sums them over ranks. A stand-in process group records the reductions."""
    import dataclasses

    import pgolf.quant.calibration as calibration

    cfg, _, ours = models
    reduced = []
    monkeypatch.setattr(calibration.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(calibration.dist, "all_reduce", lambda t, *a, **k: reduced.append(t.shape))
    pattern = synthetic_shards(tmp_path, sizes=(400,), vocab=cfg.model.vocab_size)
    for choice in ("shuffled", "stream"):
        q = dataclasses.replace(cfg.quant, gptq_calibration_loader=choice, gptq_calibration_batches=1)
        reduced.clear()
        hessians = calibration_hessians(ours, q, WINDOW, cfg.model.vocab_size, torch.device("cpu"), 0,
                                        RankShuffledLoader(pattern, WINDOW, 0, 1), 2 * WINDOW, 1)
        assert len(reduced) == (0 if choice == "shuffled" else len(hessians)) and len(hessians) == 3 * 6 + 1, choice
