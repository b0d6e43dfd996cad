"""What the compile warm-up needs: every graph variant a run will switch to, and an exact training-state snapshot.

A compiled step is specialised on the model state its guards read. Two schedule-driven switches
change that state mid-run, so each setting is its own graph:

* depth recurrence: ``GPT.active_loops`` picks the virtual layer order (``NUM_LOOPS``, switched on at
  ``ENABLE_LOOPING_AT``);
* QAT: each CastedLinear's ``weight_fake_quant`` (``QAT_ENABLED``, late QAT switches it on below
  ``LATE_QAT_THRESHOLD``).

:func:`graph_variants` lists every (recurrence, QAT) combination the schedules can reach, in the
order training reaches them, so the warm-up compiles them all before the clock starts instead of inside the
timed run. :func:`capture` / :func:`restore` then undo the warm-up exactly: weights, optimizer state
(including per-group schedule values), recurrence, QAT functions and every RNG. A momentum kept
outside the optimizer state (PGOLF_MUON_KEEP_WARMUP_MOMENTUM on several ranks, R44's) stays as the
warm-up left it, as in R44.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import numpy as np
import torch

from pgolf.config import QuantConfig, TrainConfig
from pgolf.model.gpt import GPT
from pgolf.model.layers import CastedLinear
from pgolf.optim.groups import Optimizers
from pgolf.quant.qat import disable_qat, enable_qat, qat_is_on


@dataclass(frozen=True, order=True)
class GraphVariant:
    loops: int  # active extra passes of depth recurrence
    qat: bool

    def describe(self) -> str:
        return f"loops:{self.loops} qat:{'on' if self.qat else 'off'}"

    @property
    def training_frac(self) -> float:
        """A training fraction at which the recurrence schedule keeps this variant's setting."""
        return 1.0 if self.loops > 0 else 0.0


def graph_variants(model: GPT, train: TrainConfig, quant: QuantConfig) -> list[GraphVariant]:
    """Every variant the recurrence and QAT schedules can switch to, in the order training reaches them: those
    without recurrence first (the model's current variant first among its equals)."""
    start = GraphVariant(model.active_loops, quant.qat_enabled and qat_is_on(model))  # QAT is off unless enabled
    if not (model.cfg.num_loops > 0 or quant.qat_enabled):  # neither schedule switches anything (a bundle folds this)
        return [start]
    loops = {start.loops}
    if model.cfg.num_loops > 0:
        loops.add(model.cfg.num_loops)  # on from ENABLE_LOOPING_AT, and always for the final evaluation
        if train.enable_looping_at > 0:
            loops.add(0)
    qat = {start.qat, True} if quant.qat_enabled else {start.qat}
    others = sorted(GraphVariant(n, q) for n in loops for q in qat if GraphVariant(n, q) != start)
    # loops off first, as training reaches them (R44's warm-up: 20 steps, then 20 with its loops on)
    return sorted([start, *others], key=lambda v: v.training_frac)


def set_variant(model: GPT, variant: GraphVariant, quant: QuantConfig) -> None:
    model.set_recurrence(variant.loops)
    if quant.qat_enabled and variant.qat and not qat_is_on(model):  # QAT_ENABLED first: a bundle folds it
        enable_qat(model, quant.scheme)
    elif not variant.qat:
        # also with QAT off: it sets the instance attribute that restore() sets later, so the graph
        # compiled here keeps its guards in the timed run (no recompile)
        disable_qat(model)


@dataclass
class TrainingState:
    """Everything a training step can change, copied (tensors cloned, optimizer state deep-copied)."""

    weights: dict[str, torch.Tensor]
    optimizers: list[dict]
    loops: int
    fake_quant: dict[str, object]  # CastedLinear name -> its weight_fake_quant (None when off)
    rng: dict[str, object]


def _rng_state() -> dict[str, object]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, object]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def capture(model: GPT, opts: Optimizers) -> TrainingState:
    return TrainingState(
        weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        optimizers=[copy.deepcopy(sd) for sd in opts.state_dicts()],
        loops=model.active_loops,
        fake_quant={n: m.weight_fake_quant for n, m in model.named_modules() if isinstance(m, CastedLinear)},
        rng=_rng_state(),
    )


def restore(model: GPT, opts: Optimizers, state: TrainingState) -> None:
    model.load_state_dict(state.weights, strict=True)
    # Optimizer.load_state_dict also restores each group's lr, momentum and wd_scale the schedules set.
    opts.load_state_dicts(state.optimizers)
    opts.zero_grad()
    model.set_recurrence(state.loops)
    for name, module in model.named_modules():
        if isinstance(module, CastedLinear):
            module.weight_fake_quant = state.fake_quant[name]  # the same function objects the guards saw
    _set_rng_state(state.rng)
