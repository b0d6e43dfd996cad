"""Muon against a plain float64 implementation, and the same step on 1 and 2 ranks (gloo)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.optim.muon import Muon, newton_schulz


def plain_newton_schulz(G: torch.Tensor, steps: int) -> torch.Tensor:
    """The quintic iteration written out directly in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.double() / (G.double().norm() + 1e-7)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def plain_muon_steps(weights, grads_per_step, lr, momentum, steps):
    """Reference semantics in float64: buf = m*buf + g; g' = g + m*buf; W -= lr * NS(g') * sqrt(max(1, r/c))."""
    weights = [w.double().clone() for w in weights]
    bufs = [torch.zeros_like(w) for w in weights]
    for grads in grads_per_step:
        for i, (w, g) in enumerate(zip(weights, grads)):
            g = g.double()
            bufs[i] = momentum * bufs[i] + g
            update = plain_newton_schulz(g + momentum * bufs[i], steps)
            w -= lr * update * max(1.0, w.shape[0] / w.shape[1]) ** 0.5
    return weights


def make_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(32, 16), (16, 48), (24, 24)]
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(3)]
    return weights, grads


def run_muon(weights, grads_per_step, ns_dtype, lr=0.05, momentum=0.9, steps=5):
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = Muon(params, lr=lr, momentum=momentum, backend_steps=steps, ns_dtype=ns_dtype)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone().to(p.dtype)
        opt.step()
    return [p.detach() for p in params]


def test_newton_schulz_float64_matches_plain_and_orthogonalises():
    G = torch.randn(64, 32, dtype=torch.float64)
    assert torch.allclose(newton_schulz(G, 5, dtype=torch.float64), plain_newton_schulz(G, 5), atol=1e-12)
    s = torch.linalg.svdvals(newton_schulz(G, 5, dtype=torch.float64))
    assert s.min() > 0.6 and s.max() < 1.3  # quintic NS pushes singular values into ~[0.7, 1.2]


def test_muon_float64_equals_plain_implementation():
    weights, grads = make_problem()
    ours = run_muon(weights, grads, torch.float64)
    plain = plain_muon_steps(weights, grads, lr=0.05, momentum=0.9, steps=5)
    for a, b in zip(ours, plain):
        assert torch.allclose(a, b, atol=1e-10)


def test_muon_bf16_default_is_close_to_float64():
    weights, grads = make_problem(1)
    weights = [w.float() for w in weights]
    ours = run_muon(weights, grads, torch.bfloat16)
    plain = plain_muon_steps(weights, grads, lr=0.05, momentum=0.9, steps=5)
    for w0, a, b in zip(weights, ours, plain):
        moved = (b - w0.double()).norm()
        assert (a.double() - b).norm() / moved < 0.05  # bf16 NS error is a few percent of the step


def _worker(rank, world, init_file, weights, grads, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = run_muon([w.float() for w in weights], grads, torch.float32)
        if rank == 0:
            torch.save([r.clone() for r in result], out_file)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_apply_the_same_update_as_one(tmp_path):
    weights, grads = make_problem(2)
    single = run_muon([w.float() for w in weights], grads, torch.float32)
    out = tmp_path / "ranks.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), weights, grads, str(out)), nprocs=2, join=True)
    multi = torch.load(out, weights_only=True)
    for a, b in zip(single, multi):
        assert torch.equal(a, b)
