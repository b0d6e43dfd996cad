"""Sliding-window and document-isolated evaluation, batched, scored through the ledger.

Windows come from :func:`pgolf.eval.windows.plan` (every target exactly once, the final partial
window included). A batch stacks up to ``batch_tokens // seq_len`` windows, right-padded to the
longest: the model is causal, so padding after a position never changes that position's output.
Only each window's scored targets reach :meth:`ScoreLedger.record`, and through it
:class:`pgolf.eval.bpb.BpbAccumulator`. Single process (``pgolf eval`` runs in one process).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pgolf.errors import PgolfError
from pgolf.eval.bpb import Score
from pgolf.eval.evaluate import autocast_for
from pgolf.eval.ledger import ScoreLedger
from pgolf.eval.windows import Window, plan
from pgolf.tokenizer.luts import TorchByteTable


@dataclass
class LedgerResult:
    score: Score
    token_losses: np.ndarray  # float32 nats per target, stream order
    score_step: np.ndarray  # int64: the scoring step that scored each target (evaluation order)


def ledger_result(ledger: ScoreLedger) -> LedgerResult:
    score = ledger.result()
    return LedgerResult(score, ledger.losses.copy(), ledger.step_of.copy())


def stack_windows(ledger: ScoreLedger, windows: list[Window], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets [batch, longest window], right-padded with token 0."""
    longest = max(w.length for w in windows)
    x = torch.zeros(len(windows), longest, dtype=torch.int64)
    y = torch.zeros(len(windows), longest, dtype=torch.int64)
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


def score_windows(model: torch.nn.Module, ledger: ScoreLedger, windows: list[Window], device: torch.device) -> torch.Tensor:
    """One scoring step: forward the stacked windows, record their scored targets; returns those losses."""
    x, y = stack_windows(ledger, windows, device)
    with autocast_for(device):
        losses = model(x, y, reduction="none")
    rows, cols, idx = scored_positions(windows, device)
    picked = losses.float()[rows, cols]
    ledger.record(idx, picked)
    return picked


def batches(windows: list[Window], batch_windows: int):
    for i in range(0, len(windows), batch_windows):
        yield windows[i : i + batch_windows]


@torch.no_grad()  # not inference_mode: TTT trains the same model (and its caches) afterwards
def evaluate_windows(
    model: torch.nn.Module,
    ledger: ScoreLedger,
    windows: list[Window],
    seq_len: int,
    batch_tokens: int,
    device: torch.device,
    progress=None,
) -> None:
    """Score ``windows`` into ``ledger`` in batches of ``batch_tokens // seq_len`` windows."""
    was_training = model.training
    model.eval()
    try:
        for group in batches(windows, max(batch_tokens // seq_len, 1)):
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
) -> LedgerResult:
    """Score every target of ``tokens`` once with sliding windows (``bos_id``: document-isolated).

    ``stride == seq_len`` without ``bos_id`` reproduces the standard non-overlapping evaluation
    (and, unlike it, also scores the final partial window).
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise PgolfError("sliding-window evaluation runs in a single process (use one rank)")
    device = torch.device(device)
    ledger = ScoreLedger(tokens, table, device)
    evaluate_windows(model, ledger, plan(tokens, seq_len, stride, bos_id), seq_len, batch_tokens, device, progress)
    return ledger_result(ledger)
