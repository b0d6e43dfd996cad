"""The flip check: perturb the stream at one position and prove nothing before it could see it.

The legality rule: the loss of target ``t`` (the prediction of ``tokens[t + 1]``) may depend only on
the artifact and ``tokens[..t]``. For an evaluator (standard, sliding or any TTT kind) the check
scores the stream once, then again per perturbation at a position ``p`` (``tokens[:p]`` untouched,
the stream's length kept); every target ``t < p - 1`` must keep a bit-identical loss. If one
moved, its prediction depended on a later token: a causality leak (C1), training on a token
before scoring it (C3), or a later document shaping how an earlier one is scored (its batch, its
adapter's initialisation, a phase boundary).

The perturbations (:data:`KINDS`) change a token and, all but the first, the document structure:

* ``substitute``: a non-BOS token becomes another non-BOS token (documents unchanged);
* ``insert_bos``: a non-BOS token becomes BOS (its document ends there, a new one starts);
* ``delete_bos``: a BOS becomes a non-BOS token (two documents merge);
* ``insert_token`` / ``delete_token``: a token is inserted (the last one dropped) or deleted (a
  token appended): every later document starts elsewhere;
* ``rewrite_tail``: every token from ``p`` on is replaced by random non-BOS tokens (later BOS
  vanish: the number of documents and their lengths change).

Structure changes change batch shapes, so bit-identity asks that a document's numbers do not depend
on which documents share its batch: on CPU, where the check runs, they do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pgolf.eval.sliding import LedgerResult

Evaluator = Callable[[np.ndarray], LedgerResult]


KINDS = ("substitute", "insert_bos", "delete_bos", "insert_token", "delete_token", "rewrite_tail")


@dataclass(frozen=True)
class Perturbation:
    kind: str
    position: int  # the first changed token; tokens[:position] stay as they are
    stream: np.ndarray = field(repr=False, compare=False)  # the perturbed stream, same length


@dataclass
class FlipOutcome:
    kind: str
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


def _other_token(rng: np.random.Generator, vocab_size: int, bos_id: int | None, avoid: int | None = None) -> int:
    while True:
        new = int(rng.integers(0, vocab_size))
        if new != bos_id and new != avoid:
            return new


def _non_bos_tokens(rng: np.random.Generator, count: int, vocab_size: int, bos_id: int | None) -> np.ndarray:
    return np.array([_other_token(rng, vocab_size, bos_id) for _ in range(count)], dtype=np.int64)


def perturb(tokens: np.ndarray, kind: str, p: int, vocab_size: int, bos_id: int | None,
            rng: np.random.Generator) -> np.ndarray:
    """``tokens`` with perturbation ``kind`` at ``p`` (a copy, of the same length and dtype)."""
    out = tokens.astype(np.int64)
    if kind == "substitute" or kind == "delete_bos":
        out[p] = _other_token(rng, vocab_size, bos_id, avoid=int(tokens[p]))
    elif kind == "insert_bos":
        out[p] = bos_id
    elif kind == "insert_token":
        out[p + 1 :] = out[p:-1].copy()
        out[p] = _other_token(rng, vocab_size, bos_id, avoid=int(tokens[p]))
    elif kind == "delete_token":
        out[p:-1] = out[p + 1 :].copy()
        out[-1] = _other_token(rng, vocab_size, bos_id)
    elif kind == "rewrite_tail":
        out[p:] = _non_bos_tokens(rng, out.shape[0] - p, vocab_size, bos_id)
        if out[p] == tokens[p]:
            out[p] = _other_token(rng, vocab_size, bos_id, avoid=int(tokens[p]))
    else:
        raise ValueError(f"unknown perturbation {kind!r} (expected one of {', '.join(KINDS)})")
    return out.astype(tokens.dtype)


def candidate_positions(tokens: np.ndarray, kind: str, bos_id: int | None) -> np.ndarray:
    """Where ``kind`` can act, preferring the stream's second half (more targets to protect) and,
    for the kinds that shift or rewrite the tail, places before a later BOS (which then moves or
    vanishes)."""
    n = tokens.shape[0] - 1
    late = np.arange(max(2, n // 2), n + 1)
    bos = np.flatnonzero(tokens == bos_id) if bos_id is not None else np.zeros(0, dtype=np.int64)
    if kind == "delete_bos":
        anywhere = bos[bos >= 2]
        return anywhere[anywhere >= late[0]] if (anywhere >= late[0]).any() else anywhere
    if kind in ("substitute", "insert_bos"):
        return np.setdiff1d(late, bos)
    if kind == "delete_token":
        late = late[(late < n) & (tokens[late] != tokens[np.minimum(late + 1, n)])]
    before_a_bos = late[late < bos.max()] if bos.size else late[:0]
    return before_a_bos if before_a_bos.size else late


def pick_perturbations(tokens: np.ndarray, count: int, vocab_size: int, bos_id: int | None, seed: int,
                       kinds: tuple[str, ...] = KINDS) -> list[Perturbation]:
    """``count`` perturbations, the kinds taken in turn (a kind with nowhere to act is skipped:
    ``delete_bos`` on a stream without a later BOS), each at a random position."""
    rng = np.random.default_rng(seed)
    usable = [k for k in kinds if (k not in ("insert_bos", "delete_bos") or bos_id is not None)
              and candidate_positions(tokens, k, bos_id).size]
    out = []
    for i in range(count if usable else 0):
        kind = usable[i % len(usable)]
        p = int(rng.choice(candidate_positions(tokens, kind, bos_id)))
        out.append(Perturbation(kind, p, perturb(tokens, kind, p, vocab_size, bos_id, rng)))
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.view(np.uint32) == b.view(np.uint32)


def compare(base: LedgerResult, perturbed: LedgerResult, kind: str, position: int) -> FlipOutcome:
    """Every target before ``position - 1`` must keep its loss, bit for bit."""
    protected = np.arange(base.token_losses.shape[0]) < position - 1
    moved = protected & ~same_bits(base.token_losses, perturbed.token_losses)
    changed = np.flatnonzero(moved)
    target = slice(position - 1, position)  # empty where the evaluator scores no such target
    flipped_moved = not same_bits(base.token_losses[target], perturbed.token_losses[target]).all()
    return FlipOutcome(kind, position, int(protected.sum()), int(changed.size),
                       int(changed[0]) if changed.size else None, flipped_moved)


def flip_check(evaluate: Evaluator, tokens: np.ndarray, mode: str, perturbations: list[Perturbation]) -> FlipReport:
    """Run ``evaluate`` on the stream and on each perturbed stream; compare per-token losses."""
    base = evaluate(tokens)
    report = FlipReport(mode)
    for pert in perturbations:
        report.outcomes.append(compare(base, evaluate(pert.stream), pert.kind, pert.position))
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
