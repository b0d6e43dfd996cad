"""Whether the fused kernels can run here, decided once before training starts."""

from __future__ import annotations

import importlib.util
import os

import torch

from pgolf.errors import PgolfError


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (tests; far too slow for training)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fused_kernel_problem(device: torch.device | str) -> str | None:
    """Why the fused kernels cannot run on ``device``, or None when they can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if torch.device(device).type == "cuda" or triton_interpreting():
        return None
    return f"they need a CUDA device, not {torch.device(device).type} (or TRITON_INTERPRET=1 for tests)"


def require_fused_kernels(flags: dict[str, bool], device: torch.device | str) -> None:
    """Refuse, in one line, fused-kernel flags (env name -> on) that cannot run on ``device``."""
    wanted = [name for name, on in flags.items() if on]
    if not wanted:
        return
    problem = fused_kernel_problem(device)
    if problem is not None:
        raise PgolfError(f"{'=1, '.join(wanted)}=1: fused Triton kernels cannot run here: {problem}")
