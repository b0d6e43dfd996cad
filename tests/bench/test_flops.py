"""The analytic FLOP count agrees with the model the code builds, and the MFU arithmetic."""

from __future__ import annotations

import pytest

from pgolf.bench.flops import (
    attention_flops_per_token,
    forward_flops_per_token,
    matmul_params,
    mfu,
    peak_flops,
    train_flops_per_token,
)
from pgolf.model.gpt import build_model
from pgolf.presets import baseline, tiny_cpu


def linear_weights_in_matmuls(model) -> int:
    """Count from the built module: every Linear weight, plus the tied embedding used as the head."""
    total = sum(m.weight.numel() for m in model.modules() if m.__class__.__name__ == "CastedLinear")
    return total + (model.tok_emb.weight.numel() if model.lm_head is None else 0)


@pytest.mark.parametrize("make", [baseline, tiny_cpu])
def test_matmul_params_match_the_built_model(make):
    cfg = make().model
    assert matmul_params(cfg) == linear_weights_in_matmuls(build_model(cfg))


def test_untied_head_counts_once():
    cfg = tiny_cpu().model
    cfg.tie_embeddings = False
    assert matmul_params(cfg) == linear_weights_in_matmuls(build_model(cfg))


def test_baseline_numbers_by_hand():
    cfg = baseline().model  # 9 x 512, kv 256, mlp 1024, vocab 1024
    n_mm = 9 * (2 * 512 * 512 + 2 * 512 * 256 + 2 * 512 * 1024) + 512 * 1024
    assert matmul_params(cfg) == n_mm == 17_039_360  # of the 17,059,912 parameters; the rest are vectors and scalars
    assert attention_flops_per_token(cfg, 1024) == 2 * 9 * 512 * 1025
    assert forward_flops_per_token(cfg, 1024) == 2 * n_mm + 2 * 9 * 512 * 1025
    assert train_flops_per_token(cfg, 1024) == 3 * forward_flops_per_token(cfg, 1024)


def test_peak_table_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989.5e12
    assert peak_flops("NVIDIA H100 PCIe") == 756.5e12
    assert peak_flops("NVIDIA H200") == 989.5e12
    assert peak_flops("NVIDIA H200 NVL") == 835.5e12
    assert peak_flops("cpu (x86_64, 2 cores)") is None
    assert mfu(1000, 5e9, 8, None) is None
    assert mfu(6 * 10**8, 1e6, 2, 1e15) == pytest.approx(6e14 / 2e15)
