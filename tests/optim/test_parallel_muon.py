"""Parallel Muon gives plain Muon's update: on one process, and on 2 gloo ranks with either
already-averaged gradients or per-rank gradients reduce-scattered in the optimizer; with the
training loop's BankedGradSync (no DDP), a full step with the global-norm clip equals one process's
and the banked gradients are only ever reduce-scattered, never all-reduced."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.optim.grad_sync import BankedGradSync
from pgolf.optim.muon import Muon, newton_schulz
from pgolf.optim.muon import newton_schulz as newton_schulz_batched  # the same function takes a stack
from pgolf.optim.parallel_muon import ParallelMuon

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


REPLICATED = [(8,), (10, 4), (3, 16)]  # Adam's: a vector, an embedding table, a matrix not given to Muon
CLIP = 2.0  # random gradients have a global norm ~40: the clip binds at every step


def make_replicated_problem(seed=2, ranks=2):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in REPLICATED]
    grads = [[[torch.randn(s, generator=gen, dtype=torch.float64) for s in REPLICATED] for _ in range(ranks)]
             for _ in range(3)]
    return weights, grads


def run_full_step(matrices, matrix_grads, others, other_grads, rank=None):
    """Muon + Adam with the global-norm clip: one process on mean gradients, or ``rank`` via BankedGradSync."""
    mats = [torch.nn.Parameter(w.clone()) for w in matrices]
    reps = [torch.nn.Parameter(w.clone()) for w in others]
    if rank is None:
        muon = Muon(mats, ns_dtype=torch.float64, **OPTIONS)
    else:
        muon = ParallelMuon(mats, ns_dtype=torch.float64, reduce_grads=True, **OPTIONS)
        sync = BankedGradSync(muon, reps)
    adam = torch.optim.Adam(reps, lr=0.01)
    for step in range(3):
        for params, grads in ((mats, matrix_grads[step]), (reps, other_grads[step])):
            for i, p in enumerate(params):
                p.grad = sum(g[i] for g in grads) / len(grads) if rank is None else grads[rank][i].clone()
        if rank is None:
            torch.nn.utils.clip_grad_norm_(mats + reps, CLIP)
        else:
            sync.reduce()
            sync.clip_average(CLIP)
        muon.step()
        adam.step()
    return [p.detach() for p in mats + reps]


class _CountingCollectives:
    """Records the element count of every all-reduce and reduce-scatter while installed."""

    def __init__(self):
        self.all_reduce, self.reduce_scatter = [], []
        self._originals = (dist.all_reduce, dist.reduce_scatter_tensor)

    def __enter__(self):
        all_reduce, reduce_scatter = self._originals

        def counting_all_reduce(tensor, *args, **kwargs):
            self.all_reduce.append(tensor.numel())
            return all_reduce(tensor, *args, **kwargs)

        def counting_reduce_scatter(output, input, *args, **kwargs):
            self.reduce_scatter.append(input.numel())
            return reduce_scatter(output, input, *args, **kwargs)

        dist.all_reduce, dist.reduce_scatter_tensor = counting_all_reduce, counting_reduce_scatter
        return self

    def __exit__(self, *exc):
        dist.all_reduce, dist.reduce_scatter_tensor = self._originals


def _worker(rank, world, init_file, weights, grads, others, other_grads, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for reduce_grads in (False, True):
            result = run(ParallelMuon, weights, grads, rank=rank if reduce_grads else None, reduce_grads=reduce_grads)
            torch.save([r.clone() for r in result], f"{out_file}.{int(reduce_grads)}.{rank}")
        with _CountingCollectives() as counts:
            result = run_full_step(weights, grads, others, other_grads, rank=rank)
        torch.save({"weights": [r.clone() for r in result], "all_reduce": counts.all_reduce,
                    "reduce_scatter": counts.reduce_scatter}, f"{out_file}.sync.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_plain_muon_and_banked_grads_are_never_all_reduced(tmp_path):
    weights, grads = make_problem(1, ranks=2)
    others, other_grads = make_replicated_problem()
    plain = run(Muon, weights, grads)  # single process on the mean gradient
    plain_full = run_full_step(weights, grads, others, other_grads)
    out = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), weights, grads, others, other_grads, str(out)), nprocs=2, join=True)
    for rank in range(2):
        for reduce_grads in (False, True):
            got = torch.load(f"{out}.{int(reduce_grads)}.{rank}", weights_only=True)
            for a, b in zip(plain, got):
                assert torch.allclose(a, b, atol=1e-12), (reduce_grads, rank)
        sync = torch.load(f"{out}.sync.{rank}", weights_only=True)
        for a, b in zip(plain_full, sync["weights"], strict=True):
            assert torch.allclose(a, b, atol=1e-12), rank
        replicated = sum(torch.Size(s).numel() for s in REPLICATED)
        # per step: one packed all-reduce of Adam's gradients and one scalar (the banks' norm²), nothing else
        assert sync["all_reduce"] == [replicated, 1] * 3
        padded_banks = [4 * 32 * 16, 2 * 16 * 48, 2 * 24 * 24]  # banks of 3, 2, 1 matrices padded to 2 ranks
        assert sync["reduce_scatter"] == padded_banks * 3


def test_banked_grad_sync_rejects_averaged_gradients_and_shared_parameters():
    p, q = torch.nn.Parameter(torch.zeros(4, 4)), torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="reduce_grads=True"):
        BankedGradSync(ParallelMuon([p], **OPTIONS), [q])
    with pytest.raises(ValueError, match="both banked"):
        BankedGradSync(ParallelMuon([p], reduce_grads=True, **OPTIONS), [p, q])
