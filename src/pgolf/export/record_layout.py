"""Each record's own state-dict layout, and the conversion between it and pgolf's.

A record's ``main()`` saves ``torch.save(base_model.state_dict(), "final_model.pt")`` with its own
module names, and some records keep the block matrices in parameter banks. pgolf's model computes
the same function with one set of names (the reference's, plus one module per technique), so a
record's checkpoint is pgolf's after a few renames and reshapes, and back. One table per record
preset lists them, as steps applied in order to read a record's file (``to_pgolf``) and undone in
reverse order to write one (``to_record``):

* :class:`Renamed`: key prefixes (``bigram_hash.`` in R15 is pgolf's ``bigram.``).
* :class:`Banked`: R22's and R44's parameter banks. ``qo_bank`` [2L, d, d] holds every layer's
  query matrix, then every layer's attention output projection; ``kv_bank`` [2L, kv, d] the keys,
  then the values; ``mlp_up_bank`` [L, h, d] and ``mlp_down_bank`` [L, d, h] the MLP matrices.
* :class:`SwiGLUHalves`: PR #1090's SwiGLU keeps ``mlp.gate`` and ``mlp.up`` apart; pgolf's ``mlp.fc``
  is the two stacked (gate rows first).
* :class:`ScalarList`: R22's ``ve_layer_scales`` is a ParameterList of one-element tensors
  (``ve_layer_scales.0``, ...); pgolf's is one vector.

The reference, PR #160 and R35 already use pgolf's names: their tables are empty. Only names and
shapes change, never values: SmearGate's direction, which R22 and PR #1090 turn round, is a model
option (``PGOLF_SMEAR_GATE_WEIGHS``) that their presets set, so every record's gate value means
the same in both layouts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

import torch
from torch import Tensor

from pgolf.errors import PgolfError

State = dict[str, Tensor]


class Step(Protocol):
    def to_pgolf(self, state: State) -> State: ...

    def to_record(self, state: State) -> State: ...


@dataclass(frozen=True)
class Renamed:
    """Key prefixes: (record's, pgolf's) pairs."""

    pairs: tuple[tuple[str, str], ...]

    @staticmethod
    def _apply(state: State, pairs) -> State:
        out: State = {}
        for key, t in state.items():
            new = next((to + key[len(frm):] for frm, to in pairs if key.startswith(frm)), key)
            out[new] = t
        return out

    def to_pgolf(self, state: State) -> State:
        return self._apply(state, self.pairs)

    def to_record(self, state: State) -> State:
        return self._apply(state, tuple((p, r) for r, p in self.pairs))


# bank name -> the per-block tensors it stacks, in bank order (all layers of the first, then the next)
BANKS = {
    "qo_bank": ("attn.c_q.weight", "attn.proj.weight"),
    "kv_bank": ("attn.c_k.weight", "attn.c_v.weight"),
    "mlp_up_bank": ("mlp.fc.weight",),
    "mlp_down_bank": ("mlp.proj.weight",),
}


def _num_blocks(state: State) -> int:
    layers = {int(m.group(1)) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))}
    return max(layers) + 1 if layers else 0


@dataclass(frozen=True)
class Banked:
    """R22/R44 parameter banks (see :data:`BANKS`)."""

    def to_pgolf(self, state: State) -> State:
        out = {k: t for k, t in state.items() if k not in BANKS}
        for bank, parts in BANKS.items():
            if bank not in state:
                continue
            stacked = state[bank]
            layers = stacked.size(0) // len(parts)
            for j, part in enumerate(parts):
                for i in range(layers):
                    out[f"blocks.{i}.{part}"] = stacked[j * layers + i].clone()
        return out

    def to_record(self, state: State) -> State:
        layers = _num_blocks(state)
        banked = {f"blocks.{i}.{part}" for parts in BANKS.values() for part in parts for i in range(layers)}
        out = {k: t for k, t in state.items() if k not in banked}
        for bank, parts in BANKS.items():
            out[bank] = torch.stack([state[f"blocks.{i}.{part}"] for part in parts for i in range(layers)])
        return out


@dataclass(frozen=True)
class SwiGLUHalves:
    """PR #1090: ``mlp.gate.weight`` and ``mlp.up.weight`` <-> pgolf's ``mlp.fc.weight`` (gate rows first)."""

    def to_pgolf(self, state: State) -> State:
        out: State = {}
        for key, t in state.items():
            if key.endswith(".mlp.up.weight"):
                continue
            if key.endswith(".mlp.gate.weight"):
                prefix = key.removesuffix("gate.weight")
                up = state.get(prefix + "up.weight")
                out[prefix + "fc.weight"] = t if up is None else torch.cat((t, up))
                continue
            out[key] = t
        return out

    def to_record(self, state: State) -> State:
        out: State = {}
        for key, t in state.items():
            if re.fullmatch(r"blocks\.\d+\.mlp\.fc\.weight", key):
                prefix = key.removesuffix("fc.weight")
                out[prefix + "gate.weight"], out[prefix + "up.weight"] = (h.clone() for h in t.chunk(2))
            else:
                out[key] = t
        return out


@dataclass(frozen=True)
class ScalarList:
    """A ParameterList of one-element tensors (``name.0``, ``name.1``, ...) <-> one vector ``name``."""

    name: str

    def to_pgolf(self, state: State) -> State:
        pattern = re.compile(re.escape(self.name) + r"\.(\d+)")
        items = sorted((int(m.group(1)), k) for k in state if (m := pattern.fullmatch(k)))
        out = {k: t for k, t in state.items() if not pattern.fullmatch(k)}
        if items:
            out[self.name] = torch.cat([state[k].reshape(-1) for _, k in items])
        return out

    def to_record(self, state: State) -> State:
        out = {k: t for k, t in state.items() if k != self.name}
        if self.name in state:
            for i, t in enumerate(state[self.name].reshape(-1, 1)):
                out[f"{self.name}.{i}"] = t.clone()
        return out


@dataclass(frozen=True)
class RecordLayout:
    record: str
    steps: tuple[Step, ...] = ()

    def to_pgolf(self, state: State) -> State:
        for step in self.steps:
            state = step.to_pgolf(state)
        return state

    def to_record(self, state: State) -> State:
        for step in reversed(self.steps):
            state = step.to_record(state)
        return state


LAYOUTS: dict[str, RecordLayout] = {
    "baseline": RecordLayout("the reference train_gpt.py"),
    "mlp3x_int8emb_seq2048": RecordLayout("PR #160"),
    "sp8192_recur_parres_ttt": RecordLayout("R35 (PR #1493)"),
    "smeargate_orthoinit_muonwd": RecordLayout(
        "R15 (PR #65)", (Renamed((("bigram_hash.", "bigram."), ("smeargate.", "smear."))),)),
    "leakyrelu_ttt_parallel_muon": RecordLayout("R22 (PR #549)", (
        Banked(),
        Renamed((("bigram.embed.", "bigram.table."), ("ve_shared.embed.", "ve_shared.table."))),
        ScalarList("ve_layer_scales"),
    )),
    "xsa_swiglu_lora_ttt_1xh100": RecordLayout("PR #1090", (SwiGLUHalves(),)),
    "sp8192_lqer_sparsegate_bossmear": RecordLayout("R44 (PR #1855)", (
        Banked(),
        Renamed((("smear_gate.weight", "smear.gate"), ("smear_lambda", "smear.lam"))),
    )),
}


def layout_for(preset: str) -> RecordLayout | None:
    """The record layout of a preset name, or of the preset a TOML preset file builds on."""
    if preset in LAYOUTS:
        return LAYOUTS[preset]
    if preset.endswith(".toml") and Path(preset).is_file():
        from pgolf.config import load_toml

        base, _ = load_toml(Path(preset))
        return layout_for(base) if base else None
    return None


def in_pgolf_layout(state: State, expected: Mapping[str, Tensor], preset: str) -> State:
    """``state`` when it has pgolf's keys; else its conversion from the preset's record layout when
    that gives exactly pgolf's keys; else ``state`` unchanged (the caller names what does not fit)."""
    if set(state) == set(expected):
        return state
    layout = layout_for(preset)
    if layout is None or not layout.steps:
        return state
    converted = layout.to_pgolf(state)
    return converted if set(converted) == set(expected) else state


def record_layout(preset: str) -> RecordLayout:
    """The layout of the record the preset reproduces; PgolfError for a preset that reproduces none."""
    layout = layout_for(preset)
    if layout is None:
        known = ", ".join(sorted(LAYOUTS))
        raise PgolfError(f"preset {preset!r} reproduces no record, so it has no record layout (record presets: {known})")
    return layout
