"""Presets as code: each is a function returning a complete :class:`~pgolf.config.Config`.

A preset names its source record and the score that record reported on 8xH100. Variants call
their base preset and change what differs, so a diff between two presets is a few lines. A TOML
file can also serve as a preset (``--preset path/to/file.toml``): ``base = "NAME"`` plus sections
of fields, e.g. ``[model]\\nnum_layers = 11``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pgolf.config import Config, apply_env, apply_overrides, from_dict, load_toml, set_value, validate
from pgolf.errors import PgolfError

PRESETS: dict[str, Callable[[], Config]] = {}
PRESET_SOURCES: dict[str, str] = {}


def preset(name: str, source: str):
    def register(fn: Callable[[], Config]) -> Callable[[], Config]:
        PRESETS[name] = fn
        PRESET_SOURCES[name] = source
        return fn

    return register


@preset("baseline", "records/track_10min_16mb/2026-03-17_NaiveBaseline: 1.2244 val_bpb on 8xH100")
def baseline() -> Config:
    """The challenge's reference train_gpt.py, defaults unchanged: 9x512, sp1024, 17,059,912 params."""
    cfg = Config()
    cfg.preset = "baseline"
    return cfg


@preset("tiny_cpu", "pgolf: a 2-layer model for tests and CPU smoke runs (no record)")
def tiny_cpu() -> Config:
    """Small enough to train for tens of steps on one CPU core in seconds; same code paths as baseline."""
    cfg = baseline()
    cfg.preset = "tiny_cpu"
    m, t, e = cfg.model, cfg.train, cfg.eval
    m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = 2, 64, 4, 2
    t.iterations, t.warmdown_iters, t.warmup_steps = 50, 10, 0
    t.train_batch_tokens, t.train_seq_len, t.grad_accum_steps = 2048, 128, 1
    t.max_wallclock_seconds, t.val_loss_every, t.train_log_every = 0.0, 0, 10
    t.device, t.compile = "cpu", "0"
    e.val_batch_size = 16 * 128
    return cfg


@preset("demo_cpu", "pgolf: the `pgolf demo` model, about two minutes of training on a 2-core CPU")
def demo_cpu() -> Config:
    cfg = tiny_cpu()
    cfg.preset = "demo_cpu"
    m, t = cfg.model, cfg.train
    m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads = 512, 4, 128, 4, 2
    t.iterations, t.warmdown_iters, t.max_wallclock_seconds = 100_000, 150, 120.0
    t.train_batch_tokens, t.train_seq_len = 8192, 256
    t.train_log_every = 25
    cfg.eval.val_batch_size = 16 * 256
    return cfg


@preset("smeargate_orthoinit_muonwd",
        "records/track_10min_16mb/2026-03-19_smeargate_orthoinit_muonwd (R15): 1.1556 val_bpb on 8xH100")
def smeargate_orthoinit_muonwd() -> Config:
    """R15's architecture: 9x512, MLP 3x, BigramHash 4096x128 (R15's multiplicative hash), SmearGate v1,
    orthogonal init; 22,368,840 parameters, as its train.log reports. Its LRs and Muon momentum too.

    Not here yet (no config field for them): Muon weight decay 0.01, int6 STE fake-quant during
    training, int6 + zstd-22 export with the tied embedding in fp16, sliding-window eval stride 64.
    """
    cfg = baseline()
    cfg.preset = "smeargate_orthoinit_muonwd"
    m, o, t = cfg.model, cfg.optim, cfg.train
    m.mlp_mult = 3
    m.bigram_vocab_size, m.bigram_dim, m.bigram_hash, m.bigram_scale, m.bigram_init_std = 4096, 128, "mul", 0.0, 0.01
    m.use_smeargate, m.ortho_init = True, True
    o.tied_embed_lr, o.matrix_lr, o.scalar_lr = 0.03, 0.02, 0.02
    o.muon_momentum, o.muon_momentum_warmup_start, o.muon_momentum_warmup_steps = 0.99, 0.92, 1500
    t.warmdown_iters = 3000
    return cfg


def resolve_preset(name_or_path: str) -> Config:
    """A registered preset by name, or a TOML file (with an optional ``base``)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]()
    path = Path(name_or_path)
    if path.suffix == ".toml":
        base, sections = load_toml(path)
        cfg = resolve_preset(base) if base else Config()
        overlay = from_dict(sections)  # checks section and field names
        for section, values in sections.items():
            for key in values:
                set_value(cfg, f"{section}.{key}", getattr(getattr(overlay, section), key))
        cfg.preset = str(path)
        return cfg
    known = ", ".join(sorted(PRESETS))
    raise PgolfError(f"unknown preset {name_or_path!r} (known: {known}; or a .toml file)")


def build_config(preset_name: str = "baseline", overrides: list[str] | None = None, environ=None) -> Config:
    """Preset, then the reference env vars, then ``--set`` overrides; validated."""
    cfg = resolve_preset(preset_name)
    apply_env(cfg, environ)
    apply_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg
