"""The score-first ledger: the one place evaluation and test-time training get tokens from.

Every evaluator scores through :meth:`ScoreLedger.record` and every adapter (test-time training)
gets its training tokens from :meth:`ScoreLedger.training_tokens`, which raises
:class:`ScoreFirstViolation` if any target in the span is not scored yet (rule C3 of issue #1017:
train only on validation tokens already evaluated). Recording a target twice raises too (C4: one
left-to-right pass, no rescoring). Scores accumulate in :class:`pgolf.eval.bpb.BpbAccumulator`.

The ledger also keeps, per target, its loss and the scoring step (one step per ``record`` call),
which is what the flip check (:mod:`pgolf.check.flip`) compares between two runs.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from pgolf.errors import PgolfError
from pgolf.eval.bpb import BpbAccumulator, Score
from pgolf.eval.evaluate import rank_and_world
from pgolf.tokenizer.luts import TorchByteTable


class ScoreFirstViolation(PgolfError):
    """An adapter asked for tokens that were not scored yet, or a target was scored twice."""


class IncompleteScore(PgolfError):
    """A score was asked for while targets were left unscored: it would be the score of a subset.

    Its own class, like :class:`ScoreFirstViolation`, so that a bundle keeps this guard when it
    strips the input checks (:mod:`pgolf.bundle.checks` never touches subclasses of ``PgolfError``).
    """


class ScoreLedger:
    # A progress display's bar while a phase scores through ledgers (:func:`counting_into`, set by the
    # CLI only): every evaluator, each TTT kind included, builds its own ledger deep inside, so
    # recording is the one place to count.
    progress = None

    def __init__(self, tokens: np.ndarray, table: TorchByteTable, device: torch.device | str = "cpu"):
        self._tokens = torch.from_numpy(np.ascontiguousarray(tokens).astype(np.int64))
        self.device = torch.device(device)
        self.n_targets = int(tokens.shape[0]) - 1
        self.scored = np.zeros(self.n_targets, dtype=np.bool_)
        # losses stay on the device until read: recording a batch never waits for the device
        self._losses = torch.full((self.n_targets,), float("nan"), dtype=torch.float32, device=self.device)
        self.step_of = np.full(self.n_targets, -1, dtype=np.int64)
        self.steps = 0
        self.acc = BpbAccumulator(table, device)
        self._device_tokens: torch.Tensor | None = None

    @property
    def losses(self) -> np.ndarray:
        """float32 nats per target (NaN where not scored yet), a host copy."""
        return self._losses.cpu().numpy()

    def _tokens_on_device(self) -> torch.Tensor:
        if self._device_tokens is None:
            self._device_tokens = self._tokens.to(self.device)
        return self._device_tokens

    # -- scoring side ---------------------------------------------------------------------------
    def inputs(self, start: int, end: int) -> torch.Tensor:
        """Input tokens ``[start, end)`` for scoring (causal context: reading it is always legal)."""
        return self._tokens[start:end]

    def targets(self, start: int, end: int) -> torch.Tensor:
        """Target tokens of targets ``[start, end)``; only the scorer may ask for them."""
        return self._tokens[start + 1 : end + 1]

    def window_tensors(self, starts: torch.Tensor, lengths: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets [rows, seq_len] of windows ``[start, start + length)`` on the device, right-padded with 0.

        ``starts`` and ``lengths`` are device tensors; the gather runs on the device (no host copy per batch).
        """
        tokens = self._tokens_on_device()
        column = torch.arange(seq_len, device=tokens.device)
        valid = column[None, :] < lengths[:, None]
        pos = (starts[:, None] + column[None, :]).clamp_(max=self.n_targets - 1)
        zero = torch.zeros((), dtype=tokens.dtype, device=tokens.device)
        return torch.where(valid, tokens[pos], zero), torch.where(valid, tokens[pos + 1], zero)

    def record(self, target_idx: torch.Tensor | np.ndarray, losses: torch.Tensor, device_idx: torch.Tensor | None = None) -> None:
        """Score targets ``target_idx`` (1-D, distinct; host) with per-target losses in nats.

        ``device_idx``: the same indices already on the ledger's device, which spares a copy.
        """
        idx_np = np.asarray(torch.as_tensor(target_idx, dtype=torch.int64).reshape(-1).cpu())
        losses = losses.detach().reshape(-1)
        if idx_np.size != losses.numel():
            raise ValueError(f"{idx_np.size} targets but {losses.numel()} losses")
        if self.scored[idx_np].any() or np.unique(idx_np).size != idx_np.size:
            first = int(idx_np[self.scored[idx_np]][0]) if self.scored[idx_np].any() else int(idx_np[0])
            raise ScoreFirstViolation(f"target {first} scored twice (one left-to-right pass only)")
        self.scored[idx_np] = True
        self.step_of[idx_np] = self.steps
        self.steps += 1
        idx = torch.from_numpy(idx_np).to(self.device) if device_idx is None else device_idx
        losses = losses.to(self.device)
        self._losses[idx] = losses.float()
        tokens = self._tokens_on_device()
        self.acc.add(losses, tokens[idx], tokens[idx + 1], idx + 1)
        if ScoreLedger.progress is not None:
            ScoreLedger.progress.update(idx_np.size)

    def merge_scored(self, start: int = 0, end: int | None = None) -> None:
        """Under torch.distributed, a collective: targets ``[start, end)`` scored on any rank count as
        scored on every rank, so each rank may train on what the others scored. Scores stay where they were made."""
        if rank_and_world()[1] == 1:
            return
        end = self.n_targets if end is None else end
        flags = torch.from_numpy(self.scored[start:end].astype(np.uint8)).to(self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self.scored[start:end] = flags.cpu().numpy().astype(np.bool_)

    # -- adapter side ---------------------------------------------------------------------------
    def check_scored(self, start: int, end: int) -> None:
        span = self.scored[start:end]
        if start < 0 or end > self.n_targets or start >= end:
            raise ScoreFirstViolation(f"training span [{start}, {end}) is outside the stream of {self.n_targets} targets")
        if not span.all():
            first = start + int(np.argmin(span))
            raise ScoreFirstViolation(
                f"adapter asked for targets [{start}, {end}) but target {first} is not scored yet (score before update)"
            )

    def training_tokens(self, start: int, end: int) -> torch.Tensor:
        """Tokens ``[start, end]`` (inputs and targets of targets ``[start, end)``), all already scored."""
        self.check_scored(start, end)
        return self._tokens[start : end + 1].clone()

    # -- result ---------------------------------------------------------------------------------
    def result(self, span: tuple[int, int] | None = None) -> Score:
        """The score; every target must be scored, or under torch.distributed every target of ``span``
        (this rank's share: the sums are all-reduced, so the ranks' shares together are the stream)."""
        a, b = span or (0, self.n_targets)
        missing = int((~self.scored[a:b]).sum())
        if missing:
            first = a + int(np.argmin(self.scored[a:b]))
            raise IncompleteScore(f"evaluation left {missing} of {b - a} targets unscored (first: {first})")
        return self.acc.result()


@contextmanager
def counting_into(bar):
    """While the block runs, every target any ledger records advances ``bar`` (a progress display's;
    one update per scoring step)."""
    ScoreLedger.progress = bar
    try:
        yield
    finally:
        ScoreLedger.progress = None
