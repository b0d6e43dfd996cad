"""Shared fixtures: where the real challenge data lives, and small deterministic inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """PGOLF_SHARED_DATA, defaulting to ../shared/data beside the checkout."""
    return Path(os.environ.get("PGOLF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "tokenizers" / "fineweb_1024_bpe.model").is_file():
        pytest.skip(f"real challenge data not found at {root} (set PGOLF_SHARED_DATA to its folder)")
    return root


@pytest.fixture(scope="session")
def sp1024_model(shared_data: Path) -> Path:
    return shared_data / "tokenizers" / "fineweb_1024_bpe.model"


@pytest.fixture(scope="session")
def val_prefix_shard(shared_data: Path) -> Path:
    return shared_data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"


@pytest.fixture(scope="session")
def train_sample_dir(shared_data: Path) -> Path:
    return shared_data / "datasets" / "fineweb10B_sp1024_trainsample"
