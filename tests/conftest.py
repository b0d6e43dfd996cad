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


# -- the records' own scripts (../shared/oracles), imported on CPU --------------------------------

def oracles_dir() -> Path:
    """PGOLF_ORACLES, defaulting to ../shared/oracles beside the checkout."""
    return Path(os.environ.get("PGOLF_ORACLES", REPO_ROOT.parent / "shared" / "oracles"))


def _sdpa_flash_attn_func(q, k, v, causal=True, **_):
    """FlashAttention 3's ``flash_attn_func`` on (B, T, H, D) tensors with GQA, by SDPA."""
    import torch.nn.functional as F

    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=causal, enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)


def _sdpa_flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=0, max_seqlen_k=0,
                                 causal=True, **_):
    """``flash_attn_varlen_func`` on packed (total, H, D) tensors: each cu_seqlens segment on its own."""
    bounds = cu_seqlens_q.tolist()
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            out[start:end] = _sdpa_flash_attn_func(q[None, start:end], k[None, start:end], v[None, start:end], causal)[0]
    return out


_ORACLE_MODULES: dict[str, object] = {}
_CONTINUATIONS = (")", "]", "}", "else", "elif", "except", "finally")


def _top_level_statements(source: str) -> list[str]:
    """The script's top-level statements, each with its indented body and decorators."""
    chunks: list[list[str]] = []
    for line in source.splitlines(keepends=True):
        starts = line[:1] not in ("", " ", "\t", "\n", "#") and not line.startswith(_CONTINUATIONS)
        after_decorator = bool(chunks) and len(chunks[-1]) == 1 and chunks[-1][0].startswith("@")
        if not chunks or (starts and not after_decorator):
            chunks.append([line])
        else:
            chunks[-1].append(line)
    return ["".join(c) for c in chunks]


def _exec_script(source: str, module) -> None:
    """Run the script in ``module``. A script written for a newer Python than this one (R35's
    Python 3.12 f-strings) runs statement by statement, skipping those this Python cannot
    compile; their first lines are kept in ``module._pgolf_skipped`` for the tests to check."""
    try:
        code = compile(source, module.__file__, "exec")
    except SyntaxError:
        module._pgolf_skipped = []
        for statement in _top_level_statements(source):
            try:
                code = compile(statement, module.__file__, "exec")
            except SyntaxError:
                module._pgolf_skipped.append(statement.splitlines()[0][:80])
                continue
            exec(code, module.__dict__)
        return
    exec(code, module.__dict__)


def import_oracle(relative: str):
    """The record script ``relative`` (under the oracles folder) as a module, imported once per
    session with a stand-in ``flash_attn_interface`` (SDPA) that is removed again afterwards.
    Skips the test with one line when the oracles are absent."""
    import sys
    import types

    path = oracles_dir() / relative
    if not path.is_file():
        pytest.skip(f"record oracle {relative} not found under {oracles_dir()} (set PGOLF_ORACLES to its folder)")
    if relative not in _ORACLE_MODULES:
        stand_in = types.ModuleType("flash_attn_interface")
        stand_in.flash_attn_func = _sdpa_flash_attn_func
        stand_in.flash_attn_varlen_func = _sdpa_flash_attn_varlen_func
        saved = sys.modules.get("flash_attn_interface")
        sys.modules["flash_attn_interface"] = stand_in
        try:
            name = "pgolf_oracle_" + "".join(c if c.isalnum() else "_" for c in relative)
            module = types.ModuleType(name)
            module.__file__ = str(path)
            sys.modules[name] = module  # dataclasses and torch.library look their module up by name
            _exec_script(path.read_text(encoding="utf-8"), module)
        finally:
            if saved is None:
                sys.modules.pop("flash_attn_interface", None)
            else:
                sys.modules["flash_attn_interface"] = saved
        _ORACLE_MODULES[relative] = module
    return _ORACLE_MODULES[relative]


@pytest.fixture(scope="session")
def oracle():
    """``oracle("R22_leakyrelu_ttt_parallel_muon/train_gpt.py")`` -> that record's module (see import_oracle)."""
    return import_oracle
