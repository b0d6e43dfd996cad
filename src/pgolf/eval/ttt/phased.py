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

With ``PGOLF_GLOBAL_TTT_PACKED`` the global SGD is R44's (:func:`packed_global_sgd`): per chunk but the
last, its whole sequences of ``seq_len`` (EVAL_SEQ_LEN), ``GLOBAL_TTT_BATCH_SEQS`` of them packed
into one row that the model's document-isolated attention cuts at every BOS and every ``seq_len``
tokens from a document's start (the row start counting as one), the SmearGate reading the token
before any cut but a BOS, as in training on pgolf.data.packed_loader's rows; the epochs loop inside
each chunk. Without it, rows of ``seq_len`` tokens of the stream stacked into a batch
(:func:`pgolf.eval.ttt.sgd.sgd_epochs`).

Under torch.distributed the document batches between two pauses are dealt to the ranks in turn;
at a pause the ranks share what they scored and run the global SGD data-parallel: by default each
batch split over the ranks, the same steps as one process (:mod:`.sgd`); packed, as R44 under
torchrun, each rank packs its own contiguous share of a chunk's sequences and the gradients are
averaged over the ranks, so the steps depend on the number of ranks as R44's do (R44's record ran
on 8). Settings where the ranks would make different numbers of steps (R44 then deadlocks) are
refused before anything is scored.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from pgolf.config import EvalConfig
from pgolf.errors import PgolfError
from pgolf.eval.ledger import ScoreLedger
from pgolf.eval.sliding import LedgerResult, ledger_result
from pgolf.eval.evaluate import autocast_for, rank_and_world
from pgolf.eval.ttt.lora import adapt_documents
from pgolf.eval.ttt.sgd import cosine_lr, sgd_epochs, sum_gradients
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
    """Full-parameter SGD on targets ``[0, scored_to)`` (every one of them already scored; packed,
    R44's share of them: whole sequences, the last chunk left out)."""
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=s.global_ttt_lr, momentum=s.global_ttt_momentum)
    starts = list(range(0, scored_to, s.global_ttt_chunk_tokens))
    if s.global_ttt_packed:
        packed_global_sgd(model, optimizer, ledger, starts, s, seq_len, device)
    else:
        for _ in range(s.global_ttt_epochs):
            for c, start in enumerate(starts):
                span = ledger.training_tokens(start, min(start + s.global_ttt_chunk_tokens, scored_to))
                sgd_epochs(model, optimizer, [span], seq_len, s.global_ttt_batch_seqs, 1,
                           cosine_lr(s.global_ttt_lr, c, len(starts)), s.global_ttt_grad_clip, device)
    for p in model.parameters():
        p.requires_grad_(False)


def packed_rows(chunk_start: int, chunk_tokens: int, seq_len: int, batch_seqs: int, rank: int, world: int) -> list[tuple[int, int]]:
    """Target ranges ``[a, b)`` of this rank's packed rows in a full chunk (R44's
    ``train_val_ttt_global_sgd_distributed``): the rank's contiguous share of the chunk's whole
    sequences, ``batch_seqs`` of them a row; a chunk's tail shorter than a sequence is never trained on."""
    n = chunk_tokens // seq_len
    lo, hi = n * rank // world, n * (rank + 1) // world
    return [(chunk_start + (lo + i) * seq_len, chunk_start + min(lo + i + batch_seqs, hi) * seq_len)
            for i in range(0, hi - lo, batch_seqs)]


def check_packed_ranks(s: EvalConfig, seq_len: int, world: int) -> None:
    """Refuse settings where the ranks would pack different numbers of rows per chunk: their
    gradient averages would not pair up (R44's would deadlock)."""
    counts = {len(packed_rows(0, s.global_ttt_chunk_tokens, seq_len, s.global_ttt_batch_seqs, r, world)) for r in range(world)}
    if len(counts) > 1:
        raise PgolfError(f"PGOLF_GLOBAL_TTT_PACKED on {world} ranks: a chunk's {s.global_ttt_chunk_tokens // seq_len} sequences "
                         f"give the ranks {min(counts)} to {max(counts)} rows of GLOBAL_TTT_BATCH_SEQS={s.global_ttt_batch_seqs}; "
                         "choose GLOBAL_TTT_CHUNK_TOKENS / EVAL_SEQ_LEN and GLOBAL_TTT_BATCH_SEQS that give every rank as many")


@contextmanager
def cut_every(model: nn.Module, seq_len: int):
    """The model's attention cut at every BOS and every ``seq_len`` tokens from a document's start
    (R44's global SGD rows: its EVAL_SEQ_LEN, not the PGOLF_MAX_DOC_LEN it trained with). Config
    validation asks for DOC_ISOLATED_ATTENTION=1 with the packed SGD: a bundle folds that switch.
    The model's config is left alone (replacing it would keep a bundle from folding any of its fields)."""
    model.cut_length = seq_len
    try:
        yield
    finally:
        del model.cut_length


def packed_global_sgd(model: nn.Module, optimizer: torch.optim.Optimizer, ledger: ScoreLedger, starts: list[int],
                      s: EvalConfig, seq_len: int, device) -> None:
    """R44's global SGD over chunks starting at ``starts``: the last chunk is never trained on, each
    other chunk gets its LR (cosine over all the chunks) and then its ``GLOBAL_TTT_EPOCHS``; each step
    is one packed row, its loss the mean over the row's targets."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    rank, world = rank_and_world()
    with cut_every(model, seq_len):
        for c, start in enumerate(starts[:-1]):  # a chunk but the last is full: start + chunk <= scored_to
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(s.global_ttt_lr, c, len(starts))
            rows = packed_rows(start, s.global_ttt_chunk_tokens, seq_len, s.global_ttt_batch_seqs, rank, world)
            model.train()
            for _ in range(s.global_ttt_epochs):
                for a, b in rows:
                    tokens = ledger.training_tokens(a, b).to(device)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast_for(device):
                        loss = model(tokens[None, :-1], tokens[None, 1:])
                    loss.backward()
                    if world > 1:  # R44: the mean of the ranks' gradients
                        sum_gradients(params)
                        for p in params:
                            p.grad.div_(world)
                    if s.global_ttt_grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, s.global_ttt_grad_clip)
                    optimizer.step()
            model.eval()


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
    if s.global_ttt_packed and ends:
        check_packed_ranks(s, seq_len, world)
    for index, (lo, hi) in enumerate(batches_within_phases(len(docs), s.ttt_batch_size, ends)):
        if index % world == rank:
            adapt_documents(model, ledger, docs[lo:hi], s, device, seed)
        if hi in ends:
            ledger.merge_scored(0, docs[hi - 1][1])
            global_sgd(model, ledger, docs[hi - 1][1], s, seq_len, device)
    ledger.merge_scored()
    return ledger_result(ledger)
