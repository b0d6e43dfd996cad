"""GPTQ on the tied embedding: its Hessian is the head input's (final-norm outputs), and with it
GPTQ beats round-to-nearest on the Hessian-weighted error of a trained model's embedding."""

from __future__ import annotations

import pytest
import torch

from pgolf.model.gpt import build_model
from pgolf.presets import tiny_cpu
from pgolf.quant.gptq import TIED_EMBED_NAME, collect_hessians, gptq_quantize, hessian_error
from pgolf.quant.int8 import dequantize
from pgolf.quant.lowbit import dequantize_weight, parse_scheme, quantize_weight
from pgolf.quant.policy import quantize_state_dict_policy


def test_tied_embedding_hessian_is_the_head_input_hessian(trained_tiny):
    model, batches = trained_tiny
    hessians = collect_hessians(model, batches)
    with torch.no_grad():
        x = torch.cat([model.hidden(b).reshape(-1, model.cfg.model_dim) for b in batches])
    assert torch.allclose(hessians[TIED_EMBED_NAME], x.T @ x, rtol=1e-4, atol=1e-3)


def test_untied_model_collects_the_head_hessian_not_the_embedding():
    cfg = tiny_cpu().model
    cfg.tie_embeddings = False
    model = build_model(cfg)
    hessians = collect_hessians(model, [torch.randint(0, 1024, (2, 16))])
    assert TIED_EMBED_NAME not in hessians and "lm_head.weight" in hessians


@pytest.mark.parametrize("scheme", ["int4", "int5:sd8", "int3g32"])
def test_gptq_beats_rtn_on_the_trained_embedding(trained_tiny, scheme):
    model, batches = trained_tiny
    h = collect_hessians(model, batches)[TIED_EMBED_NAME]
    w = model.tok_emb.weight.detach()
    s = parse_scheme(scheme)
    rtn = dequantize_weight(*quantize_weight(w, s), s.group_size)
    gptq = dequantize_weight(*gptq_quantize(w, h, s), s.group_size)
    assert hessian_error(w, gptq, h) < 0.9 * hessian_error(w, rtn, h)


def test_policy_gptq_rounds_the_embedding(trained_tiny):
    model, batches = trained_tiny
    hessians = collect_hessians(model, batches)
    sd = model.state_dict()
    rtn = dequantize(quantize_state_dict_policy(sd, "embed=int4,*=int8,small=0"))[TIED_EMBED_NAME]
    gptq = dequantize(quantize_state_dict_policy(sd, "embed=int4,*=int8,small=0", hessians, gptq=True))[TIED_EMBED_NAME]
    h, w = hessians[TIED_EMBED_NAME], sd[TIED_EMBED_NAME]
    assert hessian_error(w, gptq, h) < hessian_error(w, rtn, h)


def test_hessians_stay_fp32_products_under_bf16_autocast(trained_tiny):
    model, batches = trained_tiny
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        hessians = collect_hessians(model, batches[:1])
        x = model.hidden(batches[0]).float().reshape(-1, model.cfg.model_dim)
    h = hessians[TIED_EMBED_NAME]
    assert all(v.dtype == torch.float32 for v in hessians.values())
    assert torch.allclose(h, x.T @ x, rtol=1e-5, atol=1e-4)
