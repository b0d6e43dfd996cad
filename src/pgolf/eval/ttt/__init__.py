"""Score-first test-time training (TTT): three adapters, one ledger.

Every kind scores through :class:`pgolf.eval.ledger.ScoreLedger` and trains only on what the
ledger hands out, which it refuses for any target not scored yet:

* ``sgd`` (:mod:`.sgd`): chunked full-model SGD. Score a chunk with sliding windows, then train on
  it (first k blocks frozen, several epochs, cosine LR over chunks). The last chunk is never trained on.
* ``lora`` (:mod:`.lora`): per-document LoRA on q/v/head (or R44's q/k/v/o/mlp/logits, per virtual
  layer) through forward hooks, many documents side by side; each chunk of a document is scored,
  then one Adam step; adapters reset per document.
* ``phased`` (:mod:`.phased`): ``lora`` over documents in stream order, pausing at phase boundaries
  to run global full-model SGD on every document scored so far.

TTT runs on a copy of the model; the caller's weights are never changed. No compilation happens
here (evaluation runs eagerly), so no warm-up ever touches validation tokens.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from pgolf.config import EvalConfig
from pgolf.errors import PgolfError
from pgolf.eval.sliding import LedgerResult
from pgolf.tokenizer.luts import TorchByteTable

KINDS = ("sgd", "lora", "phased")


def run_ttt(
    kind: str,
    model: torch.nn.Module,
    tokens: np.ndarray,
    table: TorchByteTable,
    settings: EvalConfig,
    seq_len: int,
    bos_id: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> LedgerResult:
    """Evaluate ``tokens`` with score-first TTT of ``kind`` on a copy of ``model``."""
    device = torch.device(device)
    adapted = copy.deepcopy(model)
    # each kind imported only where it runs: a bundle ships the configured kind's code alone
    if kind == "sgd":
        from pgolf.eval.ttt.sgd import evaluate_sgd_ttt

        return evaluate_sgd_ttt(adapted, tokens, table, settings, seq_len, bos_id, device)
    if kind == "lora":
        from pgolf.eval.ttt.lora import evaluate_lora_ttt

        return evaluate_lora_ttt(adapted, tokens, table, settings, bos_id, device, seed)
    if kind == "phased":
        from pgolf.eval.ttt.phased import evaluate_phased_ttt

        return evaluate_phased_ttt(adapted, tokens, table, settings, seq_len, bos_id, device, seed)
    raise PgolfError(f"unknown TTT kind {kind!r} (expected one of {', '.join(KINDS)})")
