"""The per-token byte table that val_bpb is counted with: the only byte-counting code in pgolf.

For every token id the challenge's ``build_sentencepiece_luts`` derives three facts:

* ``is_boundary``: control, unknown and unused ids (BOS among them); they contribute 0 bytes;
* ``base_bytes``: 1 for a byte-fallback token (``<0xNN>`` stands for exactly one byte, not for the
  three bytes of U+FFFD), else the UTF-8 length of the piece without its leading ``▁``;
* ``has_leading_space``: the piece starts with ``▁``.

A target token then counts ``base_bytes[tgt] + (has_leading_space[tgt] and not is_boundary[prev])``
bytes: the ``▁`` is a real space byte except right after a boundary token, where SentencePiece
(with ``add_dummy_prefix=False``) never emits one. :func:`count_target_bytes` is the single place
this rule is applied; evaluation and the byte audit both call it.

A val set whose text was transformed before tokenizing (CaseOps) is scored on the original text's
bytes instead: its table carries ``stream_bytes``, the per-token byte sidecar
(:mod:`pgolf.data.sidecar`), and :func:`count_target_bytes` then charges each target its sidecar
value, by stream position, never the lookup rule (which would charge each case operator, a
private-use character, 3 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

SPACE_MARK = "\u2581"


@dataclass(frozen=True)
class ByteTable:
    base_bytes: np.ndarray  # int16 [table_size]
    has_leading_space: np.ndarray  # bool [table_size]
    is_boundary: np.ndarray  # bool [table_size]

    @property
    def size(self) -> int:
        return int(self.base_bytes.shape[0])

    def to_torch(self, device: torch.device | str = "cpu") -> TorchByteTable:
        return TorchByteTable(
            torch.as_tensor(self.base_bytes.astype(np.int32), device=device),
            torch.as_tensor(self.has_leading_space, device=device),
            torch.as_tensor(self.is_boundary, device=device),
        )


@dataclass(frozen=True)
class TorchByteTable:
    base_bytes: torch.Tensor
    has_leading_space: torch.Tensor
    is_boundary: torch.Tensor
    # int32 per token of one val stream (its byte sidecar); set, it replaces the rule above
    stream_bytes: torch.Tensor | None = None

    def with_stream_bytes(self, stream_bytes: torch.Tensor) -> TorchByteTable:
        return replace(self, stream_bytes=stream_bytes.to(device=self.base_bytes.device, dtype=torch.int32))


def build_byte_table(sp, vocab_size: int | None = None) -> ByteTable:
    """Build the table from a SentencePieceProcessor; ids beyond the tokenizer's vocab are boundaries."""
    sp_vocab = int(sp.vocab_size())
    size = max(sp_vocab, vocab_size or 0)
    base = np.zeros(size, dtype=np.int16)
    lead = np.zeros(size, dtype=np.bool_)
    boundary = np.ones(size, dtype=np.bool_)
    for tid in range(sp_vocab):
        if sp.is_control(tid) or sp.is_unknown(tid) or sp.is_unused(tid):
            continue
        boundary[tid] = False
        if sp.is_byte(tid):
            base[tid] = 1
            continue
        piece = sp.id_to_piece(tid)
        if piece.startswith(SPACE_MARK):
            lead[tid] = True
            piece = piece[1:]
        base[tid] = len(piece.encode("utf-8"))
    return ByteTable(base, lead, boundary)


def count_target_bytes(
    prev_ids: torch.Tensor, tgt_ids: torch.Tensor, table: TorchByteTable, tgt_pos: torch.Tensor | None = None
) -> torch.Tensor:
    """Bytes charged to each target token given the token before it (same shape as ``tgt_ids``, int32).

    ``tgt_pos``: each target token's position in the val stream; with a byte sidecar the bytes are
    read there (a caller that cannot say where its targets are is refused, never given the rule).
    """
    if table.stream_bytes is not None:
        if tgt_pos is None:
            raise ValueError("this val stream is scored on its byte sidecar: pass each target's stream position")
        return table.stream_bytes[tgt_pos.long()]
    prev_ids = prev_ids.long()
    tgt_ids = tgt_ids.long()
    lead = table.has_leading_space[tgt_ids] & ~table.is_boundary[prev_ids]
    return table.base_bytes[tgt_ids] + lead.to(torch.int32)
