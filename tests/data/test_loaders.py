"""Training loaders: the sequential stream and the record window loaders are deterministic for a
seed, resumable from state_dict(), and give the same step tokens on 1 and N ranks; the coprime
loader mixes shards per batch on R25's schedule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pgolf.data.loader import build_loader
from pgolf.data.shard_mix import ShardMixStream, mix_schedule, shards_per_batch
from pgolf.data.shards import write_shard
from pgolf.data.window_loader import ShardPass, WindowStream, coprime_stride
from pgolf.errors import PgolfError

SEQ = 16
SIZES = (1000, 1537, 700)  # windows per pass: about 62, 96, 43


@pytest.fixture
def shards(tmp_path):
    """Shard i holds i*10000 + position, so every token names its shard and offset."""
    for i, n in enumerate(SIZES):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", (i * 10_000 + np.arange(n)).astype(np.uint16))
    return str(tmp_path / "fineweb_train_*.bin")


def _loader(kind, pattern, seed=7, rank=0, world=1):
    return build_loader(kind, pattern, SEQ, seed, rank, world, "cpu", None)


@pytest.mark.parametrize("order", ["coprime", "shuffled"])
def test_a_pass_visits_every_block_once_at_the_pass_phase(order):
    for epoch in range(5):
        p = ShardPass(order, 1537, SEQ, seed=3, shard=1, epoch=epoch)
        assert p.count == (1537 - 1 - p.phase) // SEQ and 0 <= p.phase < SEQ
        assert sorted(p.block(k) for k in range(p.count)) == list(range(p.count))
        starts = [p.window_start(k) for k in range(p.count)]
        assert all((s - p.phase) % SEQ == 0 and s + SEQ + 1 <= 1537 for s in starts)
        if order == "coprime":
            assert math.gcd(p.stride, p.count) == 1
            assert all(p.block(k + 1) == (p.block(k) + p.stride) % p.count for k in range(p.count - 1))


def test_coprime_stride_is_coprime():
    rng = np.random.Generator(np.random.PCG64(0))
    for n in (3, 12, 97, 360, 1024):
        assert all(math.gcd(coprime_stride(n, rng), n) == 1 for _ in range(20))


@pytest.mark.parametrize("order", ["coprime", "shuffled"])
def test_stream_drains_every_shard_before_a_new_pass(order):
    stream = WindowStream(order, list(SIZES), SEQ, seed=1)
    counts = [stream._pass(i).count for i in range(len(SIZES))]
    first = stream.take(sum(counts))
    for shard, count in enumerate(counts):
        assert len({start for s, start in first if s == shard}) == count
    assert stream.epochs == [0, 0, 0]
    stream.take(1)
    assert stream.epochs == [1, 1, 1]


def _batches(loader, steps, global_tokens=4 * SEQ * 4, accum=4):
    out = []
    for _ in range(steps):
        for _ in range(accum):
            x, y = loader.next_batch(global_tokens, SEQ, accum)
            out.append((x.clone(), y.clone()))
    return out


@pytest.mark.parametrize("kind", ["sequential", "coprime", "shuffled"])
def test_same_seed_same_batches_and_targets_are_shifted(shards, kind):
    a, b = _batches(_loader(kind, shards), 3), _batches(_loader(kind, shards), 3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])
        assert torch.all(ya - xa == 1)  # consecutive positions of one shard: windows never straddle shards
    if kind != "sequential":
        c = _batches(_loader(kind, shards, seed=8), 3)
        assert any(not torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


@pytest.mark.parametrize("kind", ["sequential", "coprime", "shuffled"])
def test_state_dict_resumes_the_same_continuation(shards, kind):
    loader = _loader(kind, shards)
    _batches(loader, 13)  # far enough to cross a shard or a pass boundary
    loader.next_batch(4 * SEQ * 4, SEQ, 4)  # and stop inside a step (R25's mixed batch half handed out)
    state = json.loads(json.dumps(loader.state_dict()))  # plain data: survives JSON
    expected = _batches(loader, 20)
    resumed = _loader(kind, shards)
    resumed.load_state_dict(state)
    for (xe, ye), (xr, yr) in zip(expected, _batches(resumed, 20)):
        assert torch.equal(xe, xr) and torch.equal(ye, yr)


@pytest.mark.parametrize("kind", ["sequential", "coprime", "shuffled"])
@pytest.mark.parametrize("world", [2, 4])
def test_union_over_ranks_equals_the_single_process_step(shards, kind, world):
    global_tokens, steps = 4 * SEQ * 4, 5
    single = _batches(_loader(kind, shards), steps, global_tokens, accum=4)
    ranks = [_batches(_loader(kind, shards, rank=r, world=world), steps, global_tokens, accum=4 // world)
             for r in range(world)]
    per_step = 4
    for step in range(steps):
        one = torch.cat([x for x, _ in single[step * per_step : (step + 1) * per_step]])
        accum = 4 // world
        many = torch.cat([ranks[r][step * accum + m][0] for m in range(accum) for r in range(world)])
        assert torch.equal(one, many)


def test_bad_loader_kind_and_short_shards_are_errors(shards, tmp_path):
    with pytest.raises(PgolfError, match="PGOLF_LOADER"):
        _loader("random", shards)
    write_shard(tmp_path / "short" / "fineweb_train_000000.bin", np.arange(5, dtype=np.uint16))
    with pytest.raises(PgolfError, match="no window"):
        _loader("shuffled", str(tmp_path / "short" / "fineweb_train_*.bin"))


def test_mix_schedule_goes_from_few_weighted_shards_to_many_even_ones():
    assert mix_schedule(0) == (0.0, 0.9)
    assert mix_schedule(900) == (0.5, pytest.approx(0.7))
    assert mix_schedule(1800) == mix_schedule(10_000) == (1.0, 0.5)
    assert [shards_per_batch(p, 100, 384) for p in (0.0, 0.5, 1.0)] == [8, 36, 64]
    assert shards_per_batch(1.0, 20, 384) == 20 and shards_per_batch(1.0, 100, 10) == 10  # capped


def _rounds(batch):
    """Split a mixed batch into its round-robin rounds: round j holds every shard with more than j windows."""
    per_shard = {}
    for shard, _ in batch:
        per_shard[shard] = per_shard.get(shard, 0) + 1
    rounds, at, j = [], 0, 0
    while at < len(batch):
        size = sum(1 for c in per_shard.values() if c > j)
        rounds.append([shard for shard, _ in batch[at : at + size]])
        at, j = at + size, j + 1
    return per_shard, rounds


@pytest.mark.parametrize("built, shards", [(0, 8), (900, 36), (1800, 64), (5000, 64)])
def test_each_batch_mixes_the_scheduled_shards_round_robin(built, shards):
    stream = ShardMixStream([400] * 70, SEQ, seed=5)  # 70 shards of ~24 windows
    stream.batches_built = built
    batch = stream.mixed_batch(128)
    per_shard, rounds = _rounds(batch)
    assert len(batch) == 128 and len(per_shard) == shards
    for j, shards_in_round in enumerate(rounds):
        assert len(set(shards_in_round)) == len(shards_in_round)  # one window per shard per round
        assert set(shards_in_round) == {s for s, c in per_shard.items() if c > j}
    assert stream.batches_built == built + 1


def _share_of_big_shards(built: int) -> float:
    """Windows from the 10 big shards (1000 windows) among 60 small ones (10 windows), over 5 seeds."""
    big = 0
    for seed in range(5):
        stream = ShardMixStream([1000 * SEQ + 1] * 10 + [10 * SEQ + 1] * 60, SEQ, seed)
        stream.batches_built = built
        big += sum(1 for shard, _ in stream.mixed_batch(128) if shard < 10)
    return big / (5 * 128)


def test_shard_weights_favour_full_shards_early_and_flatten_later():
    early, late = _share_of_big_shards(0), _share_of_big_shards(1800)
    # early: remaining ** 0.9 gives the 10 big shards 91% of the probability and only 8 shards are drawn
    # (measured share 98%); late: remaining ** 0.5 gives them 62%, and 64 of 70 shards get a window each (41%)
    assert early > 0.9 and late < 0.6


def test_a_shard_continues_its_coprime_walk_into_the_next_pass():
    stream = ShardMixStream(list(SIZES), SEQ, seed=9)
    first, second = (ShardPass("coprime", SIZES[1], SEQ, 9, 1, epoch) for epoch in (0, 1))
    got = stream.take_from_shard(1, 10) + stream.take_from_shard(1, first.count - 10 + 3)
    expected = [first.window_start(k) for k in range(first.count)] + [second.window_start(k) for k in range(3)]
    assert got == [(1, start) for start in expected]
    assert (stream.epochs[1], stream.taken[1]) == (1, 3)
