"""What a training run can be refused for before anything is written: one list, used by ``pgolf train``
(:mod:`pgolf.train.lifecycle`, which stops at the first problem, before its run folder exists) and
``pgolf doctor`` (which fails on any of them).

The configured compressor is installed, the batch splits into whole sequences over the ranks and
micro-steps, the fused kernels can run here, the runs folder is writable and the run id is free (or
to be replaced), and the disk holds the model's checkpoint and artifact.
"""

from __future__ import annotations

from pathlib import Path

from pgolf.config import Config
from pgolf.data.loader import micro_batch_tokens
from pgolf.errors import PgolfError
from pgolf.export.codecs import AUTO, codec_named
from pgolf.files import space_problem, writable_problem
from pgolf.train.lifecycle import reuse_problem


def grad_accum_steps(cfg: Config, world_size: int) -> int:
    """GRAD_ACCUM_STEPS, or the reference's 8 // WORLD_SIZE when 0 (as pgolf.train.loop.setup)."""
    return cfg.train.grad_accum_steps or 8 // world_size


def _compressor(cfg: Config) -> str:
    name = cfg.quant.compressor
    if name != AUTO:
        try:
            codec_named(name)
        except PgolfError as exc:
            raise PgolfError(f"PGOLF_COMPRESSOR={name}: {exc}; install it or choose another") from None
    return f"{name} available"


def _batch(cfg: Config, world_size: int) -> str:
    t, accum = cfg.train, grad_accum_steps(cfg, world_size)
    if accum <= 0:
        raise PgolfError(f"WORLD_SIZE={world_size}: must divide 8 for GRAD_ACCUM_STEPS=0 (8 // WORLD_SIZE)")
    tokens = micro_batch_tokens(t.train_batch_tokens, t.train_seq_len, world_size * accum)
    return f"{tokens:,} tokens per rank micro-step ({world_size} rank(s) x {accum} accumulation steps)"


def _fused(cfg: Config, device) -> str:
    t = cfg.train
    if t.fused_ce or t.fused_mlp:
        from pgolf.model.fused import check_fused_kernels

        check_fused_kernels(cfg.model, t.fused_ce, t.fused_mlp, device)
        return f"{', '.join(n for n, on in (('FUSED_CE', t.fused_ce), ('FUSED_MLP', t.fused_mlp)) if on)}: Triton kernels on {device.type}"
    return "off (FUSED_CE=0, FUSED_MLP=0)"


def preflight(cfg: Config, runs_dir: str | Path, world_size: int, device, replace: bool = False) -> list[tuple[str, str | None, str]]:
    """``(check, problem or None, detail when fine)`` for each check before training."""
    found = []
    for name, check in (("compressor", lambda: _compressor(cfg)), ("batch", lambda: _batch(cfg, world_size)),
                        ("fused", lambda: _fused(cfg, device))):
        try:
            found.append((name, None, check()))
        except PgolfError as exc:
            found.append((name, str(exc), ""))
    runs_dir = Path(runs_dir)
    found.append(("runs dir", writable_problem(runs_dir, "runs folder"), f"{runs_dir} writable"))
    if cfg.train.run_id:
        found.append(("run id", reuse_problem(runs_dir / cfg.train.run_id, replace), f"{cfg.train.run_id} free"))
    return found


def first_problem(cfg: Config, runs_dir: str | Path, world_size: int, device, replace: bool = False) -> str | None:
    return next((problem for _, problem, _ in preflight(cfg, runs_dir, world_size, device, replace) if problem), None)


def state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def checkpoint_bytes(cfg: Config) -> int:
    """The configuration's state dict in bytes, from a model built on the meta device (no memory, no init)."""
    import torch

    from pgolf.model.gpt import GPT

    with torch.device("meta"):
        return state_bytes(GPT(cfg.model).state_dict())


def space_needed(model_state_bytes: int) -> int:
    """Bytes a run writes: the checkpoint, the artifact with its temporary copy, logs (generously)."""
    return 2 * model_state_bytes + (64 << 20)


def disk_problem(runs_dir: str | Path, model_state_bytes: int) -> str | None:
    return space_problem(runs_dir, space_needed(model_state_bytes), "the checkpoint and artifact")
