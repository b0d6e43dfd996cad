"""Training loaders: the sequential stream and the record window loaders are deterministic for a
seed, resumable from state_dict(), and give the same step tokens on 1 and N ranks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pgolf.data.loader import build_loader
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
