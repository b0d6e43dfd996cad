"""``pgolf doctor`` on a GPU machine: the GPU and NCCL checks pass (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from pgolf import doctor

pytestmark = pytest.mark.gpu


def test_gpu_and_nccl_are_found():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    found = {f.check: f for f in doctor.check_torch()}
    assert found["gpu"].status == doctor.OK and torch.cuda.get_device_name(0) in found["gpu"].detail
    assert found["nccl"].status == doctor.OK
