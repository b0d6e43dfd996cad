"""Model FLOPs per token, peak FLOP/s per device and model FLOPs utilisation (MFU).

Counted analytically from the config, one multiply-add = 2 FLOPs, matrix multiplies only:

* weights: every block has q and output projections (``d x d`` each), k and v projections
  (``d x kv_dim`` each, ``kv_dim = num_kv_heads * head_dim``) and an MLP (``d x mlp_mult*d`` twice);
  the output head is ``d x vocab`` whether or not it is tied to the embedding (the embedding lookup
  itself is free). ``N_mm`` = the sum; a forward pass costs ``2 * N_mm`` per token.
* attention scores and the weighted sum of values: ``2 * 2 * head_dim`` per (query, key) pair and
  query head. Causal attention over a window of ``T`` sees ``(T + 1) / 2`` keys on average, so the
  forward cost is ``2 * num_layers * model_dim * (T + 1)`` per token (masked pairs are not counted,
  as FlashAttention skips them; PaLM's formula counts all ``T`` keys, i.e. about twice this term).
  With document isolation the real context is shorter; the nominal window is still counted.
* training = forward + backward = 3 x forward; evaluation = forward.
* sliding evaluation (stride ``s``, windows of ``T``), per scored token: the blocks run over every
  window position, ``T / s`` of them per scored token, and the head only at scored positions
  (pgolf's sliding path computes nothing else; the first window of a stream is left out).

Elementwise work (norms, RoPE, relu², softcap, the optimizer) is left out, so MFU is a lower bound
on the hardware's busy fraction. Peak FLOP/s: dense bf16 tensor-core rates from NVIDIA's datasheets
(their "with sparsity" figures halved); other devices are unknown and their MFU is None.
"""

from __future__ import annotations

from pgolf.config import ModelConfig

# (substring of torch.cuda.get_device_name, dense bf16 FLOP/s); the first match wins, so NVL/PCIe precede the SXM part.
PEAK_BF16_FLOPS = (
    ("H200 NVL", 835.5e12),
    ("H200", 989.5e12),
    ("H100 NVL", 835.5e12),
    ("H100 PCIe", 756.5e12),
    ("H100", 989.5e12),
)


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in a matrix multiply per token (the ``N_mm`` of the module docstring)."""
    d, kv_dim = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    per_block = 2 * d * d + 2 * d * kv_dim + 2 * d * cfg.mlp_mult * d
    return cfg.num_layers * per_block + d * cfg.vocab_size


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs of QK^T and AV per token of a causal window of ``seq_len``."""
    return 2 * cfg.num_layers * cfg.model_dim * (seq_len + 1)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    return 2 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)


def sliding_flops_per_token(cfg: ModelConfig, seq_len: int, stride: int) -> int:
    """Forward FLOPs per scored token of a sliding evaluation: blocks at all ``seq_len / stride`` positions, head once."""
    head = 2 * cfg.model_dim * cfg.vocab_size
    body = forward_flops_per_token(cfg, seq_len) - head
    return round(body * seq_len / stride) + head


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    return 3 * forward_flops_per_token(cfg, seq_len)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of one device, or None when the device is not in the table (every CPU)."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def mfu(flops_per_token: int, tokens_per_s: float, num_devices: int, peak: float | None) -> float | None:
    """Achieved model FLOP/s over the devices' combined peak; None when the peak is unknown."""
    if peak is None:
        return None
    return flops_per_token * tokens_per_s / (num_devices * peak)
