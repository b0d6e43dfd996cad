"""Causal self-attention: GQA, RMSNorm on q and k, RoPE, a learnable per-head query gain.

Record options, all off by default (then this is exactly the reference's attention):

* XSA, exclusive self-attention (R17 last 3 layers, R18 last 4, R24 all, PR #478;
  arXiv:2603.09078): from each head's output remove its component along the token's own
  normalised value vector, ``z_i = y_i - (y_i . v_i/|v_i|) v_i/|v_i|``. GQA-efficient form: the
  output is viewed as [B, Hkv, group, T, D] and the values broadcast, no ``repeat_interleave``.
* Document-isolated attention: no token attends across a BOS document boundary. On FA3 this is
  varlen flash attention over the documents (as the records do, R35+ "VarLenAttn"); on SDPA a
  block-diagonal causal mask.
* Value embeddings (R21, PR #374): a shared token table projected to the KV width, added to V.
* Value residual (code in R22): ``v = l0 * v_first_layer + l1 * v``, lambdas init 0.5.
* Per-head output gates, mutually exclusive, applied before the output projection:
  attention output gate ``2 sig(W x[:w])`` (R39, PR #1667, W zero-init), gated attention
  ``sig(W_g x)`` (R41, PR #1736, Qwen G1), sparse gate ``sig(s W x[:w])`` (R43, PR #1787).

Every call into the attention kernel goes through :func:`attention_kernel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.model.attn_backend import Segments, causal_attention
from pgolf.model.layers import CastedLinear
from pgolf.model.rope import Rotary, apply_rotary

GATES = ("none", "out_gate", "gated", "sparse")


@dataclass
class AttentionOptions:
    """The per-layer switches of one attention module (built by the GPT from ModelConfig)."""

    xsa: bool = False
    rope_dims: int = 0
    ntk_train_seq_len: int = 0
    gate: str = "none"
    gate_window: int = 12
    gate_scale: float = 1.0
    gate_init_std: float = 0.0
    value_residual: bool = False  # this layer mixes in the first layer's values
    # whether the model passes AttentionInputs at all (document masks, value embeddings, value
    # residual); without them it passes None throughout, which a bundle then folds through forward
    side_inputs: bool = False


@dataclass
class AttentionInputs:
    """Side inputs of one forward pass, shared by every layer."""

    doc_mask: Tensor | None = None  # [B, 1, T, T] bool, True = may attend (document isolation on SDPA)
    segments: Segments | None = None  # the documents, for FA3 varlen (document isolation on FA3)
    value_embed: Tensor | None = None  # [B, T, kv_dim] for this layer, already scaled
    first_values: Tensor | None = None  # [B, T, kv_dim], the first layer's values (value residual)


def attention_kernel(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                     segments: Segments | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v, causal; q [B, H, T, D], k and v [B, Hkv, T, D].

    Without a mask this is the reference's ``is_causal=True`` call; with one, the mask (already
    causal) replaces it; with ``segments``, FA3 varlen attends within each document.
    """
    if attn_mask is None:
        return causal_attention(q, k, v, segments)  # FA3 or the reference's SDPA call (pgolf.model.attn_backend)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=k.size(1) != q.size(1))


def exclusive_self_attention(y: Tensor, v: Tensor) -> Tensor:
    """Remove from y [B, H, T, D] its component along each token's own value v [B, Hkv, T, D]."""
    bsz, heads, seqlen, dim = y.shape
    kv_heads = v.size(1)
    y_groups = y.view(bsz, kv_heads, heads // kv_heads, seqlen, dim)
    v_hat = F.normalize(v, dim=-1)[:, :, None]
    along = (y_groups * v_hat).sum(dim=-1, keepdim=True)
    return (y_groups - along * v_hat).view(bsz, heads, seqlen, dim)


class CausalSelfAttention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, num_kv_heads: int, rope_base: float, qk_gain_init: float,
        options: AttentionOptions | None = None,
    ):
        super().__init__()
        self.options = opts = options or AttentionOptions()
        if opts.gate not in GATES:
            raise ValueError(f"unknown attention gate {opts.gate!r}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, base=rope_base, rope_dims=opts.rope_dims,
                             ntk_train_seq_len=opts.ntk_train_seq_len)
        if opts.value_residual:
            self.vr_lambda = nn.Parameter(torch.full((2,), 0.5, dtype=torch.float32))
        if opts.gate != "none":
            self.attn_gate_w = nn.Parameter(self._initial_gate(dim, opts))

    def _initial_gate(self, dim: int, opts: AttentionOptions) -> Tensor:
        width = dim if opts.gate == "gated" else opts.gate_window
        w = torch.zeros(self.num_heads, width, dtype=torch.float32)
        if opts.gate_init_std > 0:
            nn.init.normal_(w, std=opts.gate_init_std)
        return w

    def _heads(self, x: Tensor, n: int) -> Tensor:
        bsz, seqlen, _ = x.shape
        return x.reshape(bsz, seqlen, n, self.head_dim).transpose(1, 2)

    def _values(self, x: Tensor, inputs: AttentionInputs | None) -> Tensor:
        v = self.c_v(x)
        if inputs is None:
            return v
        if inputs.value_embed is not None:
            v = v + inputs.value_embed.to(v.dtype)
        if self.options.value_residual and inputs.first_values is not None:
            lam = self.vr_lambda.to(v.dtype)
            v = lam[0] * inputs.first_values + lam[1] * v
        if inputs.first_values is None:
            inputs.first_values = v
        return v

    def _gate(self, x: Tensor) -> Tensor:
        """Per-head multiplier [B, T, H] of the output gate."""
        opts = self.options
        w = self.attn_gate_w.to(x.dtype)
        if opts.gate == "gated":
            return torch.sigmoid(F.linear(x, w))
        logits = F.linear(x[..., : opts.gate_window], w)
        if opts.gate == "out_gate":
            return 2.0 * torch.sigmoid(logits)
        return torch.sigmoid(opts.gate_scale * logits)

    def forward(self, x: Tensor, inputs: AttentionInputs | None = None) -> Tensor:
        assert inputs is None or self.options.side_inputs, "side inputs given to attention built without them"
        side = inputs if self.options.side_inputs else None
        bsz, seqlen, dim = x.shape
        q = F.rms_norm(self._heads(self.c_q(x), self.num_heads), (self.head_dim,))
        k = F.rms_norm(self._heads(self.c_k(x), self.num_kv_heads), (self.head_dim,))
        v = self._heads(self._values(x, side), self.num_kv_heads)
        cos, sin = self.rotary(seqlen, x.device, q.dtype)
        q = apply_rotary(q, cos, sin) * self.q_gain.to(dtype=q.dtype)[None, :, None, None]
        k = apply_rotary(k, cos, sin)
        y = attention_kernel(q, k, v) if side is None else attention_kernel(q, k, v, side.doc_mask, side.segments)
        if self.options.xsa:
            y = exclusive_self_attention(y, v)
        y = y.transpose(1, 2)
        if self.options.gate != "none":
            y = y * self._gate(x)[..., None]
        return self.proj(y.reshape(bsz, seqlen, dim))
