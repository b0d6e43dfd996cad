"""Quantization-aware training: straight-through fake quantization matching the export exactly.

:func:`enable_qat` gives every CastedLinear whose weight the export policy stores as intN a
``weight_fake_quant`` function: :func:`pgolf.quant.lowbit.fake_quantize` with the very scheme
:func:`pgolf.quant.policy.quantize_state_dict_policy` will apply to that weight (same name, same
size rules), so the forward pass sees exactly the dequantized artifact weights. Weights the policy
keeps as floats or as reference int8 (and the token embedding, not a linear) are left alone.
The records' own clip rules ``ref`` and ``refmse`` (R15, PR #160, R22) are exported as the records
export, but fake-quantized by ``pct`` and ``mse``, as before they existed: none of those records
fake-quantizes by its export rule (R15's QAT has neither the 1/qmax scale floor nor fp16 scales).

:func:`update_qat` is called once per step with the LR scale: with ``QAT_ENABLED`` it switches QAT
on at the first step (threshold 0) or once the scale drops below ``LATE_QAT_THRESHOLD``; it never
switches off.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from pgolf.config import QuantConfig
from pgolf.model.layers import CastedLinear
from pgolf.quant.lowbit import FAMILY_INT, Scheme, fake_quantize, fits
from pgolf.quant.policy import Policy, parse_policy


QAT_CLIP = {"ref": "pct", "refmse": "mse"}  # see the module docstring


def _export_scheme(policy: Policy, name: str, module: CastedLinear) -> Scheme | None:
    w = module.weight
    scheme = policy.scheme_for(f"{name}.weight")
    if scheme.family != FAMILY_INT or w.ndim != 2 or w.numel() <= policy.small_numel:
        return None
    clip = QAT_CLIP.get(scheme.clip, scheme.clip)
    # Same fallback as the export: a group that does not divide the columns becomes per row.
    return Scheme(FAMILY_INT, scheme.bits, scheme.group_size if fits(scheme, tuple(w.shape)) else 0, clip, scheme.k)


def enable_qat(model: nn.Module, policy: Policy | str) -> list[str]:
    """Switch fake quantization on for the linears the policy quantizes; return their names."""
    if isinstance(policy, str):
        policy = parse_policy(policy)
    names = []
    for name, module in model.named_modules():
        if isinstance(module, CastedLinear):
            scheme = _export_scheme(policy, name, module)
            if scheme is not None:
                module.weight_fake_quant = partial(fake_quantize, scheme=scheme)
                names.append(name)
    return names


def disable_qat(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, CastedLinear):
            module.weight_fake_quant = None


def qat_is_on(model: nn.Module) -> bool:
    return any(isinstance(m, CastedLinear) and m.weight_fake_quant is not None for m in model.modules())


def update_qat(model: nn.Module, q: QuantConfig, lr_scale: float) -> bool:
    """Switch QAT on when the schedule says so; True exactly on the step it switches on."""
    if not q.qat_enabled or qat_is_on(model):
        return False
    if q.late_qat_threshold > 0 and lr_scale >= q.late_qat_threshold:
        return False
    return bool(enable_qat(model, q.scheme))
