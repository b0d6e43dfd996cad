"""Chunked full-model SGD TTT: score a chunk, then train on it; and the SGD loop phased TTT reuses.

The stream's targets are cut into chunks of ``TTT_CHUNK_TOKENS``. A sliding window belongs to the
chunk its first scored target falls in. For each chunk: (1) score its windows under inference
mode; (2) unless it is the last chunk, run ``TTT_EPOCHS`` epochs of SGD (momentum, grad clip, LR
``TTT_LR`` cosine-decayed over chunks) on the chunk's targets, which the ledger hands out only
because they are scored. The first ``TTT_FREEZE_BLOCKS`` blocks stay frozen.

Under torch.distributed each rank scores a contiguous share of every chunk's windows, the ranks
then share which targets are scored (:meth:`ScoreLedger.merge_scored`), and each training batch is
split over the ranks, its gradient the sum of theirs (each rank's loss weighted by its share of the
batch's targets): the same steps on the same batches as one process, so the replicas stay equal.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from pgolf.config import EvalConfig
from pgolf.eval.evaluate import autocast_for, rank_and_world, rank_window_range
from pgolf.eval.ledger import ScoreLedger
from pgolf.eval.sliding import LedgerResult, evaluate_windows, ledger_result
from pgolf.eval.windows import Window, plan
from pgolf.tokenizer.luts import TorchByteTable


def cosine_lr(base_lr: float, index: int, count: int) -> float:
    """Cosine decay from ``base_lr`` at index 0 to 0 at ``count - 1``."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * index / max(count - 1, 1)))


def windows_by_chunk(windows: list[Window], chunk_tokens: int, n_targets: int) -> list[list[Window]]:
    groups: list[list[Window]] = [[] for _ in range(math.ceil(n_targets / chunk_tokens))]
    for w in windows:
        groups[w.score_from // chunk_tokens].append(w)
    return groups


def sequences(tokens: torch.Tensor, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) pairs of at most ``seq_len`` targets covering every target of a token span once."""
    n = tokens.numel() - 1
    return [(tokens[i : min(i + seq_len, n)], tokens[i + 1 : min(i + seq_len, n) + 1]) for i in range(0, n, seq_len)]


def sgd_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    spans: list[torch.Tensor],
    seq_len: int,
    batch_seqs: int,
    epochs: int,
    lr: float,
    grad_clip: float,
    device: torch.device,
) -> None:
    """Train on token spans (each from :meth:`ScoreLedger.training_tokens`) for ``epochs`` epochs."""
    pairs = [p for span in spans for p in sequences(span, seq_len)]
    full = [p for p in pairs if p[0].numel() == seq_len]
    ragged = [p for p in pairs if p[0].numel() != seq_len]  # span tails: one sequence per batch
    batches = [full[i : i + batch_seqs] for i in range(0, len(full), batch_seqs)] + [[p] for p in ragged]
    for group in optimizer.param_groups:
        group["lr"] = lr
    params = [p for g in optimizer.param_groups for p in g["params"]]
    rank, world = rank_and_world()
    model.train()
    for _ in range(epochs):
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            first, last = rank_window_range(len(batch), rank, world)
            mine = batch[first:last]  # the whole batch in one process
            if mine:
                x = torch.stack([p[0] for p in mine]).to(device)
                y = torch.stack([p[1] for p in mine]).to(device)
                with autocast_for(device):
                    loss = model(x, y)
                if world > 1:  # the mean over the whole batch, once the ranks' gradients are summed
                    loss = loss * (y.numel() / sum(p[1].numel() for p in batch))
                loss.backward()
            if world > 1:
                sum_gradients(params)
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
    model.eval()


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce (sum) the gradients of ``params`` in one collective; a rank without a share of the
    batch contributes zeros."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(p)
        offset += g.numel()


def trainable_parameters(model: torch.nn.Module, freeze_blocks: int) -> list[torch.nn.Parameter]:
    frozen = {id(p) for block in list(model.blocks)[:freeze_blocks] for p in block.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    return [p for p in model.parameters() if id(p) not in frozen]


def evaluate_sgd_ttt(
    model: torch.nn.Module,
    tokens: np.ndarray,
    table: TorchByteTable,
    s: EvalConfig,
    seq_len: int,
    bos_id: int,
    device: torch.device,
) -> LedgerResult:
    """Chunked score-first full-model SGD over the stream (``model`` is changed: pass a copy)."""
    ledger = ScoreLedger(tokens, table, device)
    stride = s.eval_stride or seq_len
    windows = plan(tokens, seq_len, stride, bos_id if s.doc_isolated else None)
    groups = windows_by_chunk(windows, s.ttt_chunk_tokens, ledger.n_targets)
    optimizer = torch.optim.SGD(trainable_parameters(model, s.ttt_freeze_blocks), lr=s.ttt_lr, momentum=s.ttt_momentum)
    batch_tokens = max(s.ttt_batch_seqs, 1) * seq_len
    rank, world = rank_and_world()
    model.eval()
    for c, group in enumerate(groups):
        first, last = rank_window_range(len(group), rank, world)
        evaluate_windows(model, ledger, group[first:last], seq_len, batch_tokens, device)
        if group:  # every rank may now train on the whole chunk
            ledger.merge_scored(group[0].score_from, group[-1].end)
        if c == len(groups) - 1:
            break  # nothing left to adapt for
        start, end = c * s.ttt_chunk_tokens, min((c + 1) * s.ttt_chunk_tokens, ledger.n_targets)
        span = ledger.training_tokens(start, end)
        sgd_epochs(model, optimizer, [span], seq_len, s.ttt_batch_seqs, s.ttt_epochs,
                   cosine_lr(s.ttt_lr, c, len(groups)), s.ttt_grad_clip, device)
    return ledger_result(ledger)
