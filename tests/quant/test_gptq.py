"""GPTQ lowers the Hessian-weighted error against round-to-nearest, on real layer Hessians."""

from __future__ import annotations

import pytest
import torch

from pgolf.model.gpt import build_model
from pgolf.presets import tiny_cpu
from pgolf.quant.gptq import collect_hessians, gptq_quantize, hessian_error
from pgolf.quant.int8 import intn_dequantize
from pgolf.quant.lowbit import parse_scheme, quantize_weight


@pytest.fixture(scope="module")
def model_and_hessians():
    torch.manual_seed(0)
    model = build_model(tiny_cpu().model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    # Zipf-like token ids give the layer inputs the skewed, correlated statistics real text has.
    probs = 1.0 / torch.arange(1, 1025).float()
    batches = [torch.multinomial(probs, 4 * 64, replacement=True, generator=g).reshape(4, 64) for _ in range(4)]
    return model, collect_hessians(model, batches)


def test_hooks_collect_one_hessian_per_linear(model_and_hessians):
    model, hessians = model_and_hessians
    assert len(hessians) == 13  # 12 linears + the tied embedding (head input)
    h = hessians["blocks.0.mlp.proj.weight"]
    assert h.shape == (128, 128) and torch.allclose(h, h.T)
    assert torch.linalg.eigvalsh(h).min() > -1e-3 * h.diagonal().mean()


@pytest.mark.parametrize("scheme", ["int4", "int3g32", "int5:mse", "int4:hsd6"])
def test_gptq_beats_round_to_nearest_on_hessian_weighted_error(model_and_hessians, scheme):
    model, hessians = model_and_hessians
    s = parse_scheme(scheme)
    state = model.state_dict()
    wins = 0
    for name, h in hessians.items():
        w = state[name]
        rtn = intn_dequantize(*quantize_weight(w, s, torch.diagonal(h)), s.group_size)
        codes, scale = gptq_quantize(w, h, s)
        assert codes.dtype == torch.int8 and int(codes.abs().max()) <= s.qmax
        # Same stored scales as round-to-nearest with the same Hessian (hsd reads its diagonal).
        assert torch.equal(scale, quantize_weight(w, s, torch.diagonal(h))[1])
        gptq = intn_dequantize(codes, scale, s.group_size)
        wins += hessian_error(w, gptq, h) < hessian_error(w, rtn, h)
    assert wins == len(hessians)


def test_gptq_states_export_and_reload_bit_for_bit(model_and_hessians):
    from pgolf.export.container import decode_artifact, encode_artifact
    from pgolf.quant.int8 import dequantize
    from pgolf.quant.policy import quantize_state_dict_policy

    model, hessians = model_and_hessians
    sd = model.state_dict()
    rtn = quantize_state_dict_policy(sd, "int4,small=0")
    q = quantize_state_dict_policy(sd, "int4,small=0", hessians, gptq=True)
    name = "blocks.1.mlp.fc.weight"
    assert not torch.equal(q.entry(name).values, rtn.entry(name).values)
    loaded = dequantize(decode_artifact(encode_artifact(q, {}, "zstd"), "t")[0])
    for k, t in dequantize(q).items():
        assert torch.equal(t, loaded[k]), k
