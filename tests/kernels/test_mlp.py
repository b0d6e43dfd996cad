"""The fused matmul + relu^2 / LeakyReLU^2 MLP against the unfused MLP it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pgolf.kernels.mlp import fused_mlp, leaky_relu2_mlp


def unfused(x, up, down, slope):
    return F.linear(F.leaky_relu(F.linear(x, up), slope).square(), down)


def weights(dim, hidden, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 50, dim, generator=g)
    up = torch.randn(hidden, dim, generator=g) / dim**0.5
    down = torch.randn(dim, hidden, generator=g) / hidden**0.5
    return [t.to(device=device, dtype=dtype) for t in (x, up, down)]


@pytest.mark.parametrize("slope", [0.5, 0.0])  # leaky_relu2 (R22) and relu2 (the reference)
def test_output_and_gradients_match_the_unfused_mlp(device, slope):
    # 150 tokens, dim 96, hidden 200: none is a multiple of the 128/128/64 tiles
    x, up, down = weights(96, 200, device)
    fused_args = [t.clone().requires_grad_() for t in (x, up, down)]
    ref_args = [t.clone().requires_grad_() for t in (x, up, down)]
    out = fused_mlp(*fused_args, slope)
    want = unfused(*ref_args, slope)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(want)
    out.backward(grad)
    want.backward(grad)
    for name, got, ref in zip(("x", "up", "down"), fused_args, ref_args):
        torch.testing.assert_close(got.grad, ref.grad, rtol=1e-4, atol=1e-4, msg=f"d{name}")


def test_the_custom_op_passes_torch_library_opcheck(device):
    x, up, down = weights(32, 48, device)
    torch.library.opcheck(leaky_relu2_mlp, (x[0].requires_grad_(), up.requires_grad_(), down.requires_grad_(), 0.5))


def test_mismatched_weights_are_refused_in_one_line(device):
    x, up, down = weights(32, 48, device)
    with pytest.raises(ValueError, match=r"want x \[tokens, dim\], up \[hidden, dim\], down \[dim, hidden\]"):
        leaky_relu2_mlp(x[0], up, down.t().contiguous(), 0.5)
