"""val_loss and val_bpb: the one implementation every score in pgolf goes through.

``val_loss`` is the mean cross-entropy in nats over every scored target token (targets that are
BOS included: they cost bits and add no bytes). ``val_bpb`` converts it to bits per UTF-8 byte of
the text those targets encode: ``(val_loss / ln 2) * (tokens / bytes)``. Sums are float64 and,
under torch.distributed, all-reduced, exactly as in the challenge's ``eval_val``. The bytes come
from :func:`pgolf.tokenizer.luts.count_target_bytes`: the tokenizer's byte rule, or, for a val set
with a byte sidecar (CaseOps), the original text's bytes of each target position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pgolf.tokenizer.luts import TorchByteTable, count_target_bytes


def bits_per_byte(val_loss: float, tokens: float, num_bytes: float) -> float:
    """Convert a mean loss in nats per token into bits per byte."""
    if num_bytes <= 0:
        raise ValueError("cannot compute val_bpb over zero bytes")
    return (val_loss / math.log(2.0)) * (tokens / num_bytes)


@dataclass(frozen=True)
class Score:
    val_loss: float
    val_bpb: float
    tokens: int
    bytes: int

    def as_dict(self) -> dict:
        return {"val_loss": self.val_loss, "val_bpb": self.val_bpb, "tokens": self.tokens, "bytes": self.bytes}


class BpbAccumulator:
    """Accumulates summed nats, token and byte counts in float64 over batches (and ranks)."""

    def __init__(self, table: TorchByteTable, device: torch.device | str = "cpu"):
        self.table = table
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.token_count = torch.zeros((), dtype=torch.float64, device=device)
        self.byte_count = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, token_losses: torch.Tensor, prev_ids: torch.Tensor, tgt_ids: torch.Tensor,
            tgt_pos: torch.Tensor | None = None) -> None:
        """Add per-target losses (nats) with the ids before and at each target, and where each target
        token sits in the val stream (needed when the stream has a byte sidecar)."""
        self.loss_sum += token_losses.detach().to(torch.float64).sum()
        self.token_count += float(tgt_ids.numel())
        self.byte_count += count_target_bytes(prev_ids, tgt_ids, self.table, tgt_pos).to(torch.float64).sum()

    def result(self) -> Score:
        sums = torch.stack([self.loss_sum, self.token_count, self.byte_count])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        loss_sum, tokens, nbytes = (float(v) for v in sums.tolist())
        if tokens <= 0:
            raise ValueError("no tokens were scored")
        val_loss = loss_sum / tokens
        return Score(val_loss, bits_per_byte(val_loss, tokens, nbytes), int(tokens), int(nbytes))
