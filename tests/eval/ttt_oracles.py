"""Independent references for the TTT tests: R22's own score-first SGD TTT (imported from the
oracles folder with a stand-in for FlashAttention 3), and plain per-document loops for the LoRA and
phased kinds, written from their specification one document, one chunk, one step at a time."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]


def oracles_dir() -> Path:
    return Path(os.environ.get("PGOLF_ORACLES", REPO_ROOT.parent / "shared" / "oracles"))


def _flash_attn_stand_in() -> types.ModuleType:
    """``flash_attn_func(q, k, v, causal=True)`` on (B, T, H, D) tensors, GQA included, through SDPA."""
    module = types.ModuleType("flash_attn_interface")

    def flash_attn_func(q, k, v, causal=True, **_):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k.size(1) != q.size(1))
        return y.transpose(1, 2)

    module.flash_attn_func = flash_attn_func
    return module


def import_r22():
    """R22's ``train_gpt.py`` as a module (its ``main()`` stays behind the ``__main__`` guard)."""
    path = oracles_dir() / "R22_leakyrelu_ttt_parallel_muon" / "train_gpt.py"
    if not path.is_file():
        pytest.skip(f"R22 oracle not found at {path} (set PGOLF_ORACLES to the oracles folder)")
    saved = sys.modules.get("flash_attn_interface")
    sys.modules["flash_attn_interface"] = _flash_attn_stand_in()
    try:
        spec = importlib.util.spec_from_file_location("oracle_r22_train_gpt", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("flash_attn_interface", None)
        else:
            sys.modules["flash_attn_interface"] = saved
    return module


class R22View(torch.nn.Module):
    """A pgolf GPT with the interface R22's TTT calls: ``blocks``, ``forward_logits``, ``(x, y) -> mean loss``.

    R22 scores under ``inference_mode``; pgolf's RoPE cache made there could not be reused by the
    training that follows, so the view scores outside it (still without gradients)."""

    def __init__(self, gpt: torch.nn.Module):
        super().__init__()
        self.gpt = gpt
        self.blocks = gpt.blocks

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.no_grad():
            return self.gpt.logits(x.clone())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.gpt(x, y)


# -- plain per-document LoRA ----------------------------------------------------------------------
def documents(tokens: np.ndarray, bos_id: int) -> list[tuple[int, int]]:
    """Target ranges [a, b): a document from each BOS input to the next (the stream's end last)."""
    n = tokens.shape[0] - 1
    starts = sorted({0, *[i for i in range(n) if tokens[i] == bos_id]})
    return list(zip(starts, starts[1:] + [n]))


def fresh_adapters(model, doc_start: int, rank: int, seed: int) -> list[tuple[torch.nn.Module, bool, torch.Tensor, torch.Tensor]]:
    """(module, reads its output?, A, B) for q and v of every block, then the head's input.

    A ~ N(0, 1/fan_in) from a generator seeded with ``seed * 1_000_003 + doc_start``, drawn in that
    module order; B = 0."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + doc_start)
    out = []
    modules = [(lin, False) for block in model.blocks for lin in (block.attn.c_q, block.attn.c_v)]
    modules.append((model.final_norm, True))
    for module, on_output in modules:
        fan_in = model.cfg.model_dim if on_output else module.in_features
        fan_out = model.cfg.model_dim if on_output else module.out_features
        a = (torch.randn(rank, fan_in, generator=g) / math.sqrt(fan_in)).requires_grad_(True)
        out.append((module, on_output, a, torch.zeros(fan_out, rank, requires_grad=True)))
    return out


@contextmanager
def adapted(adapters):
    def hook(a, b, on_output):
        return lambda m, inputs, output: output + ((output if on_output else inputs[0]) @ a.T) @ b.T

    handles = [m.register_forward_hook(hook(a, b, on)) for m, on, a, b in adapters]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def lora_one_document(model, tokens: torch.Tensor, doc: tuple[int, int], s, seed: int, losses: np.ndarray) -> None:
    """Chunk by chunk: score it (window of up to TTT_EVAL_SEQ_LEN inputs of this document, on the
    grid of full chunks), then, unless it is the last, one Adam step on its mean loss."""
    a, b = doc
    chunk, context = s.ttt_chunk_size, max(s.ttt_eval_seq_len, s.ttt_chunk_size)
    adapters = fresh_adapters(model, a, s.ttt_lora_rank, seed)
    optimizer = torch.optim.Adam([t for _, _, A, B in adapters for t in (A, B)], lr=s.ttt_lora_lr, betas=(0.9, 0.999))
    for first in range(a, b, chunk):
        end = min(first + chunk, b)
        start = max(a, first + chunk - context)
        with adapted(adapters):
            window = model(tokens[None, start:end], tokens[None, start + 1 : end + 1], reduction="none")[0, first - start :]
        losses[first:end] = window.detach().numpy()
        if end < b:
            optimizer.zero_grad()
            window.mean().backward()
            optimizer.step()


def plain_global_sgd(model, tokens: torch.Tensor, scored_to: int, s, seq_len: int) -> None:
    """GLOBAL_TTT_EPOCHS over targets [0, scored_to) in chunks of GLOBAL_TTT_CHUNK_TOKENS (LR cosine
    over the chunks): sequences of seq_len targets, GLOBAL_TTT_BATCH_SEQS full ones a batch, a chunk's
    short tail a batch of its own; SGD with momentum, fresh at each pause; grad-norm clip."""
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(params, lr=s.global_ttt_lr, momentum=s.global_ttt_momentum)
    starts = list(range(0, scored_to, s.global_ttt_chunk_tokens))
    model.train()
    for _ in range(s.global_ttt_epochs):
        for c, start in enumerate(starts):
            lr = s.global_ttt_lr * 0.5 * (1 + math.cos(math.pi * c / max(len(starts) - 1, 1)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            end = min(start + s.global_ttt_chunk_tokens, scored_to)
            seqs = [(i, min(i + seq_len, end)) for i in range(start, end, seq_len)]
            full = [q for q in seqs if q[1] - q[0] == seq_len]
            batches = [full[i : i + s.global_ttt_batch_seqs] for i in range(0, len(full), s.global_ttt_batch_seqs)]
            batches += [[q] for q in seqs if q[1] - q[0] != seq_len]
            for batch in batches:
                x = torch.stack([tokens[i:j] for i, j in batch])
                y = torch.stack([tokens[i + 1 : j + 1] for i, j in batch])
                optimizer.zero_grad()
                model(x, y).backward()
                if s.global_ttt_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, s.global_ttt_grad_clip)
                optimizer.step()
    model.eval()
    for p in params:
        p.requires_grad_(False)


def plain_ttt(kind: str, model, tokens: np.ndarray, s, seq_len: int, bos_id: int, seed: int = 0) -> np.ndarray:
    """Per-token losses of ``lora`` or ``phased`` TTT, one document at a time in stream order, on ``model``
    (changed: pass a copy). ``phased`` pauses for global SGD after the first
    ceil(PHASED_TTT_PREFIX_DOCS * (i + 1) / PHASED_TTT_NUM_PHASES) documents."""
    stream = torch.from_numpy(tokens.astype(np.int64))
    docs = documents(tokens, bos_id)
    pauses = {math.ceil(s.phased_ttt_prefix_docs * (i + 1) / s.phased_ttt_num_phases)
              for i in range(s.phased_ttt_num_phases)} if kind == "phased" else set()
    losses = np.full(tokens.shape[0] - 1, np.nan, dtype=np.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    for i, doc in enumerate(docs):
        lora_one_document(model, stream, doc, s, seed, losses)
        if i + 1 in pauses and i + 1 < len(docs):
            plain_global_sgd(model, stream, doc[1], s, seq_len)
    return losses
