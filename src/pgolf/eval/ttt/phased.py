"""Phased TTT: per-document LoRA over documents in stream order, with global SGD pauses.

Documents are processed in stream order in batches of ``TTT_BATCH_SIZE``. The first
``PHASED_TTT_PREFIX_DOCS`` documents are split into ``PHASED_TTT_NUM_PHASES`` phases; when a
phase's last document is fully scored, LoRA pauses and the base model gets ``GLOBAL_TTT_EPOCHS``
of full-parameter SGD on every document scored so far (all of them: batches never straddle a
phase boundary), in chunks of ``GLOBAL_TTT_CHUNK_TOKENS`` with a cosine LR over chunks. Later
documents are then adapted from the updated base model. The ledger hands the SGD those tokens
only because they are scored. Stream order, never length order: a document scored after a pause
then depends only on documents before it in the stream (R44 sorts by length, so its pauses train on
later documents too).

Under torch.distributed the document batches between two pauses are dealt to the ranks in turn;
at a pause the ranks share what they scored and run the global SGD data-parallel (:mod:`.sgd`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pgolf.config import EvalConfig
from pgolf.eval.ledger import ScoreLedger
from pgolf.eval.sliding import LedgerResult, ledger_result
from pgolf.eval.evaluate import rank_and_world
from pgolf.eval.ttt.lora import adapt_documents
from pgolf.eval.ttt.sgd import cosine_lr, sgd_epochs
from pgolf.eval.windows import segments
from pgolf.tokenizer.luts import TorchByteTable


def phase_ends(n_docs: int, prefix_docs: int, phases: int) -> list[int]:
    """Document counts after which global SGD runs (strictly increasing, below ``n_docs``).

    Fixed by the configuration alone: were they spread over ``min(prefix_docs, n_docs)`` (as R44
    does), a short stream's later documents would move the pauses, and with them the scores of the
    documents before. A pause after the last document would change no score, so it is left out.
    """
    ends = sorted({math.ceil(prefix_docs * (i + 1) / phases) for i in range(phases)})
    return [e for e in ends if 0 < e < n_docs]


def batches_within_phases(n_docs: int, batch_size: int, ends: list[int]) -> list[tuple[int, int]]:
    """Document index ranges of at most ``batch_size`` that never straddle a phase end."""
    cuts = sorted({0, n_docs, *ends})
    out = []
    for lo, hi in zip(cuts, cuts[1:]):
        out += [(i, min(i + batch_size, hi)) for i in range(lo, hi, batch_size)]
    return out


def global_sgd(model: nn.Module, ledger: ScoreLedger, scored_to: int, s: EvalConfig, seq_len: int, device) -> None:
    """Full-parameter SGD on targets ``[0, scored_to)`` (every one of them already scored)."""
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=s.global_ttt_lr, momentum=s.global_ttt_momentum)
    starts = list(range(0, scored_to, s.global_ttt_chunk_tokens))
    for _ in range(s.global_ttt_epochs):
        for c, start in enumerate(starts):
            span = ledger.training_tokens(start, min(start + s.global_ttt_chunk_tokens, scored_to))
            sgd_epochs(model, optimizer, [span], seq_len, s.global_ttt_batch_seqs, 1,
                       cosine_lr(s.global_ttt_lr, c, len(starts)), s.global_ttt_grad_clip, device)
    for p in model.parameters():
        p.requires_grad_(False)


def evaluate_phased_ttt(
    model: nn.Module, tokens: np.ndarray, table: TorchByteTable, s: EvalConfig, seq_len: int, bos_id: int, device, seed: int
) -> LedgerResult:
    ledger = ScoreLedger(tokens, table, device)
    docs = segments(tokens, bos_id)
    ends = phase_ends(len(docs), s.phased_ttt_prefix_docs, s.phased_ttt_num_phases)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    rank, world = rank_and_world()
    for index, (lo, hi) in enumerate(batches_within_phases(len(docs), s.ttt_batch_size, ends)):
        if index % world == rank:
            adapt_documents(model, ledger, docs[lo:hi], s, device, seed)
        if hi in ends:
            ledger.merge_scored(0, docs[hi - 1][1])
            global_sgd(model, ledger, docs[hi - 1][1], s, seq_len, device)
    ledger.merge_scored()
    return ledger_result(ledger)
