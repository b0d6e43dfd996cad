"""The flip check: perturb one token and prove nothing scored before it could see it changed.

For an evaluator (standard, sliding or any TTT kind) the check scores the stream once, then again
with the token at a random position ``p`` replaced. Target ``t`` predicts ``tokens[t + 1]``, so
targets ``t >= p - 1`` may legitimately change. Every target with ``t < p - 1`` that was scored no
later than the first scoring step that read token ``p`` must keep a bit-identical loss: if it
moved, the evaluator's prediction for it depended on a token it had not yet been charged for (a
causality leak, C1) or on training that saw token ``p`` before scoring it (C3).

Flips never touch BOS and never produce one, so document boundaries (and with them batch shapes)
stay the same between the two runs; bit-identity is then a fair demand on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pgolf.eval.sliding import LedgerResult

Evaluator = Callable[[np.ndarray], LedgerResult]


@dataclass
class FlipOutcome:
    position: int
    protected: int  # targets that had to stay bit-identical
    changed: int  # of those, how many did not
    first_changed: int | None
    flipped_target_moved: bool  # the target that now predicts the new token did change (the flip took effect)

    @property
    def ok(self) -> bool:
        return self.changed == 0


@dataclass
class FlipReport:
    mode: str
    outcomes: list[FlipOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes) and any(o.flipped_target_moved for o in self.outcomes)

    def as_dict(self) -> dict:
        return {"mode": self.mode, "ok": self.ok, "flips": [o.__dict__ | {"ok": o.ok} for o in self.outcomes]}


def pick_flips(tokens: np.ndarray, count: int, vocab_size: int, bos_id: int | None, seed: int) -> list[tuple[int, int]]:
    """(position, replacement) pairs: positions 1..n that hold no BOS, replacements that are not BOS."""
    rng = np.random.default_rng(seed)
    candidates = np.arange(1, tokens.shape[0])
    if bos_id is not None:
        candidates = candidates[tokens[1:] != bos_id]
    positions = np.sort(rng.choice(candidates, size=min(count, candidates.size), replace=False))
    flips = []
    for p in positions.tolist():
        new = int(tokens[p])
        while new == int(tokens[p]) or new == bos_id:
            new = int(rng.integers(0, vocab_size))
        flips.append((p, new))
    return flips


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.view(np.uint32) == b.view(np.uint32)


def compare(base: LedgerResult, flipped: LedgerResult, position: int) -> FlipOutcome:
    t = np.arange(base.token_losses.shape[0])
    first_step_seeing_p = int(base.score_step[position - 1 :].min())
    protected = (t < position - 1) & (base.score_step <= first_step_seeing_p)
    moved = protected & ~same_bits(base.token_losses, flipped.token_losses)
    changed = np.flatnonzero(moved)
    flipped_moved = not bool(same_bits(base.token_losses[position - 1 : position], flipped.token_losses[position - 1 : position])[0])
    return FlipOutcome(position, int(protected.sum()), int(changed.size), int(changed[0]) if changed.size else None, flipped_moved)


def flip_check(evaluate: Evaluator, tokens: np.ndarray, mode: str, flips: list[tuple[int, int]]) -> FlipReport:
    """Run ``evaluate`` on the stream and on one perturbed copy per flip; compare per-token losses."""
    base = evaluate(tokens)
    report = FlipReport(mode)
    for position, new in flips:
        perturbed = tokens.copy()
        perturbed[position] = new
        report.outcomes.append(compare(base, evaluate(perturbed), position))
    return report


MODES = ("standard", "sliding", "sgd", "lora", "phased")


def evaluator_for(mode: str, model, table, settings, seq_len: int, bos_id: int, device="cpu",
                  batch_tokens: int = 65_536, stride: int = 64, seed: int = 0) -> Evaluator:
    """The production evaluator of ``mode`` as a function of the token stream."""
    from pgolf.errors import PgolfError
    from pgolf.eval.evaluate import evaluate
    from pgolf.eval.sliding import evaluate_sliding
    from pgolf.eval.ttt import run_ttt

    bos = bos_id if settings.doc_isolated else None
    if mode == "standard":
        def standard(tokens: np.ndarray) -> LedgerResult:
            result = evaluate(model, tokens, seq_len, table, batch_tokens, device, keep_token_losses=True)
            per_batch = max(batch_tokens // seq_len, 1) * seq_len
            steps = np.arange(result.token_losses.shape[0]) // per_batch
            return LedgerResult(result.score, result.token_losses, steps)
        return standard
    if mode == "sliding":
        return lambda tokens: evaluate_sliding(model, tokens, seq_len, stride, table, batch_tokens, device, bos)
    if mode in ("sgd", "lora", "phased"):
        return lambda tokens: run_ttt(mode, model, tokens, table, settings, seq_len, bos_id, device, seed)
    raise PgolfError(f"unknown flip-check mode {mode!r} (expected one of {', '.join(MODES)})")
