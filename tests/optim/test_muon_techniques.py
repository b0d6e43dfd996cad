"""Record options of Muon: decoupled WD, MuonEq-R row normalisation, Polar Express coefficients."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pgolf.optim.muon import NS_COEFFICIENTS, POLAR_EXPRESS_COEFFICIENTS, Muon, newton_schulz, normalize_rows


def _one_step(w: torch.Tensor, g: torch.Tensor, **kwargs) -> torch.Tensor:
    p = torch.nn.Parameter(w.clone())
    opt = Muon([p], lr=0.1, momentum=0.9, ns_dtype=torch.float64, **kwargs)
    p.grad = g.clone()
    opt.step()
    return p.detach()


def test_decoupled_weight_decay_shrinks_before_the_update():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    plain = _one_step(w, g)
    decayed = _one_step(w, g, weight_decay=0.5)
    update = plain - w  # -lr * NS(...) * scale, independent of the weights
    assert torch.allclose(decayed, w * (1 - 0.1 * 0.5) + update, atol=1e-14)


def test_weight_decay_scale_multiplies_the_decay():
    w = torch.ones(4, 4, dtype=torch.float64)
    p = torch.nn.Parameter(w.clone())
    opt = Muon([p], lr=0.2, momentum=0.0, ns_dtype=torch.float64, weight_decay=0.25)
    opt.param_groups[0]["wd_scale"] = 0.5
    p.grad = torch.zeros_like(w)  # NS of zero is zero: only the decay moves p
    opt.step()
    assert torch.allclose(p.detach(), w * (1 - 0.2 * 0.25 * 0.5), atol=1e-15)


SHAPES = [(16, 16), (8, 32), (48, 16)]  # square, wide, tall (scaled by sqrt(rows / cols))
R44_SCRIPT = "R44_sp8192_lqer_sparsegate_bossmear/train_gpt.py"


def _run(make_opt, dtype: torch.dtype, steps: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """The parameters after ``steps`` steps of ``make_opt(params)`` on fixed random gradients."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter((0.1 * torch.randn(*s, generator=gen, dtype=torch.float64)).to(dtype)) for s in SHAPES]
    grads = [[torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES] for _ in range(steps)]
    opt = make_opt(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("explicit_defaults", [False, True])
def test_default_muon_is_the_references_muon_bit_for_bit(oracle, explicit_defaults):
    # The reference's own Muon (bf16 Newton-Schulz, fp32 parameters): the record options at their
    # off values must leave its step unchanged to the bit.
    ref = oracle("reference/train_gpt.py")
    off = dict(weight_decay=0.0, row_normalize=False, ns_schedule="quintic") if explicit_defaults else {}
    expected = _run(lambda ps: ref.Muon(ps, lr=0.04, momentum=0.95, backend_steps=5), torch.float32)
    got = _run(lambda ps: Muon(ps, lr=0.04, momentum=0.95, **off), torch.float32)
    for shape, a, b in zip(SHAPES, expected, got):
        assert torch.equal(a, b), shape


def _in_float64(module, *names: str) -> dict:
    """A namespace where the oracle's top-level functions/classes ``names`` are re-run from its own
    source with every bf16 cast made float64 (decorators, i.e. torch.compile, dropped), so that a
    comparison with pgolf in float64 sees the algorithm, not bf16 rounding order."""
    source = Path(module.__file__).read_text()
    ns = dict(vars(module))
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            src = ast.get_source_segment(source, node).replace(".bfloat16()", ".double()")
            exec(compile(src.replace("torch.bfloat16", "torch.float64"), module.__file__, "exec"), ns)
    assert all(ns[n] is not getattr(module, n) for n in names), names
    return ns


def test_record_options_follow_r44s_muon(oracle):
    # R44 (PR #1855): MuonEq-R row normalisation, Polar Express coefficients, decoupled WD, in its own
    # Muon.step and zeropower_via_newtonschulz5.
    r44 = _in_float64(oracle(R44_SCRIPT), "zeropower_via_newtonschulz5", "Muon")
    options = dict(lr=0.05, momentum=0.9, weight_decay=0.5, row_normalize=True)
    expected = _run(lambda ps: r44["Muon"](ps, backend_steps=5, **options), torch.float64)
    got = _run(lambda ps: Muon(ps, ns_dtype=torch.float64, ns_schedule="polar_express", **options), torch.float64)
    for shape, a, b in zip(SHAPES, expected, got):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), shape


def test_row_normalize_gives_unit_rows():
    g = torch.randn(6, 10, dtype=torch.float64) * torch.arange(1, 7, dtype=torch.float64)[:, None]
    rows = normalize_rows(g).norm(dim=1)
    assert torch.allclose(rows, torch.ones(6, dtype=torch.float64), atol=1e-12)


def test_muon_row_normalize_orthogonalises_the_row_normalised_nesterov_update():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(12, 6, generator=gen, dtype=torch.float64)
    g = torch.randn(12, 6, generator=gen, dtype=torch.float64)
    moved = _one_step(w, g, row_normalize=True) - w
    nesterov = g + 0.9 * g  # first step: buf = g, update = g + m * buf
    expected = -0.1 * newton_schulz(nesterov / nesterov.norm(dim=1, keepdim=True), 5, dtype=torch.float64) * 2 ** 0.5
    assert torch.allclose(moved, expected, atol=1e-12)
    assert not torch.allclose(moved, _one_step(w, g) - w, atol=1e-6)  # the option changes the step


def _poly(x: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    return a * x + b * x**3 + c * x**5


def test_polar_express_acts_on_singular_values_as_the_composed_polynomials():
    # NS maps X = U S V^T to U p(S) V^T, so the singular values must follow p_5(...p_1(s/||G||_F)).
    gen = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    s = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.2, 0.05, 0.01], dtype=torch.float64)
    G = U[:, :8] @ torch.diag(s) @ V.T
    out = newton_schulz(G, 5, eps=0.0, dtype=torch.float64, schedule="polar_express")
    x = s / s.norm()
    for a, b, c in POLAR_EXPRESS_COEFFICIENTS:
        x = _poly(x, a, b, c)
    expected = U[:, :8] @ torch.diag(x) @ V.T
    assert torch.allclose(out, expected, atol=1e-10)
    # and it orthogonalises: every singular value (even 0.01/||s||) ends near 1
    assert torch.allclose(torch.linalg.svdvals(out), torch.ones(8, dtype=torch.float64), atol=0.15)


def test_polar_express_uses_the_first_steps_tuples_and_rejects_more():
    G = torch.randn(8, 8, dtype=torch.float64)
    three = newton_schulz(G, 3, dtype=torch.float64, schedule="polar_express")
    X = G / (G.norm() + 1e-7)
    for a, b, c in POLAR_EXPRESS_COEFFICIENTS[:3]:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    assert torch.allclose(three, X, atol=1e-12)
    with pytest.raises(ValueError):
        newton_schulz(G, 6, dtype=torch.float64, schedule="polar_express")
    assert NS_COEFFICIENTS != POLAR_EXPRESS_COEFFICIENTS[0]
