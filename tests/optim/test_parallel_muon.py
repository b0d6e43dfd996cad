"""Parallel Muon gives plain Muon's update: on one process, and on 2 gloo ranks with either
already-averaged gradients (the DDP case) or per-rank gradients reduce-scattered in the optimizer."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.optim.muon import Muon, newton_schulz
from pgolf.optim.parallel_muon import ParallelMuon, newton_schulz_batched

SHAPES = [(32, 16), (16, 48), (32, 16), (24, 24), (32, 16), (16, 48)]  # banks of 3, 2 and 1 (odd: padding)
OPTIONS = dict(lr=0.05, momentum=0.9, backend_steps=5, weight_decay=0.1, row_normalize=True)


def make_problem(seed=0, ranks=1):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    # per step, per rank gradients; the averaged gradient is their mean
    grads = [[[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(ranks)]
             for _ in range(3)]
    return weights, grads


def run(cls, weights, grads_per_step, rank=None, **kwargs):
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = cls(params, ns_dtype=torch.float64, **OPTIONS, **kwargs)
    for per_rank in grads_per_step:
        for i, p in enumerate(params):
            if rank is None:
                p.grad = sum(g[i] for g in per_rank) / len(per_rank)
            else:
                p.grad = per_rank[rank][i].clone()
        opt.step()
    return [p.detach() for p in params]


def test_batched_newton_schulz_equals_one_matrix_at_a_time():
    G = torch.randn(3, 40, 24, dtype=torch.float64)
    batched = newton_schulz_batched(G, 5, dtype=torch.float64, schedule="polar_express")
    for k in range(3):
        assert torch.allclose(batched[k], newton_schulz(G[k], 5, dtype=torch.float64, schedule="polar_express"), atol=1e-12)


def test_banks_group_same_shapes_in_order():
    params = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    banks = ParallelMuon.banks(params)
    assert [len(b) for b in banks] == [3, 2, 1]
    assert banks[0][1] is params[2] and banks[1][1] is params[5]


def test_single_process_equals_plain_muon():
    weights, grads = make_problem()
    for a, b in zip(run(Muon, weights, grads), run(ParallelMuon, weights, grads)):
        assert torch.allclose(a, b, atol=1e-12)


def _worker(rank, world, init_file, weights, grads, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for reduce_grads in (False, True):
            result = run(ParallelMuon, weights, grads, rank=rank if reduce_grads else None, reduce_grads=reduce_grads)
            torch.save([r.clone() for r in result], f"{out_file}.{int(reduce_grads)}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_plain_muon_with_averaged_and_with_local_gradients(tmp_path):
    weights, grads = make_problem(1, ranks=2)
    plain = run(Muon, weights, grads)  # single process on the mean gradient
    out = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), weights, grads, str(out)), nprocs=2, join=True)
    for reduce_grads in (False, True):
        for rank in range(2):
            got = torch.load(f"{out}.{int(reduce_grads)}.{rank}", weights_only=True)
            for a, b in zip(plain, got):
                assert torch.allclose(a, b, atol=1e-12), (reduce_grads, rank)
