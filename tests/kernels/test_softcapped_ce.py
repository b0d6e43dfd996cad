"""The fused softcapped cross-entropy against the unfused code it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pgolf.kernels.softcapped_ce import softcapped_ce, softcapped_cross_entropy
from pgolf.model.logits import softcap

CAP = 30.0


def unfused(logits, targets, cap=CAP):
    capped = softcap(logits.float(), cap)
    return F.cross_entropy(capped, targets, reduction="none"), torch.logsumexp(capped, dim=-1)


def inputs(rows, vocab, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # scaled so that many logits sit where the cap bends them (|x| ~ cap)
    logits = (torch.randn(rows, vocab, generator=g) * 40).to(device=device, dtype=dtype)
    return logits, torch.randint(0, vocab, (rows,), generator=g).to(device)


@pytest.mark.parametrize("vocab", [17, 1024, 1500])  # one partial block, one exact, two blocks with a tail
def test_losses_and_lse_match_the_unfused_loss(device, vocab):
    logits, targets = inputs(9, vocab, device)
    losses, lse = softcapped_cross_entropy(logits, targets, CAP)
    want_losses, want_lse = unfused(logits, targets)
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=2e-5)


def test_gradient_matches_the_unfused_loss_with_z_loss(device):
    logits, targets = inputs(11, 1500, device)
    fused_in = logits.clone().requires_grad_()
    losses, lse = softcapped_cross_entropy(fused_in, targets, CAP)
    (losses.mean() + 0.1 * lse.square().mean()).backward()
    ref_in = logits.clone().requires_grad_()
    want_losses, want_lse = unfused(ref_in, targets)
    (want_losses.mean() + 0.1 * want_lse.square().mean()).backward()
    torch.testing.assert_close(fused_in.grad, ref_in.grad, rtol=1e-4, atol=1e-7)


def test_leading_dimensions_are_kept(device):
    logits, targets = inputs(12, 64, device)
    losses, lse = softcapped_cross_entropy(logits.view(3, 4, 64), targets.view(3, 4), CAP)
    assert losses.shape == lse.shape == (3, 4)
    torch.testing.assert_close(losses.reshape(-1), unfused(logits, targets)[0], rtol=1e-5, atol=2e-5)


def test_bf16_logits_are_no_less_accurate_than_the_unfused_bf16_path(device):
    logits, targets = inputs(16, 1024, device, dtype=torch.bfloat16)
    truth = F.cross_entropy(CAP * torch.tanh(logits.double() / CAP), targets, reduction="none")
    fused, _ = softcapped_cross_entropy(logits, targets, CAP)
    # the unfused training path caps in the activation dtype, then casts to fp32
    unfused_bf16 = F.cross_entropy(softcap(logits, CAP).float(), targets, reduction="none")
    assert (fused.double() - truth).abs().max() <= (unfused_bf16.double() - truth).abs().max() + 1e-5


def test_the_custom_op_passes_torch_library_opcheck(device):
    logits, targets = inputs(5, 40, device)
    torch.library.opcheck(softcapped_ce, (logits.requires_grad_(), targets, CAP))


def test_bad_shapes_are_refused_in_one_line(device):
    logits, targets = inputs(4, 32, device)
    with pytest.raises(ValueError, match=r"want logits \[rows, vocab\] and targets \[rows\]"):
        softcapped_ce(logits, targets[:3], CAP)
