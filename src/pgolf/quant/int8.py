"""The reference int8 export scheme (``int8_clean_per_row_v1``), with the reference's exact numerics.

This module owns how a state dict becomes int8 values + scales and back:

* non-float tensors pass through unchanged;
* float tensors with at most 65,536 elements are kept as floats: in fp32 when the name contains a
  keep-float pattern (the control tensors: gains, mixes, skip weights), otherwise fp32/bf16 are
  stored as fp16 and the original dtype is restored on load; other float dtypes are stored as is;
* 2-D float tensors get one int8 scale per row: each row is clipped at the 99.99984th percentile of
  its absolute values, ``scale = clip / 127`` (at least 1/127), the scale is stored as fp16;
* every other float tensor gets a single fp32 scale.

Quantized values and scales are bit-identical to the reference ``train_gpt.py``
(``quantize_state_dict_int8``), and :func:`dequantize` reproduces ``dequantize_state_dict_int8``.
:func:`to_reference_object` / :func:`from_reference_object` translate to and from the reference's
own dict layout (the object pickled inside its ``final_model.int8.ptz``); they do no file I/O.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.model.params import DEFAULT_CONTROL_PATTERNS, control_tensor_patterns

if TYPE_CHECKING:  # imported lazily: artifacts without LQER never load pgolf.quant.lqer
    from pgolf.quant.lqer import LowRank

QUANT_FORMAT = "int8_clean_per_row_v1"

KIND_PER_ROW = "int8_per_row"
KIND_PER_TENSOR = "int8_per_tensor"
KIND_PASSTHROUGH = "passthrough"
# Low-bit codes from pgolf.quant.lowbit: symmetric codes in [-(2^(bits-1)-1), 2^(bits-1)-1] kept in
# int8, with one fp16 scale per row (group_size 0) or per group of ``group_size`` columns.
KIND_INTN = "intn"
KINDS = (KIND_PER_ROW, KIND_PER_TENSOR, KIND_PASSTHROUGH, KIND_INTN)
INTN_BITS = range(2, 9)

KEEP_FLOAT_MAX_NUMEL = 65_536
KEEP_FLOAT_STORE_DTYPE = torch.float16
PER_ROW_SCALE_DTYPE = torch.float16
CLIP_PERCENTILE = 99.99984
CLIP_Q = CLIP_PERCENTILE / 100.0

# torch.quantile refuses a reduced dimension longer than 2**24 ("input tensor is too large"), where
# the reference crashes. Past it we use a sort-based twin that matches torch.quantile bit for bit.
_TORCH_QUANTILE_MAX_LEN = 1 << 24


def keep_float_fp32_patterns() -> tuple[str, ...]:
    """Name substrings kept in fp32 (env ``INT8_KEEP_FLOAT_FP32_NAME_PATTERNS``, default: control)."""
    raw = os.environ.get("INT8_KEEP_FLOAT_FP32_NAME_PATTERNS", ",".join(control_tensor_patterns()))
    return tuple(p for p in raw.split(",") if p)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the spelling the reference records."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: object) -> torch.dtype | None:
    """The torch dtype called ``name`` (``"float16"``), or None when it names no dtype."""
    if not isinstance(name, str) or not name.isidentifier():
        return None
    found = getattr(torch, name, None)
    return found if isinstance(found, torch.dtype) else None


@dataclass(frozen=True, eq=False)
class QuantEntry:
    """One tensor of a quantized state.

    ``values`` holds the int8 codes for the int8 kinds and the stored tensor for ``passthrough``.
    ``scale`` is the fp16 per-row scale vector (``int8_per_row``), the fp32 scalar
    (``int8_per_tensor``) or None (``passthrough``). ``restore_dtype`` is the dtype
    :func:`dequantize` returns: the original dtype, except that control tensors kept in fp32 come
    back as fp32 and fp16/other float passthroughs come back as stored, as in the reference.
    ``bits`` and ``group_size`` only matter for ``intn`` (see KIND_INTN), as does ``lqer``
    (pgolf.quant.lqer). Construction checks the shapes and dtypes fit together and raises ValueError when not.
    """

    name: str
    kind: str
    values: Tensor
    scale: Tensor | None
    restore_dtype: torch.dtype
    bits: int = 8
    group_size: int = 0
    lqer: LowRank | None = None  # intn only: a low-rank correction added on dequantization

    def __post_init__(self) -> None:
        problem = _entry_problem(self)
        if problem is not None:
            raise ValueError(f"tensor {self.name!r}: {problem}")


def _entry_problem(e: QuantEntry) -> str | None:
    if not isinstance(e.name, str) or not e.name:
        return "name must be a non-empty string"
    if e.kind not in KINDS:
        return f"unknown kind {e.kind!r}"
    if not isinstance(e.values, Tensor) or not isinstance(e.restore_dtype, torch.dtype):
        return "values must be a tensor and restore_dtype a torch dtype"
    if e.kind == KIND_PASSTHROUGH:
        return _passthrough_problem(e)
    if e.lqer is not None and e.kind != KIND_INTN:
        return "only an intn tensor can carry an LQER correction"
    if e.kind == KIND_INTN:
        from pgolf.quant.lqer import lowrank_problem

        return _intn_problem(e) or (lowrank_problem(e.lqer, tuple(e.values.shape)) if e.lqer is not None else None)
    return _int8_problem(e)


def _passthrough_problem(e: QuantEntry) -> str | None:
    if e.scale is not None:
        return "a passthrough tensor has no scale"
    # The reference only ever re-casts floats (fp16 storage back to fp32/bf16).
    same = e.restore_dtype == e.values.dtype
    if not same and not (e.values.is_floating_point() and e.restore_dtype.is_floating_point):
        return f"cannot restore {dtype_name(e.values.dtype)} storage as {dtype_name(e.restore_dtype)}"
    return None


def _int8_problem(e: QuantEntry) -> str | None:
    if e.values.dtype != torch.int8:
        return f"quantized values are {dtype_name(e.values.dtype)}, expected int8"
    if not isinstance(e.scale, Tensor) or not e.scale.is_floating_point():
        return "an int8 tensor needs a floating-point scale tensor"
    if not e.restore_dtype.is_floating_point:
        return f"cannot dequantize to non-float dtype {dtype_name(e.restore_dtype)}"
    if e.kind == KIND_PER_TENSOR:
        return None if e.scale.numel() == 1 else f"per-tensor scale has {e.scale.numel()} elements, expected 1"
    if e.values.ndim < 1:
        return "per-row quantized values must have at least one dimension"
    rows = e.values.shape[0]
    if e.scale.numel() != rows:
        return f"per-row scale has {e.scale.numel()} elements for {rows} rows"
    return None


def intn_scale_shape(shape: tuple[int, ...], group_size: int) -> tuple[int, ...] | None:
    """The scale shape of an ``intn`` tensor of ``shape``, or None when no layout fits."""
    if len(shape) != 2:
        return None
    rows, cols = shape
    if group_size == 0:
        return (rows,)
    if group_size < 0 or cols % group_size:
        return None
    return (rows, cols // group_size)


def _intn_problem(e: QuantEntry) -> str | None:
    if not isinstance(e.bits, int) or e.bits not in INTN_BITS:
        return f"bit width {e.bits!r} is not in 2..8"
    if e.values.dtype != torch.int8:
        return f"quantized values are {dtype_name(e.values.dtype)}, expected int8"
    if not isinstance(e.scale, Tensor) or e.scale.dtype != torch.float16:
        return "an intn tensor needs a float16 scale tensor"
    if not e.restore_dtype.is_floating_point:
        return f"cannot dequantize to non-float dtype {dtype_name(e.restore_dtype)}"
    expected = intn_scale_shape(tuple(e.values.shape), e.group_size) if isinstance(e.group_size, int) else None
    if expected is None:
        return f"group size {e.group_size!r} does not fit a tensor of shape {tuple(e.values.shape)}"
    if tuple(e.scale.shape) != expected:
        return f"scale shape {tuple(e.scale.shape)} does not match {expected}"
    qmax = (1 << (e.bits - 1)) - 1
    if e.values.numel() and int(e.values.abs().max()) > qmax:
        return f"codes exceed the int{e.bits} range +-{qmax}"
    return None


@dataclass(frozen=True, eq=False)
class QuantizedState:
    """A quantized state dict: its entries in the original state-dict order, names unique."""

    entries: tuple[QuantEntry, ...]

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"tensor {dup!r} appears twice")

    def __iter__(self) -> Iterator[QuantEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def entry(self, name: str) -> QuantEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Quantize
# ---------------------------------------------------------------------------------------------


def quantile_linear(x: Tensor, q: float) -> Tensor:
    """``torch.quantile(x, q, dim=-1)`` (linear interpolation), also past its 2**24 length limit.

    Bit-identical to torch.quantile where that works: the rank is computed in the input dtype
    (fp32), the neighbours are found by a full sort and mixed with ``torch.lerp``; rows holding a
    NaN give NaN as torch's does.
    """
    if x.shape[-1] <= _TORCH_QUANTILE_MAX_LEN:
        return torch.quantile(x, q, dim=-1)
    ordered = x.sort(dim=-1).values
    ranks = torch.tensor(q, dtype=x.dtype) * (x.shape[-1] - 1)
    below = ranks.long()
    above = ranks.ceil().long()
    result = torch.lerp(ordered[..., below], ordered[..., above], ranks - below)
    return torch.where(x.isnan().any(dim=-1), torch.full_like(result, float("nan")), result)


def _quantize_per_row(t32: Tensor) -> tuple[Tensor, Tensor]:
    clip = quantile_linear(t32.abs(), CLIP_Q)
    clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
    # The codes use the fp32 scale; only the stored copy is rounded to fp16 (as the reference).
    scale = (clip / 127.0).clamp_min(1.0 / 127.0)
    q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8).contiguous()
    return q, scale.to(dtype=PER_ROW_SCALE_DTYPE).contiguous()


def _quantize_per_tensor(t32: Tensor) -> tuple[Tensor, Tensor]:
    # The clip goes through a Python float and the scale is computed in double, then stored as a
    # fp32 scalar: each step matters for bit-identical codes.
    clip = float(quantile_linear(t32.abs().flatten(), CLIP_Q).item())
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip, clip) / scale), -127, 127).to(torch.int8).contiguous()
    return q, scale


def _keep_float(name: str, t: Tensor, fp32_patterns: tuple[str, ...]) -> QuantEntry:
    if any(p in name for p in fp32_patterns):
        # Control tensors stay fp32 and come back as fp32 whatever they were (reference rule).
        kept = t.float().clone()
        return QuantEntry(name, KIND_PASSTHROUGH, kept, None, torch.float32)
    if t.dtype in (torch.float32, torch.bfloat16):
        stored = t.to(dtype=KEEP_FLOAT_STORE_DTYPE).contiguous()
        return QuantEntry(name, KIND_PASSTHROUGH, stored, None, t.dtype)
    return QuantEntry(name, KIND_PASSTHROUGH, t.clone(), None, t.dtype)


def quantize_tensor(
    name: str, tensor: Tensor, fp32_patterns: tuple[str, ...] | None = None, small_numel: int = KEEP_FLOAT_MAX_NUMEL
) -> QuantEntry:
    """Quantize one tensor by the reference rules (patterns default to the environment's); float
    tensors of at most ``small_numel`` elements are kept as floats (the reference: 65,536)."""
    if fp32_patterns is None:
        fp32_patterns = keep_float_fp32_patterns()
    t = tensor.detach().to("cpu").contiguous()
    if not t.is_floating_point():
        # Cloned so later in-place training updates cannot change what gets exported.
        return QuantEntry(name, KIND_PASSTHROUGH, t.clone(), None, t.dtype)
    if t.numel() <= small_numel:
        return _keep_float(name, t, fp32_patterns)
    t32 = t.float()
    if t32.ndim == 2:
        q, s = _quantize_per_row(t32)
        return QuantEntry(name, KIND_PER_ROW, q, s, t.dtype)
    q, s = _quantize_per_tensor(t32)
    return QuantEntry(name, KIND_PER_TENSOR, q, s, t.dtype)


def checked_state_items(state_dict: Mapping[str, Tensor]):
    """The (name, tensor) pairs of a state dict, refusing a key or value a quantizer cannot name or read."""
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not name:
            raise PgolfError(f"state dict key {name!r} is not a non-empty string")
        if not isinstance(tensor, Tensor):
            raise PgolfError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        yield name, tensor


def quantize_state_dict(state_dict: Mapping[str, Tensor]) -> QuantizedState:
    """Quantize a whole state dict; keep-float patterns are read from the environment now."""
    fp32_patterns = keep_float_fp32_patterns()
    return QuantizedState(tuple(quantize_tensor(name, tensor, fp32_patterns) for name, tensor in checked_state_items(state_dict)))


def payload_bytes(q: QuantizedState) -> int:
    """Bytes of all stored tensors (codes + scales + passthroughs): the reference's payload stat."""
    total = 0
    for e in q:
        total += e.values.numel() * e.values.element_size()
        if e.scale is not None:
            total += e.scale.numel() * e.scale.element_size()
        if e.lqer is not None:
            total += sum(t.numel() * t.element_size() for t in (e.lqer.a_codes, e.lqer.a_scale, e.lqer.b_codes, e.lqer.b_scale))
    return total


# ---------------------------------------------------------------------------------------------
# Dequantize
# ---------------------------------------------------------------------------------------------


def dequantize_entry(e: QuantEntry) -> Tensor:
    """The float tensor an entry stands for, computed exactly as the reference does."""
    if e.kind == KIND_PER_ROW:
        assert e.scale is not None
        s = e.scale.to(dtype=torch.float32).reshape(e.values.shape[0], *([1] * (e.values.ndim - 1)))
        return (e.values.float() * s).to(dtype=e.restore_dtype).contiguous()
    if e.kind == KIND_PER_TENSOR:
        assert e.scale is not None
        return (e.values.float() * float(e.scale.item())).to(dtype=e.restore_dtype).contiguous()
    if e.kind == KIND_INTN:
        assert e.scale is not None
        w = intn_dequantize(e.values, e.scale, e.group_size)
        if e.lqer is not None:
            from pgolf.quant.lqer import lowrank_dequantize

            w = w + lowrank_dequantize(e.lqer)
        return w.to(dtype=e.restore_dtype).contiguous()
    # A copy, so the caller may train on the result without touching this state.
    return e.values.to(dtype=e.restore_dtype, copy=True).contiguous()


def intn_dequantize(codes: Tensor, scale: Tensor, group_size: int) -> Tensor:
    """fp32 weights from intn codes and their fp16 scales (per row, or per group of columns)."""
    rows, cols = codes.shape
    if group_size == 0:
        return codes.float() * scale.float()[:, None]
    grouped = codes.float().reshape(rows, cols // group_size, group_size) * scale.float()[:, :, None]
    return grouped.reshape(rows, cols)


def dequantize(q: QuantizedState) -> dict[str, Tensor]:
    """The state dict (original order) that ``q`` stands for."""
    return {e.name: dequantize_entry(e) for e in q}


# ---------------------------------------------------------------------------------------------
# The reference's own dict layout
# ---------------------------------------------------------------------------------------------


def to_reference_object(q: QuantizedState) -> dict[str, object]:
    """``q`` in the layout the reference pickles into ``final_model.int8.ptz``."""
    quantized: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    dtypes: dict[str, str] = {}
    passthrough: dict[str, Tensor] = {}
    orig_dtypes: dict[str, str] = {}
    qmeta: dict[str, dict[str, object]] = {}
    for e in q:
        if e.kind == KIND_PASSTHROUGH:
            passthrough[e.name] = e.values
            if e.restore_dtype != e.values.dtype:
                orig_dtypes[e.name] = dtype_name(e.restore_dtype)
            continue
        if e.kind == KIND_INTN:
            raise PgolfError(f"tensor {e.name!r}: int{e.bits} codes have no reference int8 layout")
        assert e.scale is not None
        quantized[e.name] = e.values
        scales[e.name] = e.scale
        dtypes[e.name] = dtype_name(e.restore_dtype)
        if e.kind == KIND_PER_ROW:
            qmeta[e.name] = {"scheme": "per_row", "axis": 0}
    obj: dict[str, object] = {
        "__quant_format__": QUANT_FORMAT,
        "quantized": quantized,
        "scales": scales,
        "dtypes": dtypes,
        "passthrough": passthrough,
    }
    # The reference only writes these keys when they are non-empty.
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj


def _str_dict(obj: Mapping[str, object], key: str, source: str, *, required: bool = True) -> dict:
    value = obj.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise PgolfError(f"{source}: reference object field {key!r} is not a dict keyed by name")
    return value


def _reference_int8_entry(name: str, parts: dict[str, dict], source: str) -> QuantEntry:
    q, s = parts["quantized"][name], parts["scales"].get(name)
    if not isinstance(q, Tensor) or not isinstance(s, Tensor):
        raise PgolfError(f"{source}: quantized tensor {name!r} lacks its values or scale tensor")
    dtype = dtype_from_name(parts["dtypes"].get(name))
    if dtype is None:
        raise PgolfError(f"{source}: quantized tensor {name!r} has no valid original dtype")
    scheme = parts["qmeta"].get(name)
    # Reference rule: per-row when qmeta says so or when the scale is not a scalar.
    per_row = (isinstance(scheme, dict) and scheme.get("scheme") == "per_row") or s.ndim > 0
    kind = KIND_PER_ROW if per_row else KIND_PER_TENSOR
    return QuantEntry(name, kind, q.detach().to("cpu").contiguous(), s.detach().to("cpu").contiguous(), dtype)


def _reference_passthrough_entry(name: str, parts: dict[str, dict], source: str) -> QuantEntry:
    t = parts["passthrough"][name]
    if not isinstance(t, Tensor):
        raise PgolfError(f"{source}: passthrough entry {name!r} is not a tensor")
    t = t.detach().to("cpu").contiguous()
    orig = parts["passthrough_orig_dtypes"].get(name)
    if not isinstance(orig, str):
        # The reference ignores a non-string record and returns the tensor as stored.
        return QuantEntry(name, KIND_PASSTHROUGH, t, None, t.dtype)
    dtype = dtype_from_name(orig)
    if dtype is None:
        raise PgolfError(f"{source}: passthrough tensor {name!r} has unknown original dtype {orig!r}")
    return QuantEntry(name, KIND_PASSTHROUGH, t, None, dtype)


def from_reference_object(obj: object, source: str = "reference object") -> QuantizedState:
    """Validate a reference ``int8_clean_per_row_v1`` dict and turn it into a QuantizedState.

    Entry order is the reference's dequantized order: quantized tensors, then passthroughs.
    Anything malformed raises PgolfError naming ``source``.
    """
    if not isinstance(obj, dict):
        raise PgolfError(f"{source}: expected a dict, found {type(obj).__name__}")
    fmt = obj.get("__quant_format__")
    if fmt != QUANT_FORMAT:
        raise PgolfError(f"{source}: __quant_format__ is {fmt!r}, expected {QUANT_FORMAT!r}")
    parts = {k: _str_dict(obj, k, source) for k in ("quantized", "scales", "dtypes", "passthrough")}
    for k in ("qmeta", "passthrough_orig_dtypes"):
        parts[k] = _str_dict(obj, k, source, required=False)
    both = set(parts["quantized"]) & set(parts["passthrough"])
    if both:
        raise PgolfError(f"{source}: tensor {sorted(both)[0]!r} is both quantized and passthrough")
    try:
        entries = [_reference_int8_entry(n, parts, source) for n in parts["quantized"]]
        entries += [_reference_passthrough_entry(n, parts, source) for n in parts["passthrough"]]
        return QuantizedState(tuple(entries))
    except ValueError as exc:
        raise PgolfError(f"{source}: {exc}") from None


def dequantize_reference_object(obj: object, source: str = "reference object") -> dict[str, Tensor]:
    """The state dict the reference's ``dequantize_state_dict_int8`` would return for ``obj``."""
    return dequantize(from_reference_object(obj, source))
