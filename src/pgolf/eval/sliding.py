"""Sliding-window and document-isolated evaluation, batched, scored through the ledger.

Windows come from :func:`pgolf.eval.windows.plan` (every target exactly once, the final partial
window included). Only each window's scored targets reach :meth:`ScoreLedger.record`, and through
it :class:`pgolf.eval.bpb.BpbAccumulator`. Under torch.distributed :func:`evaluate_sliding` splits
the windows over the ranks (``pgolf eval`` itself runs in one process).

Why it is fast (:func:`evaluate_windows`, for any model with ``hidden`` and ``head``, i.e. GPT):

* one shape: every batch is ``[rows, seq_len]``, windows right-padded with token 0 (the model is
  causal, so padding after a position never changes that position's output) and, where ``hidden``
  is compiled, the last batch padded with empty rows, so that it compiles once (eager, the last
  batch has only its own rows: an empty row costs a full window);
* the output head, softcap and cross-entropy run only on the scored positions (``stride`` of
  ``seq_len`` per window), not on every position as a full forward would;
* inputs are gathered on the device from one copy of the stream and losses stay there until
  the end: no host round trip per batch.

:func:`score_windows` is the plain path (a full forward, then pick): the LoRA TTT, whose hooks
need the full forward, uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pgolf.eval.bpb import Score
from pgolf.eval.evaluate import autocast_for, rank_and_world, rank_window_range
from pgolf.eval.ledger import ScoreLedger
from pgolf.eval.windows import Window, plan
from pgolf.tokenizer.luts import TorchByteTable


@dataclass
class LedgerResult:
    score: Score
    token_losses: np.ndarray  # float32 nats per target, stream order
    score_step: np.ndarray  # int64: the scoring step that scored each target (evaluation order)


def ledger_result(ledger: ScoreLedger, span: tuple[int, int] | None = None) -> LedgerResult:
    score = ledger.result(span)
    return LedgerResult(score, ledger.losses.copy(), ledger.step_of.copy())


def stack_windows(ledger: ScoreLedger, windows: list[Window], device: torch.device,
                  length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets [batch, ``length`` or the longest window], right-padded with token 0."""
    length = length or max(w.length for w in windows)
    x = torch.zeros(len(windows), length, dtype=torch.int64)
    y = torch.zeros(len(windows), length, dtype=torch.int64)
    for row, w in enumerate(windows):
        x[row, : w.length] = ledger.inputs(w.start, w.end)
        y[row, : w.length] = ledger.targets(w.start, w.end)
    return x.to(device), y.to(device)


def scored_positions(windows: list[Window], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, column, target index) of every scored target in a stacked batch."""
    rows, cols, idx = [], [], []
    for row, w in enumerate(windows):
        t = torch.arange(w.score_from, w.end)
        rows.append(torch.full_like(t, row))
        cols.append(t - w.start)
        idx.append(t)
    return torch.cat(rows).to(device), torch.cat(cols).to(device), torch.cat(idx)


def score_windows(model: torch.nn.Module, ledger: ScoreLedger, windows: list[Window], device: torch.device,
                  length: int | None = None) -> torch.Tensor:
    """One scoring step: forward the stacked windows (padded to ``length``, default the longest),
    record their scored targets; returns those losses."""
    x, y = stack_windows(ledger, windows, device, length)
    with autocast_for(device):
        losses = model(x, y, reduction="none")
    rows, cols, idx = scored_positions(windows, device)
    picked = losses.float()[rows, cols]
    ledger.record(idx, picked)
    return picked


def batches(windows: list[Window], batch_windows: int):
    for i in range(0, len(windows), batch_windows):
        yield windows[i : i + batch_windows]


@dataclass(frozen=True)
class BatchLayout:
    """Where a batch's windows sit in the stream and which of their positions are scored (host arrays)."""

    starts: np.ndarray  # [rows] first input of each window (0 for padding rows)
    lengths: np.ndarray  # [rows] inputs of each window (0 for padding rows)
    positions: np.ndarray  # scored positions, flattened: row * seq_len + column
    targets: np.ndarray  # the stream target each scored position predicts


def batch_layout(windows: list[Window], rows: int, seq_len: int) -> BatchLayout:
    """``windows`` as ``rows`` rows of ``seq_len`` (padding rows empty), with every scored position."""
    if len(windows) > rows:
        raise ValueError(f"{len(windows)} windows do not fit in {rows} rows")
    start = np.array([w.start for w in windows], dtype=np.int64)
    end = np.array([w.end for w in windows], dtype=np.int64)
    first = np.array([w.score_from for w in windows], dtype=np.int64)
    if (end - start > seq_len).any():
        raise ValueError(f"a window is longer than seq_len {seq_len}")
    counts = end - first
    row = np.repeat(np.arange(len(windows)), counts)
    offset = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    targets = first[row] + offset
    pad = np.zeros(rows - len(windows), dtype=np.int64)
    return BatchLayout(np.concatenate([start, pad]), np.concatenate([end - start, pad]),
                       row * seq_len + targets - start[row], targets)


def _on(device: torch.device, array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).to(device)


def score_layout(model: torch.nn.Module, hidden: Callable[[torch.Tensor], torch.Tensor], ledger: ScoreLedger,
                 layout: BatchLayout, seq_len: int, device: torch.device) -> torch.Tensor:
    """One scoring step: ``hidden`` over the batch, the head and loss at scored positions only; returns those losses."""
    x, y = ledger.window_tensors(_on(device, layout.starts), _on(device, layout.lengths), seq_len)
    positions, targets = _on(device, layout.positions), _on(device, layout.targets)
    with autocast_for(device):
        h = hidden(x)
        logits = model.head(h.reshape(-1, h.size(-1)).index_select(0, positions))
        losses = F.cross_entropy(logits.float(), y.reshape(-1).index_select(0, positions), reduction="none")
    ledger.record(layout.targets, losses, device_idx=targets)
    return losses


def compiled_hidden(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.hidden`` compiled for one static shape (sliding batches all have one)."""
    return torch.compile(model.hidden, dynamic=False, fullgraph=True)


def sliding_rows(batch_tokens: int, seq_len: int) -> int:
    """Windows per sliding batch."""
    return max(batch_tokens // seq_len, 1)


@torch.no_grad()
def prime_sliding_graph(hidden: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module, batch_tokens: int,
                        seq_len: int, vocab_size: int, device: torch.device) -> None:
    """Compile ``hidden``'s one sliding-batch graph on throwaway tokens (no validation token is read).

    Twice: the graph is recompiled once after the first call fills the RoPE cache.
    """
    generator = torch.Generator().manual_seed(0)  # private: the global RNGs are not advanced
    x = torch.randint(0, vocab_size, (sliding_rows(batch_tokens, seq_len), seq_len), generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(2):
            with autocast_for(device):
                hidden(x)
    finally:
        model.train(was_training)


@torch.no_grad()  # not inference_mode: TTT trains the same model (and its caches) afterwards
def evaluate_windows(
    model: torch.nn.Module,
    ledger: ScoreLedger,
    windows: list[Window],
    seq_len: int,
    batch_tokens: int,
    device: torch.device,
    progress=None,
    hidden: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Score ``windows`` into ``ledger`` in batches of ``batch_tokens // seq_len`` windows.

    ``hidden`` replaces ``model.hidden`` (e.g. :func:`compiled_hidden`); every batch then has
    ``batch_tokens // seq_len`` rows, however few the windows, so its one graph serves any stream
    (:func:`prime_sliding_graph` compiles it beforehand). Models without ``hidden``/``head`` take
    the plain path (:func:`score_windows`).
    """
    if not windows:
        return
    fast = hasattr(model, "hidden") and hasattr(model, "head")
    rows = sliding_rows(batch_tokens, seq_len)
    was_training = model.training
    model.eval()
    try:
        for group in batches(windows, rows):
            if fast:
                # a compiled ``hidden`` keeps its one shape; eager, padding rows would only be computed for nothing
                shape_rows = rows if hidden is not None else len(group)
                score_layout(model, hidden or model.hidden, ledger, batch_layout(group, shape_rows, seq_len), seq_len, device)
            else:
                score_windows(model, ledger, group, device)
            if progress is not None:
                progress.update(sum(w.scored for w in group))
    finally:
        model.train(was_training)


def evaluate_sliding(
    model: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    stride: int,
    table: TorchByteTable,
    batch_tokens: int = 65_536,
    device: torch.device | str = "cpu",
    bos_id: int | None = None,
    progress=None,
    hidden: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LedgerResult:
    """Score every target of ``tokens`` once with sliding windows (``bos_id``: document-isolated).

    ``stride == seq_len`` without ``bos_id`` reproduces the standard non-overlapping evaluation
    (and, unlike it, also scores the final partial window). ``hidden``: the model's hidden states
    through e.g. :func:`compiled_hidden` (one graph for the whole evaluation).

    Under torch.distributed each rank scores a contiguous share of the windows and the sums are
    all-reduced: every rank returns the whole stream's score, and token losses (and scoring
    steps) for its own targets only (NaN and -1 elsewhere).
    """
    device = torch.device(device)
    windows = plan(tokens, seq_len, stride, bos_id)
    span = None
    rank, world = rank_and_world()
    if world > 1:
        first, last = rank_window_range(len(windows), rank, world)
        windows = windows[first:last]
        span = (windows[0].score_from, windows[-1].end) if windows else (0, 0)
    ledger = ScoreLedger(tokens, table, device)
    evaluate_windows(model, ledger, windows, seq_len, batch_tokens, device, progress, hidden)
    return ledger_result(ledger, span)
