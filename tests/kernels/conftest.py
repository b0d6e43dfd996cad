"""Kernel tests run the real Triton kernels: on CUDA where there is one, else in Triton's CPU
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before anything imports them)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (it comes with the dev extra on Linux x86-64)")


@pytest.fixture()
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
