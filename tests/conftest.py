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


@pytest.fixture(scope="session")
def import_reference():
    """``import_reference(script, module_name)``: a reference ``train_gpt.py`` as a module (its
    training runs under a ``__main__`` guard), imported with the default name patterns it reads."""
    return _import_reference_script


def _import_reference_script(script: Path, module_name: str):
    import importlib.util

    names = ("CONTROL_TENSOR_NAME_PATTERNS", "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS")
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        spec = importlib.util.spec_from_file_location(module_name, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.environ.update(saved)
    return module


# -- the records' own scripts (../shared/oracles), imported on CPU: see tests/oracles.py ----------

@pytest.fixture(scope="session")
def oracle():
    """``oracle("R22_leakyrelu_ttt_parallel_muon/train_gpt.py")`` -> that record's module, imported once
    with an SDPA stand-in for FlashAttention 3; skips the test where the oracles are absent."""
    from oracles import import_oracle

    return import_oracle
