"""What the model adds to the token embedding before the first block, and the value embeddings.

* BigramHash (R15 4096x128, R19 onward): an extra table indexed by a hash of (previous, current)
  token, projected to the model width (zero-init) and added to the token embedding.
  ``xor`` hash (R19+): ``(36313*cur XOR 27191*prev) mod (B-1)``, position 0 -> bucket ``B-1``,
  zero-init table, learned output scale (init 0.05). ``mul`` hash (R15): ``(92821*prev + cur) mod B``
  with prev = 0 at position 0, table std 0.01, no scale. With the BOS fix a BOS token hashes
  as a first position, so no pair spans two documents.
* SmearGate v1 (R15, PR #65/#102): ``x_t = sig(g) x_t + (1 - sig(g)) x_{t-1}``, per-dim g (init 3).
  R22 and PR #1090 turn the gate round, ``(1 - sig(g)) x_t + sig(g) x_{t-1}`` with g = 0 at init
  (``PGOLF_SMEAR_GATE_WEIGHS=previous``, ``PGOLF_SMEAR_GATE_INIT=0``). The two forms compute the
  same functions, but a trained g of one is -g of the other, so each record's checkpoint needs
  its own form.
* SmearGate v2 (R39, PR #1667): ``x_t += lam * sig(W x_t[:w]) x_{t-1}``, W and lam zero-init.
* SmearGate BOS fix (R45, PR #1851): the previous-token term is multiplied by
  ``input_ids[t] != BOS``, so the last token of one document never leaks into the next.
* Factored tied embedding (R23, PR #640, ``EMBED_DIM``): the token table is ``vocab x k`` and a
  linear ``k -> d`` projection (``embed_proj``) lifts it to the model width. The tied head maps
  the final hidden back to ``k`` and multiplies by the table: in R23 with its own ``d -> k``
  projection (``embed_proj_rev``; ``V k + 2 k d`` parameters), or, with ``PGOLF_EMBED_PROJ_SHARED``,
  through ``embed_proj`` transposed, so head and input share both factors (``V k + k d``).
* Value embeddings (R21, PR #374): a shared ``vocab x ve_dim`` table (std 0.01), a zero-init
  projection to the KV width and a learned scale (init 0.1); per-layer scales live on the GPT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear

HASHES = ("xor", "mul")


def previous(x: Tensor) -> Tensor:
    """x shifted one position later along dim 1, zeros at position 0."""
    return torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)


def bigram_buckets(input_ids: Tensor, num_buckets: int, kind: str, bos_id: int | None = None) -> Tensor:
    """Bucket index [B, T] of each (previous, current) pair."""
    cur = input_ids.long()
    prev = previous(cur)
    first = torch.zeros_like(cur, dtype=torch.bool)
    first[:, 0] = True
    if bos_id is not None:
        first |= cur == bos_id
    if kind == "mul":
        return torch.where(first, cur, (prev * 92821 + cur)) % num_buckets
    mod = num_buckets - 1
    hashed = torch.bitwise_xor(36313 * cur, 27191 * prev) % mod
    return torch.where(first, torch.full_like(hashed, mod), hashed)


class BigramHash(nn.Module):
    def __init__(self, num_buckets: int, dim: int, model_dim: int, kind: str = "xor",
                 scale: float = 0.05, init_std: float = 0.0, bos_id: int | None = None):
        super().__init__()
        if kind not in HASHES:
            raise ValueError(f"unknown bigram hash {kind!r}")
        self.num_buckets, self.kind, self.bos_id = num_buckets, kind, bos_id
        self.table = nn.Embedding(num_buckets, dim)
        if init_std > 0:
            nn.init.normal_(self.table.weight, std=init_std)
        else:
            nn.init.zeros_(self.table.weight)
        self.proj = CastedLinear(dim, model_dim, bias=False)
        self.proj._zero_init = True
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float32)) if scale else None

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.proj(self.table(bigram_buckets(input_ids, self.num_buckets, self.kind, self.bos_id)))
        return h if self.scale is None else h * self.scale.to(h.dtype)


def not_bos(input_ids: Tensor, bos_id: int | None, dtype: torch.dtype) -> Tensor | None:
    """[B, T, 1] multiplier that zeroes the previous-token term at BOS tokens (None: no fix)."""
    return None if bos_id is None else (input_ids != bos_id).to(dtype)[..., None]


SMEAR_GATE_WEIGHS = ("current", "previous")


class SmearGateV1(nn.Module):
    def __init__(self, dim: int, bos_id: int | None = None, init: float = 3.0, weighs: str = "current"):
        super().__init__()
        if weighs not in SMEAR_GATE_WEIGHS:
            raise ValueError(f"unknown SmearGate side {weighs!r}")
        self.bos_id = bos_id
        self.weighs_previous = weighs == "previous"
        self.gate = nn.Parameter(torch.full((dim,), init, dtype=torch.float32))

    def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate).to(x.dtype)
        current_weight, previous_weight = (1.0 - g, g) if self.weighs_previous else (g, 1.0 - g)
        prev = previous_weight * previous(x)
        keep = not_bos(input_ids, self.bos_id, x.dtype)
        return current_weight * x + (prev if keep is None else prev * keep)


class SmearGateV2(nn.Module):
    def __init__(self, window: int, bos_id: int | None = None):
        super().__init__()
        self.window, self.bos_id = window, bos_id
        self.gate = nn.Parameter(torch.zeros(1, window, dtype=torch.float32))
        self.lam = nn.Parameter(torch.zeros(1, dtype=torch.float32))

    def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
        g = self.lam.to(x.dtype) * torch.sigmoid(F.linear(x[..., : self.window], self.gate.to(x.dtype)))
        keep = not_bos(input_ids, self.bos_id, x.dtype)
        if keep is not None:
            g = g * keep
        return x + g * previous(x)


class ValueEmbedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int, kv_dim: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.table.weight, std=0.01)
        self.proj = CastedLinear(dim, kv_dim, bias=False)
        self.proj._zero_init = True
        self.scale = nn.Parameter(torch.tensor(0.1, dtype=torch.float32))

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.proj(self.table(input_ids))
        return h * self.scale.to(h.dtype)


def embed_width(cfg: ModelConfig) -> int:
    """Width of the token table: EMBED_DIM when it factors the embedding, else MODEL_DIM."""
    return cfg.embed_dim if cfg.embed_dim not in (0, cfg.model_dim) else cfg.model_dim


def is_factored(cfg: ModelConfig) -> bool:
    return embed_width(cfg) != cfg.model_dim


def projection_weight(proj: CastedLinear) -> Tensor:
    """The weight ``proj`` multiplies by, fake-quantized when QAT is on (as CastedLinear.forward)."""
    return proj.weight if proj.weight_fake_quant is None else proj.weight_fake_quant(proj.weight)


def tied_head_input(x: Tensor, embed_proj: CastedLinear | None, embed_proj_rev: CastedLinear | None) -> Tensor:
    """The hidden state in the table's width: ``x`` itself, ``rev(x)`` (R23) or ``x P`` (shared: P^T)."""
    if embed_proj_rev is not None:
        return embed_proj_rev(x)
    if embed_proj is not None:
        return F.linear(x, projection_weight(embed_proj).t().to(x.dtype))
    return x
