"""The evaluation phases a configuration names beyond the standard windows, in the records' order.

``EVAL_STRIDE`` (or ``PGOLF_EVAL_DOC_ISOLATED``) adds a sliding-window phase; ``PGOLF_TTT`` adds a
score-first TTT phase after it. The last phase's score is the final one, the number a record
reports. One implementation for ``pgolf eval`` and for the end of ``pgolf train`` (so also for
bundles): both call :func:`configured_phases` and :func:`run_phase`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from pgolf.config import EvalConfig
from pgolf.errors import PgolfError
from pgolf.eval.sliding import LedgerResult
from pgolf.tokenizer.luts import TorchByteTable

# The names of each phase's log lines at the end of a training run (the records' style).
LOG_NAMES = {"sliding": "final_sliding_window", "ttt": "final_ttt"}
# What a progress display calls each phase (pgolf.progress); its bar counts what the phase's ledgers
# record (pgolf.eval.ledger.counting_into).
PHASE_LABELS = {"sliding": "sliding windows", "ttt": "score-first TTT"}


@dataclass
class PhaseResult:
    name: str  # "sliding" or "ttt"
    result: LedgerResult
    details: dict = field(default_factory=dict)  # stride, doc_isolated, compiled / kind


# One expression each, so that a bundle's specialiser inlines them and folds the phases its config
# leaves off out of the shipped code (pgolf.bundle.trivial).
def sliding_configured(e: EvalConfig) -> bool:
    return e.eval_stride > 0 or e.doc_isolated


def ttt_configured(e: EvalConfig) -> bool:
    return e.ttt != ""


def configured_phases(e: EvalConfig) -> list[str]:
    """The phases ``e`` asks for after the standard windows, in order."""
    return [name for name, wanted in (("sliding", sliding_configured(e)), ("ttt", ttt_configured(e))) if wanted]


def check_stride(e: EvalConfig, seq_len: int) -> None:
    if e.eval_stride > seq_len:
        raise PgolfError(f"EVAL_STRIDE={e.eval_stride}: the stride must not exceed the window length {seq_len}")


def run_phase(
    name: str,
    model: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    table: TorchByteTable,
    e: EvalConfig,
    bos_id: int,
    device: torch.device,
    seed: int = 0,
    batch_tokens: int = 65_536,
    hidden: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PhaseResult:
    """Run phase ``name`` on ``model`` (its weights are never changed: TTT adapts a copy).

    ``hidden``: a compiled ``model.hidden`` for the sliding phase
    (:func:`pgolf.eval.sliding.compiled_hidden`); ``batch_tokens``: this process's sliding batch.
    """
    check_stride(e, seq_len)
    if name == "sliding":
        from pgolf.eval.sliding import evaluate_sliding

        stride = e.eval_stride or seq_len
        r = evaluate_sliding(model, tokens, seq_len, stride, table, batch_tokens, device,
                             bos_id if e.doc_isolated else None, hidden=hidden)
        return PhaseResult(name, r, {"stride": stride, "doc_isolated": e.doc_isolated, "compiled": hidden is not None})
    if name == "ttt":
        from pgolf.eval.ttt import run_ttt

        return PhaseResult(name, run_ttt(e.ttt, model, tokens, table, e, seq_len, bos_id, device, seed), {"kind": e.ttt})
    raise PgolfError(f"unknown evaluation phase {name!r} (expected sliding or ttt)")
