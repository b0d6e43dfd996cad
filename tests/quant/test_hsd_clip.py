"""SDClip and Hessian-aware SDClip (``sd<k>``, ``hsd<k>``) against the records' own formulas, on the
round-to-nearest path, under GPTQ, and through a policy; on Hessians of a trained model's layers."""

from __future__ import annotations

import pytest
import torch

from pgolf.quant.gptq import collect_hessians, gptq_quantize
from pgolf.quant.lowbit import parse_scheme, quantize_weight
from pgolf.quant.policy import quantize_state_dict_policy

R44_SCRIPT = "R44_sp8192_lqer_sparsegate_bossmear/train_gpt.py"


def r31_scales(w: torch.Tensor, H: torch.Tensor, clip_sigmas: float, clip_range: int, lam: float = 0.175) -> torch.Tensor:
    """R31's Hessian-aware SDClip scales (2026-04-06 HessianSDClip record; R31 is not among the
    oracles), computed here in float64 from the rule's definition rather than R31's float32 code:
    per row i, ``scale_i = k * std_i * (1 + lam * (r_i / mean(r) - 1)) / qmax`` with the sample std of
    the row and ``r_i = mean_j |W_ij| * d_j / mean(d)``, where ``d`` is the diagonal of the Hessian
    with dead inputs set to 1 and 1% of its mean added as damping; lam = 0.175 is R31's
    HESSIAN_CLIP_LAMBDA. Callers compare to within an fp16 rounding of this exact value."""
    W = w.double()
    d = H.double().diagonal().clone()
    d[d == 0] = 1.0
    d = (d + 0.01 * d.mean()).clamp_min(1e-8)
    rows = (W.abs() * (d / d.mean())).mean(dim=1)
    adjust = 1.0 + lam * (rows / rows.mean() - 1.0)
    return (clip_sigmas * W.std(dim=1, correction=1) * adjust / clip_range).clamp_min(1e-10)


def assert_r31_scales(scale: torch.Tensor, w: torch.Tensor, H: torch.Tensor, k: float, qmax: int, name: str) -> None:
    """pgolf's fp16 scales are R31's exact ones rounded to nearest fp16 (half a step: 2**-11 relative at most)."""
    assert scale.dtype == torch.float16, name
    exact = r31_scales(w, H, k, qmax)
    assert torch.allclose(scale.double(), exact, rtol=2.0**-11 + 1e-5, atol=0.0), name


@pytest.fixture(scope="module")
def layers(trained_tiny):
    """``[(name, W, H)]`` for every GPTQ'd tensor of the trained tiny model, plus one Hessian with
    dead input columns (zero rows/columns, as a never-used input gives)."""
    model, batches = trained_tiny
    hessians = collect_hessians(model, batches)
    state = model.state_dict()
    out = [(name, state[name].float(), h) for name, h in hessians.items()]
    name, w, h = out[0]
    h_dead = h.clone()
    h_dead[:, [3, 17]] = 0
    h_dead[[3, 17], :] = 0
    return out + [(name + "#dead", w, h_dead)]


@pytest.mark.parametrize(("bits", "k"), [(6, 12.85), (4, 6.0)])
def test_hsd_round_to_nearest_scales_are_r31s(layers, bits, k):
    scheme = parse_scheme(f"int{bits}:hsd{k}")
    for name, w, h in layers:
        codes, scale = quantize_weight(w, scheme, torch.diagonal(h))
        assert_r31_scales(scale, w, h, k, scheme.qmax, name)
        assert torch.equal(codes, torch.clamp(torch.round(w / scale.float()[:, None]), -scheme.qmax, scheme.qmax).to(torch.int8)), name


def test_hsd_under_gptq_uses_the_hessian_and_gives_r31s_scales(layers):
    hsd, sd = parse_scheme("int6:hsd12.85"), parse_scheme("int6:sd12.85")
    for name, w, h in layers:
        codes_h, scale_h = gptq_quantize(w, h, hsd)
        codes_s, scale_s = gptq_quantize(w, h, sd)
        assert_r31_scales(scale_h, w, h, 12.85, 31, name)
        assert not torch.equal(scale_h, scale_s), name  # the Hessian moved the clips
        assert not torch.equal(codes_h, codes_s), name


@pytest.mark.parametrize("gptq", [False, True])
def test_a_policy_with_hessians_gives_r31s_scales(trained_tiny, layers, gptq):
    model, _ = trained_tiny
    hessians = {name: h for name, _, h in layers if "#" not in name}
    q = quantize_state_dict_policy(model.state_dict(), "int5:hsd9,small=0", hessians, gptq=gptq)
    for name, w, h in layers:
        if name in hessians:
            assert_r31_scales(q.entry(name).scale, w, h, 9.0, 15, name)


@pytest.mark.parametrize(("bits", "k"), [(6, 12.85), (8, 20.0), (4, 5.0)])
def test_sd_under_gptq_is_the_records_gptq_bit_for_bit(oracle, layers, bits, k):
    # R44's gptq_quantize_weight (SDClip with the sample std, as R35's): same codes, same fp16 scales.
    r44 = oracle(R44_SCRIPT)
    scheme = parse_scheme(f"int{bits}:sd{k}")
    for name, w, h in layers:
        codes, scale = gptq_quantize(w, h, scheme)
        ref_codes, ref_scale = r44.gptq_quantize_weight(w, h, clip_sigmas=k, clip_range=scheme.qmax)
        assert torch.equal(scale, ref_scale), name
        assert torch.equal(codes, ref_codes), name
