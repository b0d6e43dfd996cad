"""The GPT: embedding, U-Net of blocks (encoder half pushes skips, decoder half pops them), tied head.

``state_dict`` keys are those of the challenge's reference ``train_gpt.py`` (``tok_emb.weight``,
``blocks.0.attn.c_q.weight``, ..., ``skip_weights``), so its checkpoints load as they are. Record
techniques switched on in :class:`~pgolf.config.ModelConfig` add their own keys; each lives in the
module of its concern: ``embed.py`` (factored embedding, BigramHash, SmearGate, value embeddings),
``attention.py`` (XSA, document masks, output gates, value residual), ``rope.py``, ``mlp.py``,
``block.py`` (LN scale, GPT-J form), ``residual.py`` (gated skips, parallel lanes), ``recurrence.py``,
``init.py`` and ``logits.py``. The fused Triton kernels (FUSED_CE, FUSED_MLP) live in
:mod:`pgolf.kernels`; :mod:`pgolf.model.fused` switches a built model over to them.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.attention import AttentionInputs, AttentionOptions
from pgolf.model.attn_backend import document_attention_inputs
from pgolf.model.block import Block
from pgolf.model.embed import (BigramHash, SmearGateV1, SmearGateV2, ValueEmbedding, embed_width, is_factored,
                               tied_head_input)
from pgolf.model.init import orthogonal_init_, overtone_embedding_, phased_resid_mix_
from pgolf.model.layers import CastedLinear, RMSNorm
from pgolf.model.logits import softcap, z_loss
from pgolf.model.params import is_control_tensor
from pgolf.model.recurrence import encoder_decoder, looped_layer_order
from pgolf.model.residual import final_lane, merge_skip, parallel_lambdas


def value_embedding_layers(cfg: ModelConfig) -> tuple[int, ...]:
    """Layers that receive value embeddings: VE_LAYERS, or the last two (a tuple: off, it is the
    literal ``()`` that a bundle folds)."""
    if not cfg.ve_enabled:
        return ()
    if cfg.ve_layers.strip():
        return tuple(int(i) for i in cfg.ve_layers.split(",") if i.strip())
    return tuple(range(max(0, cfg.num_layers - 2), cfg.num_layers))


def attention_options(cfg: ModelConfig, layer: int) -> AttentionOptions:
    gate = ("out_gate" if cfg.attn_out_gate_enabled else "gated" if cfg.gated_attn_enabled
            else "sparse" if cfg.sparse_attn_gate_enabled else "none")
    return AttentionOptions(
        xsa=cfg.xsa_last_n > 0 and layer >= cfg.num_layers - cfg.xsa_last_n,
        rope_dims=cfg.rope_dims,
        ntk_train_seq_len=cfg.rope_train_seq_len if cfg.rope_yarn else 0,
        gate=gate,
        gate_window=cfg.gate_window,
        gate_scale=cfg.sparse_attn_gate_scale,
        gate_init_std=cfg.gated_attn_init_std if gate == "gated" else 0.0,
        value_residual=cfg.value_residual and layer > 0,
        # every option that makes GPT._attention_inputs give more than None
        side_inputs=cfg.doc_isolated_attention or cfg.ve_enabled or cfg.value_residual,
    )


def build_block(cfg: ModelConfig, layer: int) -> Block:
    gptj = cfg.gptj_parallel or 0 <= cfg.parallel_residual_start <= layer  # GPTJ_PARALLEL: all; R35: from 7
    return Block(
        cfg.model_dim, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size, cfg.rope_base, cfg.qk_gain_init,
        attention=attention_options(cfg, layer), activation=cfg.mlp_activation, negative_slope=cfg.negative_slope,
        ln_scale=Block.ln_scale_for(layer) if cfg.ln_scale else 1.0, gptj_parallel=gptj,
    )


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        bos = cfg.bos_id
        self.tok_emb = nn.Embedding(cfg.vocab_size, embed_width(cfg))
        # Factored embedding (EMBED_DIM): the table's width k is lifted to d; the tied head maps back.
        factored = cfg.embed_dim != 0 and is_factored(cfg)  # EMBED_DIM=0: unfactored (spelled out so a bundle folds it)
        self.embed_proj = CastedLinear(embed_width(cfg), cfg.model_dim, bias=False) if factored else None
        own_head_proj = factored and cfg.tie_embeddings and not cfg.embed_proj_shared
        self.embed_proj_rev = CastedLinear(cfg.model_dim, embed_width(cfg), bias=False) if own_head_proj else None
        self.bigram = None if cfg.bigram_vocab_size <= 0 else BigramHash(
            cfg.bigram_vocab_size, cfg.bigram_dim, cfg.model_dim, cfg.bigram_hash, cfg.bigram_scale,
            cfg.bigram_init_std, bos if cfg.bigram_bos_fix else None)
        smear_bos = bos if cfg.smear_bos_fix else None
        self.smear = (SmearGateV1(cfg.model_dim, smear_bos, cfg.smear_gate_init, cfg.smear_gate_weighs) if cfg.use_smeargate
                      else SmearGateV2(cfg.gate_window, smear_bos) if cfg.smear_gate_enabled else None)
        # Virtual layer orders for 0..NUM_LOOPS extra passes; the U-Net is sized for the longest.
        self.layer_orders = [looped_layer_order(cfg.num_layers, cfg.loop_start, cfg.loop_end, n)
                             for n in range(cfg.num_loops + 1)]
        # Built with every loop on, as a trained model is evaluated (a loaded artifact then scores
        # as trained); a run that switches recurrence on late calls set_recurrence(False) first.
        self.active_loops = cfg.num_loops
        encoder, decoder = encoder_decoder(self.layer_orders[-1])
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(len(encoder), len(decoder))
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim, dtype=torch.float32))
        self.skip_gates = (nn.Parameter(torch.zeros(num_skips, cfg.model_dim, dtype=torch.float32))
                           if cfg.skip_gates_enabled else None)
        self.blocks = nn.ModuleList(build_block(cfg, i) for i in range(cfg.num_layers))
        self.ve_layers = value_embedding_layers(cfg)
        # what an option leaves out is None, not absent: reads of it then fold in a bundle
        if self.ve_layers:
            kv_dim = cfg.num_kv_heads * cfg.head_dim
            self.ve_shared = ValueEmbedding(cfg.vocab_size, cfg.ve_dim, kv_dim)
            self.ve_layer_scales = nn.Parameter(torch.ones(len(self.ve_layers), dtype=torch.float32))
        else:
            self.ve_shared = None
            self.ve_layer_scales = None
        if cfg.parallel_start_layer > 0:
            self.parallel_post_lambdas, self.parallel_resid_lambdas = parallel_lambdas(cfg.num_layers)
        else:
            self.parallel_post_lambdas = None
            self.parallel_resid_lambdas = None
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
        if self.cfg.overtone_init:
            overtone_embedding_(self.tok_emb.weight)
            phased_resid_mix_(self.blocks)
        for module in self.modules():
            if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)
        if self.cfg.ortho_init:
            orthogonal_init_(self, self.cfg.num_layers)

    # -- depth recurrence -------------------------------------------------------------------
    def set_recurrence(self, active: bool | int) -> None:
        """Extra passes over the looped layers: True = all NUM_LOOPS, False = none, n = n (progressive)."""
        loops = self.cfg.num_loops if active is True else int(active)
        if not 0 <= loops <= self.cfg.num_loops:
            raise ValueError(f"recurrence {active!r}: this model has NUM_LOOPS={self.cfg.num_loops}")
        self.active_loops = loops

    def layer_order(self) -> list[int]:
        """Physical block of each virtual layer at the current recurrence setting."""
        return self.layer_orders[self.active_loops]

    # -- forward ----------------------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        """The normed input stream x0 [batch, seq, dim]."""
        x = self.tok_emb(input_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        if self.bigram is not None:
            x = x + self.bigram(input_ids)
        if self.smear is None:
            return F.rms_norm(x, (x.size(-1),))
        if self.cfg.smear_after_norm:
            return self.smear(F.rms_norm(x, (x.size(-1),)), input_ids)
        return F.rms_norm(self.smear(x, input_ids), (x.size(-1),))

    def hidden(self, input_ids: Tensor) -> Tensor:
        """Final-normed hidden states [batch, seq, dim]."""
        x0 = self.embed(input_ids)
        inputs_for = self._attention_inputs(input_ids)
        encoder, decoder = encoder_decoder(self.layer_order())
        x, skips = x0, []
        for i in encoder:
            x = self.blocks[i](x, x0, inputs_for(i))
            skips.append(x)
        return self.final_norm(self._decode(x, x0, skips, decoder, inputs_for))

    def _attention_inputs(self, input_ids: Tensor) -> Callable[[int], AttentionInputs | None]:
        """Per-layer side inputs of attention; None throughout when no option needs any (the reference)."""
        cfg = self.cfg
        # R44's GPTQ calibration forward cuts no document (pgolf.quant.calibration.plain_causal sets it;
        # read with getattr so that a bundle with the switch off keeps no trace of it)
        cut = cfg.doc_isolated_attention and not getattr(self, "plain_causal", False)
        if not (cut or self.ve_layers or cfg.value_residual):  # attention_options' side_inputs covers each
            return lambda layer: None
        # SDPA: a block-diagonal causal mask; FA3: varlen segments (pgolf.model.attn_backend). R44's
        # global SGD rows cut at another length (pgolf.eval.ttt.phased.cut_every sets ``cut_length``; an
        # attribute of its own, so that a bundle still folds every field of ``self.cfg``)
        cut_length = getattr(self, "cut_length", 0) or cfg.max_doc_len
        doc_mask, segments = document_attention_inputs(input_ids, cfg.bos_id, cut_length) if cut else (None, None)
        shared = AttentionInputs(doc_mask=doc_mask, segments=segments)  # first_values is filled in by the first layer
        shared_ve = self.ve_shared(input_ids) if self.ve_layers else None

        def inputs_for(layer: int) -> AttentionInputs:
            shared.value_embed = None
            if shared_ve is not None and layer in self.ve_layers:
                scale = self.ve_layer_scales[self.ve_layers.index(layer)]
                shared.value_embed = shared_ve * scale.to(shared_ve.dtype)
            return shared

        return inputs_for

    def _merge_skip(self, x: Tensor, skip: Tensor, j: int) -> Tensor:
        gate = None if self.skip_gates is None else self.skip_gates[j]
        return merge_skip(x, skip, self.skip_weights[j], gate)

    def _decode(self, x: Tensor, x0: Tensor, skips: list[Tensor], decoder: list[int], inputs_for) -> Tensor:
        """The decoder half: pop U-Net skips; from the first layer >= PARALLEL_START_LAYER on, two lanes."""
        lanes: tuple[Tensor, Tensor] | None = None
        for j, i in enumerate(decoder):
            skip = skips.pop() if j < self.skip_weights.size(0) and skips else None
            # the switch is tested first so that, off, the two-lane code folds away in a bundle
            if self.cfg.parallel_start_layer and (lanes is not None or self.cfg.parallel_start_layer <= i):
                lanes = lanes or (x, x)
                lane0 = lanes[0] if skip is None else self._merge_skip(lanes[0], skip, j)
                lanes = self.blocks[i].forward_lanes(
                    lane0, lanes[1], x0, self.parallel_post_lambdas[i], self.parallel_resid_lambdas[i], inputs_for(i))
                continue
            if skip is not None:
                x = self._merge_skip(x, skip, j)
            x = self.blocks[i](x, x0, inputs_for(i))
        return x if lanes is None else final_lane(*lanes, self.cfg.parallel_final_lane)

    def logits(self, input_ids: Tensor) -> Tensor:
        """Softcapped logits [batch, seq, vocab] in the activation dtype."""
        return self.head(self.hidden(input_ids))

    def head(self, x: Tensor) -> Tensor:
        """Softcapped logits of final-normed hidden states [..., dim] (sliding evaluation calls it on scored positions only)."""
        return softcap(self.head_projection(x), self.cfg.logit_softcap, self.cfg.logit_softcap_kind)

    def head_projection(self, x: Tensor) -> Tensor:
        """The logits before the softcap."""
        if self.lm_head is None:
            return F.linear(tied_head_input(x, self.embed_proj, self.embed_proj_rev), self.tok_emb.weight.to(x.dtype))
        return F.linear(x, self.lm_head.weight.to(x.dtype))

    def forward(self, input_ids: Tensor, target_ids: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy in nats (fp32): the mean, or per target with ``reduction="none"``.

        With Z_LOSS > 0 the training loss (reduction "mean" in training mode) adds the z-loss;
        evaluation and per-token losses are always the plain cross-entropy.
        """
        logits = self.logits(input_ids)
        flat = logits.float().reshape(-1, logits.size(-1))
        loss = F.cross_entropy(flat, target_ids.reshape(-1), reduction=reduction)
        if reduction == "none":
            return loss.view_as(target_ids)
        if self.cfg.z_loss > 0 and self.training and reduction == "mean":
            loss = loss + self.cfg.z_loss * z_loss(flat)
        return loss

    # -- optimizer roles --------------------------------------------------------------------
    def extra_parameter_roles(self) -> dict[str, list[nn.Parameter]]:
        """Parameters outside the blocks that the reference does not have, by optimizer role.

        ``embed``: tables trained with Adam at the token-embedding LR; ``matrix``: Muon;
        ``scalar``: Adam at SCALAR_LR. Empty lists for the reference model.
        """
        roles: dict[str, list[nn.Parameter]] = {"embed": [], "matrix": [], "scalar": []}
        for proj in (self.embed_proj, self.embed_proj_rev):
            if proj is not None:
                roles["matrix"].append(proj.weight)
        for module in (self.bigram, self.ve_shared):
            if module is not None:
                roles["embed"].append(module.table.weight)
                roles["matrix"].append(module.proj.weight)
                if module.scale is not None:
                    roles["scalar"].append(module.scale)
        if self.smear is not None:
            roles["scalar"].extend(self.smear.parameters())
        for scalars in (self.skip_gates, self.ve_layer_scales, self.parallel_post_lambdas, self.parallel_resid_lambdas):
            if scalars is not None:
                roles["scalar"].append(scalars)
        return roles


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
