"""The GPT: embedding, U-Net of blocks (encoder half pushes skips, decoder half pops them), tied head.

``state_dict`` keys are those of the challenge's reference ``train_gpt.py`` (``tok_emb.weight``,
``blocks.0.attn.c_q.weight``, ..., ``skip_weights``), so its checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.block import Block
from pgolf.model.layers import CastedLinear, RMSNorm
from pgolf.model.params import is_control_tensor


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim, dtype=torch.float32))
        hidden = cfg.mlp_mult * cfg.model_dim
        self.blocks = nn.ModuleList(
            Block(cfg.model_dim, cfg.num_heads, cfg.num_kv_heads, hidden, cfg.rope_base, cfg.qk_gain_init)
            for _ in range(cfg.num_layers)
        )
        self.final_norm = RMSNorm()
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, bias=False)
        if self.lm_head is not None:
            self.lm_head._zero_init = True
        self._init_weights()

    def _init_weights(self) -> None:
        # Linear layers keep PyTorch's default init except the zero-initialised output projections,
        # so every block starts as the identity on the residual stream.
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)

    def hidden(self, input_ids: Tensor) -> Tensor:
        """Final-normed hidden states [batch, seq, dim]."""
        x = self.tok_emb(input_ids)
        x = F.rms_norm(x, (x.size(-1),))
        x0 = x
        skips: list[Tensor] = []
        for i in range(self.num_encoder_layers):
            x = self.blocks[i](x, x0)
            skips.append(x)
        for i in range(self.num_decoder_layers):
            if skips:
                x = x + self.skip_weights[i].to(dtype=x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[self.num_encoder_layers + i](x, x0)
        return self.final_norm(x)

    def logits(self, input_ids: Tensor) -> Tensor:
        """Softcapped logits [batch, seq, vocab] in the activation dtype."""
        x = self.hidden(input_ids)
        weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        proj = F.linear(x, weight.to(x.dtype))
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(proj / cap)

    def forward(self, input_ids: Tensor, target_ids: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy in nats (fp32): the mean, or per target with ``reduction="none"``."""
        logits = self.logits(input_ids)
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction=reduction
        )
        return loss if reduction != "none" else loss.view_as(target_ids)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> GPT:
    """Build on ``device`` with the reference's dtype policy there (see :func:`apply_dtype_policy`)."""
    model = GPT(cfg).to(device)
    apply_dtype_policy(model, torch.device(device))
    return model


def apply_dtype_policy(model: GPT, device: torch.device) -> None:
    """On CUDA, as the reference: everything bf16, then linear weights and control tensors back to fp32.

    That leaves the token embedding in bf16 on GPU, exactly as the reference trains it. On CPU
    the whole model stays fp32.
    """
    if device.type != "cuda":
        model.float()
        return
    model.bfloat16()
    for module in model.modules():
        if isinstance(module, CastedLinear):
            module.float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (param.ndim < 2 or is_control_tensor(name)) and param.dtype != torch.float32:
                param.data = param.data.float()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
