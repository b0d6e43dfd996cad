"""Who is optimised by what, at which LR: the reference's optimizer split.

* the token embedding: Adam at TIED_EMBED_LR (EMBED_LR when untied);
* an untied lm_head: Adam at HEAD_LR;
* 2-D block matrices (not control tensors): Muon at MATRIX_LR;
* vectors, scalars, control tensors and ``skip_weights``: Adam at SCALAR_LR.

Each param group carries ``base_lr`` so the schedule can scale every LR by one multiplier.
With EMBED_WD / ADAM_WD > 0 the Adam groups become AdamW (decoupled decay, as R21/R27); at 0 they
stay plain Adam so the reference step is unchanged.

Record variants of the split (each checked against the record's own optimizer code in
tests/optim/test_record_optimizers.py):

* PGOLF_TABLE_PROJ_ADAM: the BigramHash and value-embedding projections go to the scalar Adam
  instead of Muon (R22: "small matrix params not worth banking");
* PGOLF_SMEAR_FROZEN: the SmearGate is in no optimizer and keeps its initial value (PR #1090's
  script never hands its gate to one; its gradient still counts in the clip norm, as there);
* a matrix whose module declares ``row_blocks`` > 1 (the fused SwiGLU ``fc``: gate and up) goes to
  a Muon group of its own that orthogonalises each row block separately, as the records' two
  matrices;
* PGOLF_MUON_MOMENTUM_BF16: Muon's gradients and momentum in bf16 (R22 / R44).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pgolf.config import OptimConfig
from pgolf.model.gpt import GPT
from pgolf.model.params import is_control_tensor
from pgolf.optim.muon import Muon
from pgolf.optim.parallel_muon import ParallelMuon


@dataclass
class Optimizers:
    """The optimizers of one model, stepped and scheduled together."""

    all: list[torch.optim.Optimizer]
    muon: Muon

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.all:
            opt.step()

    def set_lr_scale(self, scale: float) -> None:
        for opt in self.all:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale

    def set_muon_momentum(self, momentum: float) -> None:
        for group in self.muon.param_groups:
            group["momentum"] = momentum

    def set_muon_wd_scale(self, scale: float) -> None:
        """The WD taper's multiplier on MUON_WD (R40 tapers Muon's decay only)."""
        for group in self.muon.param_groups:
            group["wd_scale"] = scale

    def state_dicts(self) -> list[dict]:
        return [opt.state_dict() for opt in self.all]

    def load_state_dicts(self, states: list[dict]) -> None:
        for opt, state in zip(self.all, states, strict=True):
            opt.load_state_dict(state)


def split_block_params(model: GPT) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(Muon matrices, Adam scalars) among the block parameters, plus skip_weights as a scalar."""
    matrices, scalars = [], []
    for name, p in model.blocks.named_parameters():
        (scalars if p.ndim < 2 or is_control_tensor(name) else matrices).append(p)
    if model.skip_weights.numel() > 0:
        scalars.append(model.skip_weights)
    return matrices, scalars


def table_projections(model: GPT) -> list[torch.nn.Parameter]:
    """The BigramHash and value-embedding projections (PGOLF_TABLE_PROJ_ADAM gives them to Adam)."""
    return [m.proj.weight for m in (model.bigram, model.ve_shared) if m is not None]


def muon_param_groups(model: GPT, matrices: list[torch.nn.Parameter]) -> list[dict]:
    """One group of plain matrices, then one per ``row_blocks`` count > 1 (fused SwiGLU ``fc``)."""
    blocks = {id(m.weight): m.row_blocks for m in model.modules() if getattr(m, "row_blocks", 1) > 1}
    groups = [{"params": [p for p in matrices if id(p) not in blocks]}]
    for count in sorted(set(blocks.values())):
        groups.append({"params": [p for p in matrices if blocks.get(id(p)) == count], "row_blocks": count})
    return [g for g in groups if g["params"]]


def _adam(params, lr: float, cfg: OptimConfig, fused: bool, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    groups = [{"params": params, "lr": lr, "base_lr": lr}]
    if weight_decay > 0:
        return torch.optim.AdamW(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused,
                                 weight_decay=weight_decay)
    return torch.optim.Adam(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused)


def build_optimizers(model: GPT, cfg: OptimConfig, tie_embeddings: bool, per_rank_grads: bool = False) -> Optimizers:
    """``per_rank_grads``: Parallel Muon reduce-scatters its own gradients (multi-rank, banks outside DDP)."""
    fused = next(model.parameters()).is_cuda
    matrices, scalars = split_block_params(model)
    extra = model.extra_parameter_roles()  # record techniques' tables, projections and gates
    matrices, scalars = matrices + extra["matrix"], scalars + extra["scalar"]
    if cfg.table_proj_adam:
        moved = {id(p) for p in table_projections(model)}
        scalars = scalars + [p for p in matrices if id(p) in moved]
        matrices = [p for p in matrices if id(p) not in moved]
    if cfg.smear_frozen and model.smear is not None:
        frozen = {id(p) for p in model.smear.parameters()}
        scalars = [p for p in scalars if id(p) not in frozen]
    token_lr = cfg.tied_embed_lr if tie_embeddings else cfg.embed_lr
    opt_tok = _adam([model.tok_emb.weight, *extra["embed"]], token_lr, cfg, fused, cfg.embed_wd)
    # The options spelled out in each call, not gathered in a dict: a bundle then folds the ones its
    # configuration fixes into Muon itself (pgolf.bundle.propagate reads literal keyword arguments).
    grad_dtype = torch.bfloat16 if cfg.muon_momentum_bf16 else None
    muon_groups = muon_param_groups(model, matrices) if model.cfg.mlp_activation == "swiglu" else matrices
    if cfg.muon_parallel:
        muon: Muon = ParallelMuon(muon_groups, lr=cfg.matrix_lr, momentum=cfg.muon_momentum,
                                  backend_steps=cfg.muon_backend_steps, weight_decay=cfg.muon_wd,
                                  row_normalize=cfg.muon_row_normalize, ns_schedule=cfg.muon_ns_schedule,
                                  grad_dtype=grad_dtype, reduce_grads=per_rank_grads)
        if cfg.muon_keep_warmup_momentum and per_rank_grads:  # R44 under torchrun: the warm-up's restore leaves it
            muon.keep_momentum_outside_state()
    else:
        muon = Muon(muon_groups, lr=cfg.matrix_lr, momentum=cfg.muon_momentum, backend_steps=cfg.muon_backend_steps,
                    weight_decay=cfg.muon_wd, row_normalize=cfg.muon_row_normalize, ns_schedule=cfg.muon_ns_schedule,
                    grad_dtype=grad_dtype)
    for group in muon.param_groups:
        group["base_lr"] = cfg.matrix_lr
    opt_scalar = _adam(scalars, cfg.scalar_lr, cfg, fused, cfg.adam_wd)
    optimizers: list[torch.optim.Optimizer] = [opt_tok, muon, opt_scalar]
    if model.lm_head is not None:
        optimizers.insert(1, _adam([model.lm_head.weight], cfg.head_lr, cfg, fused, cfg.adam_wd))
    return Optimizers(optimizers, muon)
