"""FUSED_CE / FUSED_MLP: switch a built model's training forward over to the fused Triton kernels.

:func:`use_fused_kernels` turns the model into a :class:`FusedLossGPT` and its relu2 / leaky_relu2
MLPs into :class:`FusedMLP`: subclasses whose training forward calls :mod:`pgolf.kernels` and whose
evaluation forward is the parent's, unchanged. Weights, ``state_dict`` keys and every other
method are the parent's, so checkpoints, export and evaluation cannot tell the difference. The
swap happens before ``torch.compile`` traces the model.

A single-file bundle carries the kernels only when its configuration turns them on
(:data:`pgolf.bundle.build.SWITCHED_MODULES`), so a bundle without them never imports Triton.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from pgolf.config import ModelConfig
from pgolf.errors import PgolfError
from pgolf.kernels.support import require_fused_kernels
from pgolf.model.gpt import GPT
from pgolf.model.mlp import MLP

FUSED_ACTIVATIONS = ("relu2", "leaky_relu2")
# The kernel functions, imported by use_fused_kernels: once, and outside the code torch.compile traces.
_kernels: dict[str, Callable] = {}


class FusedMLP(MLP):
    """An MLP whose training forward is :func:`pgolf.kernels.mlp.fused_mlp` (QAT weights included)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        slope = 0.0 if self.activation == "relu2" else self.negative_slope
        up, down = self.fc.effective_weight().to(x.dtype), self.proj.effective_weight().to(x.dtype)
        return _kernels["mlp"](x, up, down, slope)


class FusedLossGPT(GPT):
    """A GPT whose mean training loss is :func:`pgolf.kernels.softcapped_ce.softcapped_cross_entropy`."""

    def forward(self, input_ids: Tensor, target_ids: Tensor, reduction: str = "mean") -> Tensor:
        if not (self.training and reduction == "mean"):
            return super().forward(input_ids, target_ids, reduction)
        proj = self.head_projection(self.hidden(input_ids))
        losses, lse = _kernels["ce"](proj, target_ids, self.cfg.logit_softcap)
        loss = losses.mean()
        if self.cfg.z_loss > 0:  # the kernel's lse is that of the capped logits, as logits.z_loss computes it
            loss = loss + self.cfg.z_loss * lse.square().mean()
        return loss


def check_fused_kernels(cfg: ModelConfig, ce: bool, mlp: bool, device: torch.device | str) -> None:
    """Refuse, with one line, FUSED_CE / FUSED_MLP for a model or machine they cannot serve."""
    require_fused_kernels({"FUSED_CE": ce, "FUSED_MLP": mlp}, device)
    if ce and cfg.logit_softcap_kind != "tanh":
        raise PgolfError(f"FUSED_CE=1 fuses the tanh softcap; SOFTCAP_TYPE={cfg.logit_softcap_kind} has no fused kernel")
    if mlp and cfg.mlp_activation not in FUSED_ACTIVATIONS:
        raise PgolfError(f"FUSED_MLP=1 fuses relu2 and leaky_relu2; MLP_ACTIVATION={cfg.mlp_activation} has no fused kernel")


def use_fused_kernels(model: GPT, ce: bool, mlp: bool, device: torch.device | str) -> None:
    """Switch ``model``'s training forward to the fused kernels asked for; before torch.compile."""
    check_fused_kernels(model.cfg, ce, mlp, device)
    try:
        if ce:
            from pgolf.kernels.softcapped_ce import softcapped_cross_entropy

            _kernels["ce"] = softcapped_cross_entropy
            model.__class__ = FusedLossGPT
        if mlp:
            from pgolf.kernels.mlp import fused_mlp

            _kernels["mlp"] = fused_mlp
            for block in model.blocks:
                block.mlp.__class__ = FusedMLP
    except ImportError:  # a single-file bundle built with the kernels off carries no pgolf.kernels
        raise PgolfError("FUSED_CE / FUSED_MLP: this train_gpt.py was bundled without the fused kernels; "
                         "rebuild it with them on") from None
