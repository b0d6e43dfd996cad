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

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pgolf.config import QuantConfig
from pgolf.errors import PgolfError
from pgolf.quant.gptq import collect_hessians

SOURCE_TRAIN = "train"
SOURCE_SELF = "self"


def calibration_source(q: QuantConfig) -> str:
    return SOURCE_SELF if q.gptq_ar_selfgen else SOURCE_TRAIN


@torch.no_grad()
def generate_calibration_tokens(
    model: nn.Module, num_seqs: int, seq_len: int, vocab_size: int, temperature: float, batch_size: int, seed: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``[num_seqs, seq_len]`` int64 token ids sampled from ``model.logits`` at ``temperature``."""
    if num_seqs <= 0 or seq_len <= 0 or batch_size <= 0:
        raise PgolfError(f"self-generated calibration needs positive sizes (seqs {num_seqs}, len {seq_len}, batch {batch_size})")
    if not temperature > 0:
        raise PgolfError(f"GPTQ_TEMPERATURE={temperature}: must be positive")
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, num_seqs, batch_size):
            n = min(batch_size, num_seqs - start)
            tokens = torch.randint(0, vocab_size, (n, 1), device=device, generator=gen)
            for _ in range(seq_len - 1):
                with _autocast(device):
                    last = model.logits(tokens)[:, -1, :].float()
                probs = torch.softmax(last / temperature, dim=-1)
                tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen)], dim=1)
            out.append(tokens)
    finally:
        model.train(was_training)
    return torch.cat(out)


def _autocast(device: torch.device):
    from pgolf.eval.evaluate import autocast_for

    return autocast_for(device)


def train_calibration_batches(loader, num_batches: int, batch_tokens: int, seq_len: int, grad_accum: int) -> Iterator[Tensor]:
    """The next ``num_batches`` training input batches of this rank (targets are not needed)."""
    for _ in range(num_batches):
        x, _ = loader.next_batch(batch_tokens, seq_len, grad_accum)
        yield x


def hessians_from_batches(model: nn.Module, batches, device: torch.device) -> dict[str, Tensor]:
    """Hessians of every quantizable weight; summed over ranks when distributed, on the CPU."""
    was_training = model.training
    model.eval()
    try:
        with _autocast(device):
            hessians = collect_hessians(model, batches)
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        for name in sorted(hessians):  # same order on every rank
            dist.all_reduce(hessians[name], op=dist.ReduceOp.SUM)
    return {k: v.cpu() for k, v in hessians.items()}


def calibration_hessians(
    model: nn.Module, q: QuantConfig, seq_len: int, vocab_size: int, device: torch.device, seed: int,
    loader=None, batch_tokens: int = 0, grad_accum: int = 1,
) -> dict[str, Tensor]:
    """Hessians from the configured source; ``loader`` (and its batch shape) only for ``train``."""
    if calibration_source(q) == SOURCE_SELF:
        tokens = generate_calibration_tokens(
            model, q.gptq_calib_samples, seq_len, vocab_size, q.gptq_temperature, q.gptq_batch_size, seed, device
        )
        return hessians_from_batches(model, tokens.split(q.gptq_batch_size), device)
    if loader is None:
        raise PgolfError("GPTQ calibration from training batches needs the training data (or set GPTQ_AR_SELFGEN=1)")
    batches = train_calibration_batches(loader, q.gptq_calibration_batches, batch_tokens, seq_len, grad_accum)
    return hessians_from_batches(model, batches, device)
