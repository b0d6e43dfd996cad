"""GPTQ (Frantar et al. 2023) for intN per-row / per-group schemes, with Hessians from forward hooks.

* :func:`collect_hessians` runs calibration batches through the model with a forward pre-hook on
  every CastedLinear and accumulates ``H = sum x^T x`` over its inputs (fp32, per weight name).
  The output head is ``F.linear(final_norm(h), W)``, so a forward hook on ``final_norm`` collects
  the head-input Hessian under ``tok_emb.weight`` when tied (the embedding then gets GPTQ like any
  linear, R30) or under ``lm_head.weight`` when untied.
* :func:`gptq_quantize` quantizes one weight column by column in blocks of 128, in descending
  ``diag(H)`` order (activation order), with dead columns zeroed, damping ``0.01 * mean(diag H)``,
  and the error of each column fed back to the not-yet-quantized ones through the Cholesky factor
  of ``H^-1``. Scales are fixed up front by the scheme's clip rule (``hsd<k>`` reads this
  ``diag(H)``, as R31), so codes and fp16 scales are stored exactly like round-to-nearest ones
  (same entry kind, same artifact format).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pgolf.errors import PgolfError
from pgolf.model.layers import CastedLinear
from pgolf.quant.lowbit import FAMILY_INT, HESSIAN_DAMP, Scheme, _scale_for, clip_per_unit, fits

BLOCK = 128
DAMP = HESSIAN_DAMP
TIED_EMBED_NAME = "tok_emb.weight"


def output_head_weight(model: nn.Module) -> str | None:
    """State-dict name of the output head's weight (``tok_emb.weight`` when tied), None if unknown."""
    if not isinstance(getattr(model, "final_norm", None), nn.Module) or not hasattr(model, "lm_head"):
        return None
    return TIED_EMBED_NAME if model.lm_head is None else "lm_head.weight"


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """``{"<linear>.weight": H}`` from running ``model.logits`` on each batch of input ids."""
    hessians: dict[str, Tensor] = {}
    handles = []

    def accumulate(name: str, x: Tensor) -> None:
        x = x.detach().float().reshape(-1, x.shape[-1])
        # Calibration may run under bf16 autocast; the Hessian itself must be an fp32 product.
        with torch.autocast(device_type=x.device.type, enabled=False):
            xtx = x.T @ x
        h = hessians.get(name)
        hessians[name] = xtx if h is None else h.add_(xtx)

    def hook_for(name: str):
        def hook(_module, inputs):
            accumulate(name, inputs[0])

        return hook

    for name, module in model.named_modules():
        if isinstance(module, CastedLinear):
            handles.append(module.register_forward_pre_hook(hook_for(f"{name}.weight")))
    # The head applies its weight with F.linear (it is not called as a module), so its input
    # Hessian comes from the output of final_norm, which feeds it.
    head = output_head_weight(model)
    if head is not None:
        handles.append(model.final_norm.register_forward_hook(lambda _m, _i, out: accumulate(head, out)))
    try:
        for ids in batches:
            model.logits(ids)
    finally:
        for h in handles:
            h.remove()
    return hessians


def _column_scales(w: Tensor, scheme: Scheme, hessian_diag: Tensor) -> tuple[Tensor, Tensor]:
    """fp32 scale per (row, column) and the fp16 scale tensor to store."""
    rows, cols = w.shape
    scale = _scale_for(clip_per_unit(w, scheme, hessian_diag), scheme.qmax)
    if scheme.group_size == 0:
        return scale[:, None].expand(rows, cols), scale.half()
    per_group = scale.reshape(rows, cols // scheme.group_size)
    return per_group.repeat_interleave(scheme.group_size, dim=1), per_group.half()


def gptq_quantize(w: Tensor, hessian: Tensor, scheme: Scheme) -> tuple[Tensor, Tensor]:
    """``(codes int8, scale fp16)`` like :func:`pgolf.quant.lowbit.quantize_weight`, GPTQ-rounded."""
    if scheme.family != FAMILY_INT or not fits(scheme, tuple(w.shape)):
        raise PgolfError(f"GPTQ: scheme {scheme} cannot store a tensor of shape {tuple(w.shape)}")
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise PgolfError(f"GPTQ: Hessian shape {tuple(hessian.shape)} does not match {cols} input columns")
    w = w.detach().float().clone()
    h = hessian.detach().float().clone()
    col_scale, stored_scale = _column_scales(w, scheme, torch.diagonal(h))
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    # The records' order (R24, R35, R44): damp, then sort the damped diagonal; the mean of diag() (a
    # contiguous copy: the mean of the strided torch.diagonal view sums in another order).
    h.diagonal().add_(DAMP * h.diag().mean())
    perm = torch.argsort(torch.diagonal(h), descending=True)
    inv = torch.argsort(perm)
    w, h, s = w[:, perm], h[perm][:, perm], col_scale[:, perm]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for b0 in range(0, cols, BLOCK):
        b1 = min(b0 + BLOCK, cols)
        wb, hb = w[:, b0:b1].clone(), hinv[b0:b1, b0:b1]
        err = torch.zeros_like(wb)
        for j in range(b1 - b0):
            col, d = wb[:, j], hb[j, j]
            qc = torch.clamp(torch.round(col / s[:, b0 + j]), -scheme.qmax, scheme.qmax)
            q[:, b0 + j] = qc
            e = (col - qc * s[:, b0 + j]) / d
            wb[:, j:] -= e[:, None] * hb[j, j:][None, :]
            err[:, j] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    return q[:, inv].to(torch.int8).contiguous(), stored_scale.contiguous()


def hessian_error(w: Tensor, w_hat: Tensor, hessian: Tensor) -> float:
    """``trace((W - W_hat) H (W - W_hat)^T)``: the layer-output error GPTQ minimizes."""
    d = (w - w_hat).float()
    return float(((d @ hessian.float()) * d).sum())
