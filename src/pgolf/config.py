"""The one configuration schema: typed sections, the reference's environment variable names, overrides.

Every field of every section carries the environment variable name the reference ``train_gpt.py``
(and the records built on it) reads, so a record's command line such as
``NUM_LAYERS=11 TRAIN_SEQ_LEN=2048 pgolf train --preset baseline`` means what it meant there.
Resolution order, later wins: preset defaults, then environment variables, then ``--set`` overrides
(``--set model.num_layers=11`` or ``--set NUM_LAYERS=11``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from pgolf.errors import PgolfError


def _f(default: Any, env: str | None, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass
class DataConfig:
    data_path: str = _f("./data/datasets/fineweb10B_sp1024", "DATA_PATH", "folder with fineweb_{train,val}_*.bin shards")
    tokenizer_path: str = _f("./data/tokenizers/fineweb_1024_bpe.model", "TOKENIZER_PATH", "SentencePiece .model file")
    train_files: str = _f("", "TRAIN_FILES", "train shard glob; empty means DATA_PATH/fineweb_train_*.bin")
    val_files: str = _f("", "VAL_FILES", "val shard glob; empty means DATA_PATH/fineweb_val_*.bin")

    def train_glob(self) -> str:
        return self.train_files or os.path.join(self.data_path, "fineweb_train_*.bin")

    def val_glob(self) -> str:
        return self.val_files or os.path.join(self.data_path, "fineweb_val_*.bin")


@dataclass
class ModelConfig:
    vocab_size: int = _f(1024, "VOCAB_SIZE", "vocabulary size; must equal the tokenizer's")
    num_layers: int = _f(9, "NUM_LAYERS", "transformer blocks (first half encoder, second half decoder with U-Net skips)")
    model_dim: int = _f(512, "MODEL_DIM", "residual width")
    num_heads: int = _f(8, "NUM_HEADS", "query heads")
    num_kv_heads: int = _f(4, "NUM_KV_HEADS", "key/value heads (GQA)")
    mlp_mult: int = _f(2, "MLP_MULT", "MLP hidden size as a multiple of model_dim")
    tie_embeddings: bool = _f(True, "TIE_EMBEDDINGS", "share the token embedding with the output head")
    tied_embed_init_std: float = _f(0.005, "TIED_EMBED_INIT_STD", "init std of the tied embedding")
    logit_softcap: float = _f(30.0, "LOGIT_SOFTCAP", "logits = c * tanh(logits / c)")
    rope_base: float = _f(10000.0, "ROPE_BASE", "RoPE base frequency")
    qk_gain_init: float = _f(1.5, "QK_GAIN_INIT", "initial per-head gain on normalized queries")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads


@dataclass
class OptimConfig:
    embed_lr: float = _f(0.6, "EMBED_LR", "Adam LR of an untied token embedding")
    head_lr: float = _f(0.008, "HEAD_LR", "Adam LR of an untied lm_head")
    tied_embed_lr: float = _f(0.05, "TIED_EMBED_LR", "Adam LR of the tied embedding")
    matrix_lr: float = _f(0.04, "MATRIX_LR", "Muon LR of block matrices")
    scalar_lr: float = _f(0.04, "SCALAR_LR", "Adam LR of vectors, scalars and control tensors")
    muon_momentum: float = _f(0.95, "MUON_MOMENTUM", "Muon momentum after warm-up")
    muon_backend_steps: int = _f(5, "MUON_BACKEND_STEPS", "Newton-Schulz iterations")
    muon_momentum_warmup_start: float = _f(0.85, "MUON_MOMENTUM_WARMUP_START", "Muon momentum at step 0")
    muon_momentum_warmup_steps: int = _f(500, "MUON_MOMENTUM_WARMUP_STEPS", "steps of linear momentum warm-up")
    beta1: float = _f(0.9, "BETA1", "Adam beta1")
    beta2: float = _f(0.95, "BETA2", "Adam beta2")
    adam_eps: float = _f(1e-8, "ADAM_EPS", "Adam epsilon")
    grad_clip_norm: float = _f(0.0, "GRAD_CLIP_NORM", "global grad-norm clip; 0 disables")


@dataclass
class TrainConfig:
    seed: int = _f(1337, "SEED", "seed for torch, numpy and random")
    run_id: str = _f("", "RUN_ID", "run directory name; empty means a timestamp plus a short random id")
    iterations: int = _f(20000, "ITERATIONS", "maximum optimizer steps")
    warmdown_iters: int = _f(1200, "WARMDOWN_ITERS", "linear LR warm-down length (in steps, converted to time under a cap)")
    warmup_steps: int = _f(20, "WARMUP_STEPS", "compile warm-up steps, undone afterwards (not an LR warm-up)")
    train_batch_tokens: int = _f(524_288, "TRAIN_BATCH_TOKENS", "tokens per optimizer step, summed over ranks")
    train_seq_len: int = _f(1024, "TRAIN_SEQ_LEN", "training sequence length")
    max_wallclock_seconds: float = _f(600.0, "MAX_WALLCLOCK_SECONDS", "training time cap; 0 disables")
    grad_accum_steps: int = _f(0, "GRAD_ACCUM_STEPS", "micro-steps per step; 0 means 8 // WORLD_SIZE as the reference")
    val_loss_every: int = _f(1000, "VAL_LOSS_EVERY", "validate every N steps; 0 only at the end")
    train_log_every: int = _f(200, "TRAIN_LOG_EVERY", "log train loss every N steps")
    compile: str = _f("auto", "PGOLF_COMPILE", "torch.compile the model: auto (on CUDA only), 1 or 0")
    attn_backend: str = _f("auto", "PGOLF_ATTN_BACKEND", "attention kernel: auto, fa3 or sdpa")
    device: str = _f("auto", "PGOLF_DEVICE", "auto, cpu or cuda")


@dataclass
class EvalConfig:
    val_batch_size: int = _f(524_288, "VAL_BATCH_SIZE", "validation tokens per batch, summed over ranks")
    eval_seq_len: int = _f(0, "EVAL_SEQ_LEN", "evaluation window length; 0 means TRAIN_SEQ_LEN")
    val_max_tokens: int = _f(0, "VAL_MAX_TOKENS", "score only the first N val tokens (quick checks); 0 means all")


@dataclass
class QuantConfig:
    scheme: str = _f(
        "int8", "PGOLF_QUANT_SCHEME",
        "export quantization policy (pgolf.quant.policy), e.g. 'embed=int8,attn=int6:mse,mlp=int5'; int8 is the reference's per-row int8",
    )
    compressor: str = _f("zlib", "PGOLF_COMPRESSOR", "artifact compressor: zlib (reference, level 9), lzma, zstd, brotli, lrzip or auto (smallest)")
    byte_shuffle: bool = _f(False, "PGOLF_BYTE_SHUFFLE", "store fp16/fp32 tensors byte-plane by byte-plane in the artifact")
    qat_enabled: bool = _f(False, "QAT_ENABLED", "straight-through fake quantization of linear weights by the export policy")
    late_qat_threshold: float = _f(
        0.0, "LATE_QAT_THRESHOLD", "with QAT_ENABLED: switch QAT on once the LR scale drops below this (0: from the first step)"
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    preset: str = "custom"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def copy(self) -> "Config":
        return from_dict(self.to_dict())

    @property
    def eval_seq_len(self) -> int:
        return self.eval.eval_seq_len or self.train.train_seq_len


SECTIONS = ("data", "model", "optim", "train", "eval", "quant")


def iter_fields(cfg: Config):
    """Yield (section, field) for every configurable field."""
    for section in SECTIONS:
        for f in fields(getattr(cfg, section)):
            yield section, f


def _env_index(cfg: Config) -> dict[str, tuple[str, str]]:
    return {f.metadata["env"]: (section, f.name) for section, f in iter_fields(cfg) if f.metadata.get("env")}


def parse_value(raw: str, kind: type | str, key: str) -> Any:
    """Parse a string override for a field of type ``kind``; bad values name the key."""
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind) if isinstance(kind, str) else kind
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return _parse_int(raw)
        if kind is float:
            return float(raw)
        return str(raw)
    except ValueError:
        raise PgolfError(f"{key}={raw!r}: expected a {kind.__name__}") from None


def _parse_int(raw: str) -> int:
    """Accept ``524288`` as well as ``5.24288e5`` (an integral float), nothing fractional."""
    try:
        return int(raw)
    except ValueError:
        value = float(raw)
        if not value.is_integer():
            raise
        return int(value)


def _field_type(section_obj: Any, name: str):
    for f in fields(section_obj):
        if f.name == name:
            return f.type
    raise KeyError(name)


def set_value(cfg: Config, key: str, raw: str | Any) -> None:
    """Set one field from ``section.name`` or a reference env name (e.g. ``NUM_LAYERS``)."""
    env = _env_index(cfg)
    if key in env:
        section, name = env[key]
    elif "." in key and key.split(".", 1)[0] in SECTIONS:
        section, name = key.split(".", 1)
    else:
        raise PgolfError(f"unknown config key {key!r} (use section.field or a reference env name; see `pgolf config show`)")
    obj = getattr(cfg, section)
    try:
        kind = _field_type(obj, name)
    except KeyError:
        raise PgolfError(f"unknown config key {key!r}: section {section!r} has no field {name!r}") from None
    value = parse_value(raw if isinstance(raw, str) else _as_text(raw), kind, key)
    setattr(obj, name, value)


def _as_text(value: Any) -> str:
    """Typed values (from JSON or TOML) go through the same parser as strings, so types are checked."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def apply_env(cfg: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Apply every reference env var present in ``environ``; return the names applied."""
    environ = os.environ if environ is None else environ
    applied = []
    for name in _env_index(cfg):
        if name in environ:
            set_value(cfg, name, environ[name])
            applied.append(name)
    return applied


def apply_overrides(cfg: Config, overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise PgolfError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        set_value(cfg, key.strip(), raw.strip())


def from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (unknown keys are an error, missing keys keep defaults)."""
    cfg = Config()
    for section, values in data.items():
        if section == "preset":
            cfg.preset = str(values)
            continue
        if section not in SECTIONS or not isinstance(values, Mapping):
            raise PgolfError(f"config: unknown section {section!r}")
        for name, value in values.items():
            set_value(cfg, f"{section}.{name}", value)
    return cfg


def _validate_quant(q: QuantConfig) -> None:
    from pgolf.export.codecs import AUTO, CODEC_IDS
    from pgolf.quant.policy import parse_policy

    parse_policy(q.scheme)
    if q.compressor != AUTO and q.compressor not in CODEC_IDS:
        raise PgolfError(f"PGOLF_COMPRESSOR={q.compressor!r}: expected one of {', '.join(CODEC_IDS)} or {AUTO}")
    if not 0.0 <= q.late_qat_threshold <= 1.0:
        raise PgolfError(f"LATE_QAT_THRESHOLD={q.late_qat_threshold}: expected a value in [0, 1]")


def validate(cfg: Config) -> None:
    """Cross-field checks that would otherwise fail deep inside training."""
    m, t = cfg.model, cfg.train
    if m.model_dim % m.num_heads:
        raise PgolfError(f"MODEL_DIM={m.model_dim} must be divisible by NUM_HEADS={m.num_heads}")
    if m.num_heads % m.num_kv_heads:
        raise PgolfError(f"NUM_HEADS={m.num_heads} must be divisible by NUM_KV_HEADS={m.num_kv_heads}")
    if m.head_dim % 2:
        raise PgolfError(f"head dim {m.head_dim} must be even for RoPE")
    if m.logit_softcap <= 0:
        raise PgolfError(f"LOGIT_SOFTCAP={m.logit_softcap} must be positive")
    if m.vocab_size <= 0 or m.vocab_size > 1 << 16:
        raise PgolfError(f"VOCAB_SIZE={m.vocab_size} must lie in 1..65536 (shards store uint16)")
    if t.train_seq_len <= 0 or t.train_batch_tokens <= 0:
        raise PgolfError("TRAIN_SEQ_LEN and TRAIN_BATCH_TOKENS must be positive")
    if t.compile not in ("auto", "0", "1"):
        raise PgolfError(f"PGOLF_COMPILE={t.compile!r}: expected auto, 0 or 1")
    if t.attn_backend not in ("auto", "fa3", "sdpa"):
        raise PgolfError(f"PGOLF_ATTN_BACKEND={t.attn_backend!r}: expected auto, fa3 or sdpa")
    _validate_quant(cfg.quant)
    if t.device not in ("auto", "cpu", "cuda"):
        raise PgolfError(f"PGOLF_DEVICE={t.device!r}: expected auto, cpu or cuda")


def load_toml(path: Path) -> tuple[str | None, dict]:
    """Read a TOML preset: optional top-level ``base = "preset"`` plus sections of overrides."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PgolfError(f"{path}: preset file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PgolfError(f"{path}: invalid TOML ({exc})") from None
    base = data.pop("base", None)
    return base, data
