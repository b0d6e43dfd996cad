"""Shared fixtures: where the real challenge data lives, and small deterministic inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Without CUDA the fused Triton kernels (pgolf.kernels) can only run in Triton's CPU interpreter,
# which triton.jit picks when its module is imported: decide before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def shared_data_dir() -> Path:
    """PGOLF_SHARED_DATA, defaulting to ../shared/data beside the checkout."""
    return Path(os.environ.get("PGOLF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "tokenizers" / "fineweb_1024_bpe.model").is_file():
        pytest.skip(f"real challenge data not found at {root} (set PGOLF_SHARED_DATA to its folder)")
    return root


@pytest.fixture()
def run_pgolf(capsys):
    """Run the real `pgolf` entry point (pgolf.cli.main) in-process; return (exit code, stdout, stderr).

    PgolfError becomes `pgolf: error: <msg>` on stderr and exit code 2, exactly as on the command line;
    argparse usage errors still raise SystemExit(2).
    """

    def run(argv: list[str]) -> tuple[int, str, str]:
        from pgolf.cli import main

        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def sp1024_model(shared_data: Path) -> Path:
    return shared_data / "tokenizers" / "fineweb_1024_bpe.model"


@pytest.fixture(scope="session")
def val_prefix_shard(shared_data: Path) -> Path:
    return shared_data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"


@pytest.fixture(scope="session")
def train_sample_dir(shared_data: Path) -> Path:
    return shared_data / "datasets" / "fineweb10B_sp1024_trainsample"


@pytest.fixture(scope="session")
def stock_bundle(tmp_path_factory):
    """``stock_bundle(preset)`` -> (folder, BundleReport): the preset's ``train_gpt.py`` as
    ``pgolf bundle --preset P`` builds it, built once per session (a build takes 10-20 s here). Tests
    run it with their overrides as env vars, as a user would; its folder is shared, so runs go to
    their own ``PGOLF_RUNS_DIR`` and nothing else is written there."""
    built: dict[str, tuple[Path, object]] = {}

    def get(preset: str):
        if preset not in built:
            from pgolf.bundle.build import build_bundle
            from pgolf.presets import build_config

            folder = tmp_path_factory.mktemp(f"{preset}_bundle")
            built[preset] = folder, build_bundle(build_config(preset, environ={}), folder / "train_gpt.py")
        return built[preset]

    return get


# -- oracles: the reference and record scripts (../shared/oracles), imported on CPU, never copied --

_ORACLE_MODULES: dict[str, object] = {}


def oracles_dir() -> Path:
    """PGOLF_ORACLES, defaulting to ../shared/oracles beside the checkout."""
    return Path(os.environ.get("PGOLF_ORACLES", REPO_ROOT.parent / "shared" / "oracles"))


def _flash_attn_stand_in():
    """A ``flash_attn_interface`` whose functions compute FlashAttention 3's result with SDPA."""
    import types

    import torch.nn.functional as F

    def flash_attn_func(q, k, v, causal=True, **_):  # (B, T, H, D), GQA when k has fewer heads
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=causal, enable_gqa=k.size(2) != q.size(2))
        return y.transpose(1, 2)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, *_a, causal=True, **_k):
        out = torch.empty_like(q)  # packed (total, H, D): each cu_seqlens segment attends on its own
        bounds = cu_seqlens_q.tolist()
        for a, b in zip(bounds[:-1], bounds[1:]):
            out[a:b] = flash_attn_func(q[None, a:b], k[None, a:b], v[None, a:b], causal)[0]
        return out

    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    return module


def import_oracle(relpath: str):
    """The oracle script ``relpath`` (e.g. ``"reference/train_gpt.py"``) as a module, imported once
    with the FlashAttention stand-in (only while it imports: pgolf must not see a fake FA3) and
    the default name-pattern env; skips the calling test where the oracles are absent."""
    import importlib.util
    import sys

    path = oracles_dir() / relpath
    if not path.is_file():
        pytest.skip(f"oracle {path} not found (set PGOLF_ORACLES to the oracles folder)")
    if relpath not in _ORACLE_MODULES:
        saved_env = {k: os.environ.pop(k) for k in ("CONTROL_TENSOR_NAME_PATTERNS", "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS")
                     if k in os.environ}
        saved_fa = sys.modules.get("flash_attn_interface")
        sys.modules["flash_attn_interface"] = _flash_attn_stand_in()
        try:
            spec = importlib.util.spec_from_file_location("oracle_" + relpath.replace("/", "_").removesuffix(".py"), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            os.environ.update(saved_env)
            if saved_fa is None:
                del sys.modules["flash_attn_interface"]
            else:
                sys.modules["flash_attn_interface"] = saved_fa
        _ORACLE_MODULES[relpath] = module
    return _ORACLE_MODULES[relpath]


@pytest.fixture(scope="session")
def oracle():
    """``oracle("R44_.../train_gpt.py")`` -> that script's module (see :func:`import_oracle`)."""
    return import_oracle
