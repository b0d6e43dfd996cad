"""Which scheme each tensor gets: a policy of ``PATTERN=SCHEME`` rules, and applying it.

A policy string is a comma-separated list of rules, first match wins::

    embed=int8ref,attn=int6:mse,mlp=int5,*=int6,small=65536

* ``PATTERN`` is a role (``embed``: token embedding, ``head``: untied output head, ``attn``,
  ``mlp``, ``other``) or a glob on the tensor name (``blocks.0.*``);
* ``SCHEME`` is a :mod:`pgolf.quant.lowbit` scheme string;
* ``small=N`` sets the size at or under which float tensors are kept as floats (control tensors
  fp32, the rest fp16; default 65,536, the reference's), under every scheme, ``int8ref`` included:
  ``int8,small=4096`` is the reference rule with a lower threshold. Non-float tensors are always
  kept; under a low-bit scheme so are tensors that are not 2-D, up to 65,536 elements (past it
  they take the reference's per-tensor int8);
* ``keep=fp16`` stores every kept float tensor as fp16, control tensors included (R22, R35, R44
  and PR #1090 do; the reference keeps control tensors in fp32, ``keep=ref``, the default);
* a rule whose pattern is a glob (not a role, not ``*``) applies to the tensors it names whatever
  their size: ``*.attn_gate_w=int8:max`` quantizes R44's 96-element gates, ``smear.gate=fp16``
  stores a control tensor as fp16; a float scheme there stores the tensor in that dtype whatever
  its shape;
* a bare scheme (``int6``) means ``*=int6``; tensors no rule matches get ``int8ref``.

The policy ``int8`` (or ``int8ref``) is the reference export exactly.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.quant.int8 import (  # noqa: I001
    checked_state_items,
    quantize_state_dict,
    KEEP_FLOAT_MAX_NUMEL,
    KIND_INTN,
    KIND_PASSTHROUGH,
    QuantEntry,
    QuantizedState,
    _keep_float,
    keep_float_fp32_patterns,
    quantize_tensor,
)
from pgolf.quant.lowbit import FAMILY_FLOAT, FAMILY_INT, FAMILY_REF, Scheme, fits, parse_scheme, quantize_weight

ROLES = ("embed", "head", "attn", "mlp", "other")


def tensor_role(name: str) -> str:
    """The role of a state-dict tensor, from its name."""
    if name.startswith("tok_emb") or ".tok_emb" in name or "embed" in name:
        return "embed"
    if "lm_head" in name:
        return "head"
    if ".attn." in name or name.startswith("attn."):
        return "attn"
    if ".mlp." in name or name.startswith("mlp."):
        return "mlp"
    return "other"


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether a policy pattern (``*``, a role, or a glob on the name) matches tensor ``name``."""
    return pattern == "*" or pattern == tensor_role(name) or (pattern not in ROLES and fnmatch.fnmatchcase(name, pattern))


@dataclass(frozen=True)
class Policy:
    """Ordered ``(pattern, scheme)`` rules plus the keep-float size threshold."""

    rules: tuple[tuple[str, Scheme], ...]
    small_numel: int = KEEP_FLOAT_MAX_NUMEL
    keep_fp16: bool = False  # ``keep=fp16``: kept float tensors are fp16, control tensors too

    def rule_for(self, name: str) -> tuple[Scheme, bool]:
        """The scheme for ``name``, and whether a glob rule named it (then its size does not matter)."""
        role = tensor_role(name)
        for pattern, scheme in self.rules:
            if pattern == "*" or pattern == role:
                return scheme, False
            if pattern not in ROLES and fnmatch.fnmatchcase(name, pattern):
                return scheme, True
        return Scheme(FAMILY_REF), False

    def scheme_for(self, name: str) -> Scheme:
        return self.rule_for(name)[0]

    def __str__(self) -> str:
        parts = [f"{p}={s}" for p, s in self.rules]
        if self.small_numel != KEEP_FLOAT_MAX_NUMEL:
            parts.append(f"small={self.small_numel}")
        if self.keep_fp16:
            parts.append("keep=fp16")
        return ",".join(parts)

    @property
    def is_reference(self) -> bool:
        return (self.small_numel == KEEP_FLOAT_MAX_NUMEL and not self.keep_fp16
                and all(s.family == FAMILY_REF for _, s in self.rules))


def parse_policy(text: str) -> Policy:
    """The Policy spelled ``text``; PgolfError naming the bad rule otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise PgolfError("quant policy is empty")
    rules: list[tuple[str, Scheme]] = []
    small, keep_fp16 = KEEP_FLOAT_MAX_NUMEL, False
    for raw in text.split(","):
        rule = raw.strip()
        if not rule:
            continue
        pattern, sep, scheme_text = rule.partition("=")
        if not sep:
            pattern, scheme_text = "*", rule
        pattern = pattern.strip()
        if not pattern:
            raise PgolfError(f"quant policy rule {rule!r}: empty pattern")
        if pattern == "small":
            try:
                small = int(scheme_text)
            except ValueError:
                raise PgolfError(f"quant policy rule {rule!r}: small= needs an element count") from None
            if small < 0:
                raise PgolfError(f"quant policy rule {rule!r}: small= must be >= 0")
            continue
        if pattern == "keep":
            if scheme_text.strip() not in ("fp16", "ref"):
                raise PgolfError(f"quant policy rule {rule!r}: keep= takes fp16 or ref")
            keep_fp16 = scheme_text.strip() == "fp16"
            continue
        rules.append((pattern, parse_scheme(scheme_text)))
    return Policy(tuple(rules), small, keep_fp16)


def quantize_with_scheme(
    name: str, tensor: Tensor, scheme: Scheme, small_numel: int, fp32_patterns: tuple[str, ...],
    hessian_diag: Tensor | None = None, named: bool = False,
) -> QuantEntry:
    """One tensor's entry under ``scheme`` (small, non-float and non-2-D tensors: reference rule;
    ``named``: a glob rule chose ``scheme``, which then applies to small tensors too)."""
    t = tensor.detach().to("cpu").contiguous()
    if scheme.family == FAMILY_REF:
        return quantize_tensor(name, t, fp32_patterns, 0 if named else small_numel)
    if not t.is_floating_point():
        return QuantEntry(name, KIND_PASSTHROUGH, t.clone(), None, t.dtype)
    if named and scheme.family == FAMILY_FLOAT:
        return QuantEntry(name, KIND_PASSTHROUGH, t.to(scheme.float_dtype).contiguous(), None, t.dtype)
    if t.numel() <= small_numel and not named:
        return _keep_float(name, t, fp32_patterns)
    if t.ndim != 2:
        if t.numel() > KEEP_FLOAT_MAX_NUMEL and scheme.family == FAMILY_INT:
            # A large non-matrix tensor: the reference's per-tensor int8 is the only fitting layout.
            return quantize_tensor(name, t, fp32_patterns, small_numel)
        return _keep_float(name, t, fp32_patterns)
    if scheme.family == FAMILY_FLOAT:
        return QuantEntry(name, KIND_PASSTHROUGH, t.to(scheme.float_dtype).contiguous(), None, t.dtype)
    if not fits(scheme, tuple(t.shape)):
        # The group does not divide the columns: one scale per row at the same width instead.
        scheme = Scheme(FAMILY_INT, scheme.bits, 0, scheme.clip, scheme.k)
    codes, scale = quantize_weight(t, scheme, hessian_diag)
    return QuantEntry(name, KIND_INTN, codes, scale, t.dtype, scheme.bits, scheme.group_size)


def quantized_count(q: QuantizedState) -> int:
    """How many tensors of ``q`` are stored as integer codes (the rest are kept as they were)."""
    return sum(e.kind != KIND_PASSTHROUGH for e in q)


def nothing_quantized_warning(tensors: int, policy: str | None = None) -> str:
    """The warning for a quantized state whose ``tensors`` are all kept as they were (a model whose
    tensors are all at or under the policy's ``small=`` size): its round trip is the float score."""
    named = f"quant policy {policy!r}" if policy else "the quant policy"
    return (f"warning: {named} quantizes none of the {tensors} tensors (each is kept as it was: at or under the "
            f"policy's small= size, {KEEP_FLOAT_MAX_NUMEL:,} elements unless set, or not a float matrix), so the round "
            "trip scores the float weights; a lower small= quantizes them")


def _gptq_entry(entry: QuantEntry, tensor: Tensor, hessian: Tensor, scheme: Scheme) -> QuantEntry:
    from pgolf.quant.gptq import gptq_quantize

    # The RTN entry already fixed the layout (a group that does not divide became per row).
    scheme = Scheme(FAMILY_INT, entry.bits, entry.group_size, scheme.clip, scheme.k)
    codes, scale = gptq_quantize(tensor.detach().cpu(), hessian.cpu(), scheme)
    return QuantEntry(entry.name, KIND_INTN, codes, scale, entry.restore_dtype, entry.bits, entry.group_size)


def quantize_state_dict_policy(
    state_dict: Mapping[str, Tensor],
    policy: Policy | str,
    hessians: Mapping[str, Tensor] | None = None,
    gptq: bool = False,
) -> QuantizedState:
    """Quantize a state dict by ``policy``; ``hessians`` (name -> input Hessian) feed ``hsd`` clips
    and, with ``gptq``, GPTQ rounding of every intN tensor that has one (pgolf.quant.gptq)."""
    if policy == "int8":  # the reference rule for every tensor, spelled as a literal so a bundle can fold it
        return quantize_state_dict(state_dict)
    rules = parse_policy(policy) if isinstance(policy, str) else policy
    fp32_patterns = () if rules.keep_fp16 else keep_float_fp32_patterns()
    entries = []
    for name, tensor in checked_state_items(state_dict):
        h = hessians.get(name) if hessians else None
        diag = torch.diagonal(h).float() if h is not None else None
        scheme, named = rules.rule_for(name)
        entry = quantize_with_scheme(name, tensor, scheme, rules.small_numel, fp32_patterns, diag, named)
        if gptq and h is not None and entry.kind == KIND_INTN:
            entry = _gptq_entry(entry, tensor, h, rules.scheme_for(name))
        entries.append(entry)
    return QuantizedState(tuple(entries))


def quantize_for_export(
    state_dict: Mapping[str, Tensor], q, hessians: Mapping[str, Tensor] | None = None,
    *, policy: str | None = None, gptq: bool | None = None, lqer: bool | None = None,
) -> QuantizedState:
    """The export a QuantConfig ``q`` asks for (what ``pgolf train`` writes): its policy, GPTQ-rounded
    with ``hessians`` under ``USE_GPTQ``, then LQER corrections under ``LQER_ENABLED``
    (``policy``/``gptq``/``lqer`` override those fields)."""
    gptq = q.gptq_enabled if gptq is None else gptq
    if gptq and not hessians:
        raise PgolfError("GPTQ is on but no calibration Hessians were collected")
    quantized = quantize_state_dict_policy(state_dict, q.scheme if policy is None else policy, hessians, gptq=gptq)
    if q.lqer_enabled if lqer is None else lqer:
        from pgolf.quant.lqer import add_lqer

        quantized = add_lqer(quantized, state_dict, q.lqer_rank, q.lqer_top_k, q.lqer_factor_bits, q.lqer_asym_enabled,
                             q.lqer_asym_group)
    return quantized
