"""Attention kernels: FlashAttention 3 when it is installed and usable, PyTorch SDPA otherwise.

:func:`causal_attention` is the one entry point the model calls. It takes and returns the model's
layout, ``q [B, H, T, D]`` and ``k, v [B, Hkv, T, D]`` (GQA when ``Hkv < H``); FA3 wants
``[B, T, H, D]``, so the conversion happens here and nowhere else.

* ``sdpa``: ``F.scaled_dot_product_attention(is_causal=True)``, exactly the reference's call (on
  CUDA PyTorch dispatches to its flash / cuDNN / efficient kernels, on CPU to its CPU kernels).
* ``fa3``: ``flash_attn_interface.flash_attn_func`` (Hopper only). It computes in bf16 (fp16 inputs
  stay fp16), as SDPA does under the training's bf16 autocast.

Document isolation: pass :class:`Segments` (built by :func:`segments_from_bos` from BOS positions,
or in fixed shapes for compiled models by :func:`padded_segments_from_bos`) and every token attends
only to earlier tokens of its own document. With ``max_doc_len`` (R44's packed training rows,
pgolf.data.packed_loader) a document is also cut every ``max_doc_len`` tokens from its start, the
part of a row before its first BOS counting as a document that starts at the row start
(:func:`segment_starts`, R44's ``_build_cu_seqlens``). FA3 runs ``flash_attn_varlen_func`` on the flattened
batch; SDPA gets a block-diagonal causal mask, which rules out its flash kernel and materialises
``T x T`` scores per head: correct, but slow and memory-hungry at long sequence lengths. The model
asks :func:`document_attention_inputs` for whichever of the two the active backend uses.

The backend is chosen once per process by :func:`select_backend` (``train.attn_backend``:
``auto``, ``fa3`` or ``sdpa``), before ``torch.compile`` traces the model: compiled graphs guard on
the choice. When nothing selected one, the first eager call selects ``auto`` for its device; a
call traced by ``torch.compile`` before any selection uses SDPA (the reference's behaviour).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.runtime import TELEMETRY

BACKENDS = ("auto", "fa3", "sdpa")

_active: str | None = None  # "fa3" or "sdpa" once selected
_noticed = False


@dataclass(frozen=True)
class Segments:
    """Documents of a ``[batch, seq_len]`` batch, as FA3's varlen kernels want them.

    ``cu_seqlens`` (int32) holds the start of every document in the flattened ``batch * seq_len``
    stream, then the total length; every row start is a boundary, so no document spans two rows.
    ``doc_ids`` ([batch, seq_len], int64) numbers the documents; SDPA builds its mask from it.
    """

    cu_seqlens: Tensor
    max_seqlen: int
    doc_ids: Tensor

    @property
    def num_docs(self) -> int:
        return int(self.cu_seqlens.numel() - 1)


def segment_starts(input_ids: Tensor, bos_id: int, max_doc_len: int = 0) -> Tensor:
    """[B, T] bool: where an attention segment starts. At every ``bos_id`` and every row start, and
    with ``max_doc_len`` also every ``max_doc_len`` tokens after each of those; no host sync."""
    starts = input_ids == bos_id
    starts[:, 0] = True
    if max_doc_len:
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        doc_start = torch.cummax(torch.where(starts, pos, 0), dim=1).values  # the start of each token's document
        starts = (pos - doc_start) % max_doc_len == 0
    return starts


def segments_from_bos(input_ids: Tensor, bos_id: int, max_doc_len: int = 0) -> Segments:
    """Cut every row of ``input_ids`` [B, T] before each ``bos_id`` token (and at the row start;
    with ``max_doc_len``, see :func:`segment_starts`).

    Reads ``max_seqlen`` back to the host (FA3 wants a Python int): build segments with the batch,
    outside compiled code.
    """
    if input_ids.ndim != 2:
        raise PgolfError(f"segments_from_bos: input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
    batch, seq_len = input_ids.shape
    flat = segment_starts(input_ids, bos_id, max_doc_len).reshape(-1)
    positions = torch.nonzero(flat).flatten()
    total = torch.tensor([batch * seq_len], device=input_ids.device, dtype=positions.dtype)
    cu_seqlens = torch.cat([positions, total]).to(torch.int32)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
    doc_ids = (torch.cumsum(flat.to(torch.int64), 0) - 1).view(batch, seq_len)
    return Segments(cu_seqlens, max_seqlen, doc_ids)


def padded_segments_from_bos(input_ids: Tensor, bos_id: int, max_doc_len: int = 0) -> Segments:
    """The documents of :func:`segments_from_bos` in fixed shapes, for compiled models.

    ``cu_seqlens`` always has ``batch * seq_len + 1`` entries: the document starts, then the total
    repeated (trailing zero-length documents, which the varlen kernels skip; R36's loader pads its
    ``cu_seqlens`` with the total the same way, to a multiple of 64). ``max_seqlen`` is ``seq_len``,
    an upper bound, since every row start is a boundary (``max_doc_len`` when that is shorter: no
    segment is longer, as R44 passes TRAIN_SEQ_LEN). No host sync and no data-dependent shape, so it
    traces under ``torch.compile(fullgraph=True, dynamic=False)`` and never recompiles.
    """
    if input_ids.ndim != 2:
        raise PgolfError(f"padded_segments_from_bos: input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
    batch, seq_len = input_ids.shape
    total = batch * seq_len
    flat = segment_starts(input_ids, bos_id, max_doc_len).reshape(-1)
    positions = torch.nonzero_static(flat, size=total, fill_value=total).flatten()
    cu_seqlens = torch.cat([positions, positions.new_full((1,), total)]).to(torch.int32)
    doc_ids = (torch.cumsum(flat.to(torch.int64), 0) - 1).view(batch, seq_len)
    return Segments(cu_seqlens, min(seq_len, max_doc_len) if max_doc_len else seq_len, doc_ids)


def document_attention_inputs(input_ids: Tensor, bos_id: int, max_doc_len: int = 0) -> tuple[Tensor | None, Segments | None]:
    """What document-isolated attention needs on the active backend: ``(mask, None)`` for SDPA (the
    block-diagonal causal mask of :func:`document_causal_mask`), ``(None, segments)`` for FA3 varlen."""
    if _resolved_backend(input_ids.device) == "fa3":
        return None, padded_segments_from_bos(input_ids, bos_id, max_doc_len)
    return document_causal_mask(doc_ids_from_bos(input_ids, bos_id, max_doc_len)), None


def fa3_unavailable_reason(device: torch.device) -> str | None:
    """Why FA3 cannot run on ``device``, or None when it can."""
    if device.type != "cuda":
        return f"the device is {device.type}, and FlashAttention 3 runs on CUDA only"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"FlashAttention 3 needs a Hopper GPU (sm90), this one is sm{major}{minor}"
    return fa3_module_problem()


FA3_FUNCTIONS = ("flash_attn_func", "flash_attn_varlen_func")


def fa3_module_problem() -> str | None:
    """Why ``flash_attn_interface`` cannot serve as FA3 here (not importable, or lacking one of the
    functions pgolf calls), or None. A module that imports is not enough: a test's or benchmark's
    stand-in left in ``sys.modules``, or an older interface, would otherwise fail at the first forward."""
    try:
        module = importlib.import_module("flash_attn_interface")
    except ImportError as exc:
        return f"flash_attn_interface is not importable ({exc}); install FlashAttention 3 from its hopper/ folder"
    missing = [name for name in FA3_FUNCTIONS if not callable(getattr(module, name, None))]
    return f"flash_attn_interface lacks {', '.join(missing)}" if missing else None


def select_backend(requested: str, device: torch.device | str) -> str:
    """Resolve ``train.attn_backend`` for ``device``, make it the active kernel and return its name."""
    global _active
    device = torch.device(device)
    if requested not in BACKENDS:
        raise PgolfError(f"PGOLF_ATTN_BACKEND={requested!r}: expected one of {', '.join(BACKENDS)}")
    reason = None if requested == "sdpa" else fa3_unavailable_reason(device)
    if requested == "fa3" and reason:
        raise PgolfError(f"PGOLF_ATTN_BACKEND=fa3 but FlashAttention 3 cannot run: {reason}")
    if TELEMETRY and requested == "auto" and reason and device.type == "cuda":  # advice, not a fact the run needs
        _notice_fallback(reason)
    _active = "sdpa" if requested == "sdpa" or reason else "fa3"
    return _active


def active_backend() -> str | None:
    return _active


def reset_backend() -> None:
    """Forget the selection (tests; a process that changes device)."""
    global _active
    _active = None


def _notice_fallback(reason: str) -> None:
    # Once per process: a GPU run without FA3 is slower, and the user should know why and by how much in kind.
    global _noticed
    if _noticed:
        return
    _noticed = True
    print(
        f"pgolf: notice: attention runs on PyTorch SDPA, not FlashAttention 3, because {reason}. "
        "SDPA's flash kernel is slower than FA3 on Hopper, and document-isolated attention on SDPA uses a "
        "dense block-diagonal mask (full T x T scores, no flash kernel). Set PGOLF_ATTN_BACKEND=sdpa to "
        "silence this, or =fa3 to make its absence an error.",
        file=sys.stderr,
    )


def causal_attention(q: Tensor, k: Tensor, v: Tensor, segments: Segments | None = None) -> Tensor:
    """Causal attention, within documents when ``segments`` is given. q [B,H,T,D], k/v [B,Hkv,T,D] -> [B,H,T,D]."""
    if _resolved_backend(q.device) == "fa3":
        return _fa3(q, k, v, segments)
    if segments is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
    return _sdpa_documents(q, k, v, segments)


def _resolved_backend(device: torch.device) -> str:
    if _active is not None:
        return _active
    return "sdpa" if torch.compiler.is_compiling() else select_backend("auto", device)


def doc_ids_from_bos(input_ids: Tensor, bos_id: int, max_doc_len: int = 0) -> Tensor:
    """[B, T] document index per token (a BOS starts a new one; with ``max_doc_len`` every cut of
    :func:`segment_starts` does); no host sync, so it compiles."""
    if max_doc_len:
        return torch.cumsum(segment_starts(input_ids, bos_id, max_doc_len).to(torch.int32), dim=1)
    return torch.cumsum((input_ids == bos_id).to(torch.int32), dim=1)


def document_causal_mask(doc_ids: Tensor) -> Tensor:
    """[B, 1, T, T] bool: query i may see key j iff j <= i and both lie in the same document."""
    seq_len = doc_ids.size(1)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same_doc & causal)[:, None]


def _sdpa_documents(q: Tensor, k: Tensor, v: Tensor, segments: Segments) -> Tensor:
    groups = q.size(1) // k.size(1)
    if groups > 1:  # masked kernels other than math lack GQA support: repeat the kv heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=document_causal_mask(segments.doc_ids))


def _fa3_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


def _first(result):
    # FA3 releases differ: some return (out, softmax_lse), newer ones the output alone.
    return result[0] if isinstance(result, tuple) else result


def _fa3(q: Tensor, k: Tensor, v: Tensor, segments: Segments | None) -> Tensor:
    from flash_attn_interface import flash_attn_func, flash_attn_varlen_func

    batch, heads, seq_len, head_dim = q.shape
    dtype = _fa3_dtype(q.dtype)
    q_, k_, v_ = (t.transpose(1, 2).to(dtype) for t in (q, k, v))  # [B, T, H, D]
    if segments is None:
        out = _first(flash_attn_func(q_, k_, v_, causal=True))
    else:
        flat = [t.reshape(batch * seq_len, t.size(2), head_dim) for t in (q_, k_, v_)]
        cu, longest = segments.cu_seqlens, segments.max_seqlen
        out = _first(flash_attn_varlen_func(
            *flat, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest, max_seqlen_k=longest, causal=True
        ))
        out = out.view(batch, seq_len, heads, head_dim)
    return out.transpose(1, 2).to(q.dtype)
