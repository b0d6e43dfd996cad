"""GPTQ calibration data and the Hessians it yields: training batches or the model's own samples.

Two sources (``GPTQ_AR_SELFGEN`` picks):

* ``train`` (R25, R30+): ``GPTQ_CALIBRATION_BATCHES`` batches from the training stream, taken
  inside the training budget (the run stops ``GPTQ_RESERVE_SECONDS`` early to pay for them);
  ``PGOLF_GPTQ_CALIBRATION_LOADER`` picks which: ``stream``, the training loader's next batches, or
  ``shuffled``, R44's: a fresh :class:`pgolf.data.rank_loader.RankShuffledLoader` (random windows,
  shards ``rank::world``, seeded by the rank), run through plain causal attention as R44's
  ``forward_logits`` without ``cu_seqlens`` (attention crosses BOS inside a window even where the
  model trains document-isolated; the SmearGate's BOS cut is the model's and stays), and each
  rank keeps its own Hessians (R44 never reduces them: rank 0's quantize the artifact);
* ``self`` (R24): the trained model samples ``GPTQ_CALIB_SAMPLES`` sequences autoregressively at
  ``GPTQ_TEMPERATURE`` from a uniformly random first token, with a fixed seed; the Hessians come
  from these sequences only, so quantization reads no train or val data at all.

:func:`generate_calibration_tokens` is deterministic for a seed on a given device (its own
``torch.Generator``; the global RNG is untouched). It recomputes the whole prefix per token (no
KV cache), which is what the records did: ~2,000 forwards per batch of sequences.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pgolf.config import QuantConfig
from pgolf.errors import PgolfError
from pgolf.eval.evaluate import autocast_for
from pgolf.quant.gptq import collect_hessians


@torch.no_grad()
def generate_calibration_tokens(
    model: nn.Module, num_seqs: int, seq_len: int, vocab_size: int, temperature: float, batch_size: int, seed: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``[num_seqs, seq_len]`` int64 token ids sampled from ``model.logits`` at ``temperature``."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, num_seqs, batch_size):
        tokens = torch.randint(0, vocab_size, (min(batch_size, num_seqs - start), 1), device=device, generator=gen)
        for _ in range(seq_len - 1):
            with autocast_for(device):
                last = model.logits(tokens)[:, -1].float()
            tokens = torch.cat([tokens, torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=gen)], 1)
        out.append(tokens)
    model.train(was_training)
    return torch.cat(out)


def shuffled_calibration(q: QuantConfig) -> bool:
    """R44's calibration (PGOLF_GPTQ_CALIBRATION_LOADER=shuffled): its random windows through plain
    causal attention, each rank's own Hessians; it applies to the ``train`` source only."""
    return q.gptq_calibration_loader == "shuffled" and not q.gptq_ar_selfgen


@contextmanager
def plain_causal(model: nn.Module):
    """While inside, ``model`` (a pgolf GPT) cuts no document in attention, as R44's calibration forward."""
    model.plain_causal = True
    try:
        yield
    finally:
        del model.plain_causal


def calibration_hessians(
    model: nn.Module, q: QuantConfig, seq_len: int, vocab_size: int, device: torch.device, seed: int,
    loader=None, batch_tokens: int = 0, grad_accum: int = 1,
) -> dict[str, Tensor]:
    """Hessians (CPU, summed over ranks; with ``PGOLF_GPTQ_CALIBRATION_LOADER=shuffled`` this rank's
    own, as R44) from the configured source; ``loader`` only for ``train``."""
    if q.gptq_ar_selfgen:
        batches = generate_calibration_tokens(
            model, q.gptq_calib_samples, seq_len, vocab_size, q.gptq_temperature, q.gptq_batch_size, seed, device
        ).split(q.gptq_batch_size)
    elif loader is None:
        raise PgolfError("GPTQ calibration from training batches needs the training data (or set GPTQ_AR_SELFGEN=1)")
    else:
        batches = (loader.next_batch(batch_tokens, seq_len, grad_accum)[0] for _ in range(q.gptq_calibration_batches))
    was_training = model.training
    model.eval()
    with autocast_for(device):
        if shuffled_calibration(q):  # a folded test: off, a bundle keeps the else
            with plain_causal(model):
                hessians = collect_hessians(model, batches)
        else:
            hessians = collect_hessians(model, batches)
    model.train(was_training)
    # shuffled: R44 quantizes on rank 0's own Hessians (never reduced; the other ranks' go unused, as there)
    if not shuffled_calibration(q) and dist.is_available() and dist.is_initialized():
        for name in sorted(hessians):  # same order on every rank
            dist.all_reduce(hessians[name])
    return {k: v.cpu() for k, v in hessians.items()}
