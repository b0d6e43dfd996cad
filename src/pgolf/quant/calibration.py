"""GPTQ calibration data and the Hessians it yields: training batches or the model's own samples.

Two sources (``GPTQ_AR_SELFGEN`` picks):

* ``train`` (R25, R30+): ``GPTQ_CALIBRATION_BATCHES`` batches from the training stream, taken
  inside the training budget (the run stops ``GPTQ_RESERVE_SECONDS`` early to pay for them);
* ``self`` (R24): the trained model samples ``GPTQ_CALIB_SAMPLES`` sequences autoregressively at
  ``GPTQ_TEMPERATURE`` from a uniformly random first token, with a fixed seed; the Hessians come
  from these sequences only, so quantization reads no train or val data at all.

:func:`generate_calibration_tokens` is deterministic for a seed on a given device (its own
``torch.Generator``; the global RNG is untouched). It recomputes the whole prefix per token (no
KV cache), which is what the records did: ~2,000 forwards per batch of sequences.
"""

from __future__ import annotations

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


def calibration_hessians(
    model: nn.Module, q: QuantConfig, seq_len: int, vocab_size: int, device: torch.device, seed: int,
    loader=None, batch_tokens: int = 0, grad_accum: int = 1,
) -> dict[str, Tensor]:
    """Hessians (CPU, summed over ranks) from the configured source; ``loader`` only for ``train``."""
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
        hessians = collect_hessians(model, batches)
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        for name in sorted(hessians):  # same order on every rank
            dist.all_reduce(hessians[name])
    return {k: v.cpu() for k, v in hessians.items()}
