"""PGOLF_GRAD_CLIP_LOCAL: on 2 gloo ranks each rank's own gradient is clipped to GRAD_CLIP_NORM before
the ranks average it, as R22/R44 (``clip_grad_norm_`` on the module, then the reduce-scatters and
all-reduces). Compared with a brute-force recomputation in one process: every rank's gradient clipped
on its own, the clipped gradients averaged, plain Muon and Adam stepped on the mean (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.config import OptimConfig
from pgolf.errors import PgolfError
from pgolf.optim.grad_sync import BankedGradSync, average_and_clip
from pgolf.optim.muon import Muon
from pgolf.optim.parallel_muon import ParallelMuon

MATRICES = [(32, 16), (16, 48), (32, 16), (24, 24), (32, 16)]  # banks of 3, 1 and 1 (padding on 2 ranks)
OTHERS = [(8,), (10, 4)]  # Adam's: a vector, an embedding table
OPTIONS = dict(lr=0.05, momentum=0.9, backend_steps=5, weight_decay=0.1)
CLIP = 2.0  # the ranks' random gradients have global norms ~40, their mean ~28: the clip binds everywhere
STEPS = 3


def make_problem(seed=3, ranks=2):
    gen = torch.Generator().manual_seed(seed)
    shapes = MATRICES + OTHERS
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    # per step, per rank: the ranks' gradients differ in scale so that clipping them apart matters
    grads = [[[(1 + 2 * r) * torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for r in range(ranks)]
             for _ in range(STEPS)]
    return weights, grads


def clipped(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """One rank's gradient scaled as torch's clip_grad_norm_ would scale it."""
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params]


def brute_force(weights, grads, local: bool):
    """One process: the mean of the per-rank clipped gradients (``local``) or the clipped mean."""
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    mats, others = params[: len(MATRICES)], params[len(MATRICES):]
    muon, adam = Muon(mats, ns_dtype=torch.float64, **OPTIONS), torch.optim.Adam(others, lr=0.01)
    for per_rank in grads:
        ranks = [clipped(g, CLIP) for g in per_rank] if local else per_rank
        mean = [sum(r[i] for r in ranks) / len(ranks) for i in range(len(params))]
        for p, g in zip(params, clipped(mean, CLIP) if not local else mean):
            p.grad = g
        muon.step()
        adam.step()
    return [p.detach() for p in params]


def on_rank(weights, grads, rank: int, local: bool):
    """This rank's run: its own gradients, pgolf's sync (Parallel Muon banks, packed all-reduce) and clip."""
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    mats, others = params[: len(MATRICES)], params[len(MATRICES):]
    muon = ParallelMuon(mats, ns_dtype=torch.float64, reduce_grads=True, **OPTIONS)
    adam, sync = torch.optim.Adam(others, lr=0.01), BankedGradSync(muon, others)
    o = OptimConfig(grad_clip_norm=CLIP, grad_clip_local=local, muon_parallel=True)
    for per_rank in grads:
        for p, g in zip(params, per_rank[rank]):
            p.grad = g.clone()
        average_and_clip(params, sync, o)
        muon.step()
        adam.step()
    return [p.detach().clone() for p in params]


def _worker(rank, world, init_file, weights, grads, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save({local: on_rank(weights, grads, rank, local) for local in (False, True)}, f"{out_file}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_clip_each_rank_gradient_before_the_average(tmp_path):
    weights, grads = make_problem()
    expected = {local: brute_force(weights, grads, local) for local in (False, True)}
    # the two orders differ here, so agreeing with one is not agreeing with both
    assert max((a - b).abs().max().item() for a, b in zip(expected[False], expected[True])) > 1e-3
    out = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), weights, grads, str(out)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        for local in (False, True):
            for a, b in zip(expected[local], got[local], strict=True):
                assert torch.allclose(a, b, atol=1e-12), (rank, local)


def test_one_process_clips_the_same_either_way():
    """One process (or DDP): the loop passes no grad_sync, the gradient is clipped once, either way."""
    weights, grads = make_problem(ranks=1)
    got = {}
    for local in (False, True):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(params, grads[0][0]):
            p.grad = g.clone()
        average_and_clip(params, None, OptimConfig(grad_clip_norm=CLIP, grad_clip_local=local, muon_parallel=True))
        got[local] = [p.grad for p in params]
    for a, b, want in zip(got[False], got[True], clipped(grads[0][0], CLIP), strict=True):
        assert torch.equal(a, want) and torch.equal(b, want)


def test_local_clip_needs_parallel_muon_and_is_set_in_r22_and_r44():
    from pgolf.presets import build_config  # here, not at the top: the spawned ranks import this module

    for preset in ("leakyrelu_ttt_parallel_muon", "sp8192_lqer_sparsegate_bossmear"):
        assert build_config(preset, environ={}).optim.grad_clip_local
    assert not build_config("baseline", environ={}).optim.grad_clip_local
    with pytest.raises(PgolfError, match="^PGOLF_GRAD_CLIP_LOCAL=1 needs PGOLF_PARALLEL_MUON=1"):
        build_config("baseline", ["PGOLF_GRAD_CLIP_LOCAL=1"], environ={})
