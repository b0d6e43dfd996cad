"""Standard evaluation, exactly as the challenge's ``eval_val``.

The validation stream is cut into non-overlapping windows of ``seq_len`` tokens; the tail that does
not fill a window is not scored here, as in the challenge's ``eval_val`` (the stream itself keeps it:
:func:`val_stream`; sliding windows and TTT score it). Every window
predicts its ``seq_len`` next tokens; windows are split evenly over ranks and batched. Scores go
through :class:`pgolf.eval.bpb.BpbAccumulator`, the only place nats and bytes are summed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pgolf.errors import PgolfError
from pgolf.eval.bpb import BpbAccumulator, Score
from pgolf.tokenizer.luts import TorchByteTable


def trim_to_windows(tokens: np.ndarray, seq_len: int, max_tokens: int = 0) -> np.ndarray:
    """Keep a whole number of windows plus the final target token (optionally only the first max_tokens)."""
    if max_tokens > 0:
        tokens = tokens[: max_tokens + 1]
    usable = ((tokens.shape[0] - 1) // seq_len) * seq_len
    if usable <= 0:
        raise PgolfError(f"validation data has {tokens.shape[0]} tokens, too few for one window of {seq_len}")
    return tokens[: usable + 1]


def val_stream(tokens: np.ndarray, seq_len: int, max_tokens: int = 0) -> np.ndarray:
    """The stream every evaluation scores: all targets (or the first ``max_tokens``), the tail past the
    last whole window kept. Standard windows drop that tail themselves (:func:`evaluate`); sliding
    windows and TTT score every target, the tail included, as the records' sliding evaluations do."""
    if max_tokens > 0:
        tokens = tokens[: max_tokens + 1]
    if tokens.shape[0] - 1 < seq_len:
        raise PgolfError(f"validation data has {tokens.shape[0]} tokens, too few for one window of {seq_len}")
    return tokens


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA as the reference; plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class EvalResult:
    score: Score
    token_losses: np.ndarray | None  # float32 nats per target, in stream order (single process only)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_window_range(total_windows: int, rank: int, world_size: int) -> tuple[int, int]:
    return (total_windows * rank) // world_size, (total_windows * (rank + 1)) // world_size


def batch_rows(total_windows: int, batch_tokens: int, seq_len: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The distinct batch sizes (windows) :func:`evaluate` runs on this rank: the full batch and the ragged tail."""
    batch_windows = max(batch_tokens // (world_size * seq_len), 1)
    first, last = rank_window_range(total_windows, rank, world_size)
    mine = last - first
    sizes = {batch_windows} if mine >= batch_windows else set()
    if mine % batch_windows:
        sizes.add(mine % batch_windows)
    return sorted(sizes)


@torch.no_grad()
def prime_eval_graphs(model: torch.nn.Module, rows: list[int], seq_len: int, vocab_size: int, device: torch.device) -> None:
    """Call ``model`` as :func:`evaluate` does, twice per batch size, on throwaway tokens.

    A compiled model then has its evaluation graphs before any clock starts (the second call:
    the graph is recompiled once after the first fills the RoPE cache). No validation token is read.
    """
    generator = torch.Generator().manual_seed(0)  # private: the global RNGs are not advanced
    was_training = model.training
    model.eval()
    try:
        for n in rows:
            # two tensors: the graph guards on whether inputs and targets are the same object
            x, y = torch.randint(0, vocab_size, (2, n, seq_len), generator=generator).to(device).unbind(0)
            for _ in range(2):
                with autocast_for(device):
                    model(x, y, reduction="none")
    finally:
        model.train(was_training)


# no_grad, not inference_mode: modules cache tensors (RoPE tables) that training reuses afterwards,
# and inference tensors cannot be saved for backward.
@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    table: TorchByteTable,
    batch_tokens: int = 524_288,
    device: torch.device | str = "cpu",
    keep_token_losses: bool = False,
    progress=None,
) -> EvalResult:
    """Score ``tokens`` with non-overlapping windows (a tail shorter than ``seq_len`` is not scored).

    ``batch_tokens`` is the global batch; each rank scores ``batch_tokens // world_size`` tokens
    at a time (the reference additionally divides by its grad-accum factor; batching does not
    change the result beyond float summation order).
    """
    device = torch.device(device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = rank_and_world()
    if keep_token_losses and distributed:
        raise PgolfError("--token-losses is supported in single-process evaluation only")
    batch_windows = max(batch_tokens // (world_size * seq_len), 1)
    total_windows = (tokens.shape[0] - 1) // seq_len
    first, last = rank_window_range(total_windows, rank, world_size)
    acc = BpbAccumulator(table, device)
    kept: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(first, last, batch_windows):
            end = min(start + batch_windows, last)
            chunk = torch.from_numpy(tokens[start * seq_len : end * seq_len + 1].astype(np.int64)).to(device)
            x = chunk[:-1].reshape(-1, seq_len)
            y = chunk[1:].reshape(-1, seq_len)
            with autocast_for(device):
                losses = model(x, y, reduction="none")
            y_pos = torch.arange(start * seq_len + 1, end * seq_len + 1, device=device).view_as(y)
            acc.add(losses, x, y, y_pos)
            if keep_token_losses:
                kept.append(losses.float().reshape(-1).cpu().numpy())
            if progress is not None:
                progress.update(int(y.numel()))
    finally:
        model.train(was_training)
    token_losses = np.concatenate(kept) if keep_token_losses and kept else None
    return EvalResult(acc.result(), token_losses)
