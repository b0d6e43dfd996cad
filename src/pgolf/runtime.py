"""Where a run executes: device choice, torchrun/DDP process groups, seeding, and version facts.

``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; with them a process group is created (NCCL on CUDA,
gloo on CPU). WORLD_SIZE must divide 8 so the reference's ``grad_accum_steps = 8 // WORLD_SIZE``
keeps the global batch identical on 1 and 8 GPUs.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pgolf.errors import PgolfError

# What only describes a run to the package's own tools goes under ``if TELEMETRY:``: a progress
# display, the commit of a checkout (a shipped script has none), a recount of code that a bundle's
# fixed code cannot change. A bundle folds it to False (pgolf.bundle.build), so none of that ships;
# what pgolf submit reads from a run (train.log header and score lines, results.json) never depends on it.
TELEMETRY = True
# True only in a bundled train_gpt.py (pgolf.bundle.build sets it): its code is that one file, which
# names itself in PGOLF_CODE_FILES (pgolf.bundle.entry), so what finds the package's own files does not ship.
BUNDLED = False


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PgolfError("PGOLF_DEVICE=cuda but no CUDA device is available")
    return torch.device("cuda", local_rank)


def compile_enabled(setting: str, device: torch.device) -> bool:
    """PGOLF_COMPILE: ``1`` always, ``0`` never, ``auto`` on CUDA only (inductor on a CPU mostly waits for the C compiler)."""
    return setting == "1" or (setting == "auto" and device.type == "cuda")


def init_runtime(requested_device: str = "auto") -> Runtime:
    """Create the process group when launched by torchrun; otherwise a single process."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 0 or 8 % world_size:
        raise PgolfError(f"WORLD_SIZE={world_size} must divide 8 so grad_accum_steps = 8 // WORLD_SIZE is whole")
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if distributed and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
        dist.barrier()
    return Runtime(device, rank, world_size, local_rank, distributed)


def shutdown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def package_source_files() -> list[Path]:
    # A bundled train_gpt.py names itself in PGOLF_CODE_FILES: it, not its folder, is the code.
    named = [Path(p).resolve() for p in os.environ.get("PGOLF_CODE_FILES", "").split(os.pathsep) if p]
    return sorted(named) if named or BUNDLED else sorted(Path(__file__).resolve().parent.rglob("*.py"))


def source_hash() -> str:
    """sha256 over the package's .py files (relative path and content), the code identity of a run."""
    files = package_source_files()
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(root) if path.is_relative_to(root) else path.name).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def git_commit() -> str | None:
    """The checkout's HEAD; where there is no git repository (a copied working tree on a rented
    GPU, a container image), ``PGOLF_GIT_COMMIT`` as the caller set it, else None."""
    parents = Path(__file__).resolve().parents
    root = parents[min(2, len(parents) - 1)]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return os.environ.get("PGOLF_GIT_COMMIT") or None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    from pgolf import __version__

    return {
        "pgolf": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "sentencepiece": pkg("sentencepiece"),
        "triton": pkg("triton"),
        "platform": platform.platform(),
    }
