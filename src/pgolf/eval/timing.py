"""Honest evaluation timing: wall time from reading the artifact to the final number, by phase.

Records usually report only their final scoring loop; the rules (challenge sec. 4) give evaluation
600 s on 8xH100 SXM in addition to training, and a strict tool times the whole process:
decompression, model build, compilation and warm-up, every scoring pass and TTT. CUDA work is
synchronized at phase edges so asynchronous kernels are charged to the phase that launched them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

EVAL_LIMIT_S = 600.0
REFERENCE_GPUS = 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Wall-clock seconds per named phase, plus the total since construction."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    def total(self) -> float:
        return time.perf_counter() - self.start


def limit_comparison(total_s: float, device: torch.device, gpu_count: int, gpu_name: str | None) -> dict:
    """Compare ``total_s`` with the 600 s limit, saying exactly what was assumed."""
    if device.type != "cuda":
        return {"limit_s": EVAL_LIMIT_S, "within_limit": None,
                "note": "measured on CPU: no comparison with the 8xH100 evaluation limit is meaningful"}
    is_h100 = gpu_name is not None and "H100" in gpu_name
    if is_h100 and gpu_count == REFERENCE_GPUS:
        return {"limit_s": EVAL_LIMIT_S, "within_limit": total_s <= EVAL_LIMIT_S, "note": "8xH100: the limit applies as is"}
    scaled = EVAL_LIMIT_S * REFERENCE_GPUS / max(gpu_count, 1)
    return {
        "limit_s": scaled, "within_limit": total_s <= scaled,
        "note": (f"{gpu_count}x {gpu_name or 'GPU'}: 600 s on 8xH100 scaled by 8/{gpu_count} GPUs, assuming evaluation "
                 "time is inversely proportional to GPU count" + ("" if is_h100 else " and that this GPU matches an H100")),
    }
