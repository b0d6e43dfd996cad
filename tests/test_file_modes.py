"""Files pgolf writes get the permissions a plain ``open()`` gives them (0666 & ~umask), not the 0600
of ``tempfile.mkstemp``: an artifact, a bundle or a report another user must read is readable."""

from __future__ import annotations

import os
import stat

import pytest
import torch



@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_artifacts_and_reports_are_written_0644_under_umask_022(tmp_path, umask_022):
    from pgolf.bench.report import write_report
    from pgolf.export.artifact import export_model
    from pgolf.export.container import write_artifact
    from pgolf.quant.policy import quantize_state_dict_policy

    state = {"w": torch.randn(300, 300, generator=torch.Generator().manual_seed(0))}
    export_model(state, tmp_path / "model.pgolf", {}, policy="int8")
    write_artifact(tmp_path / "sweep_0_zlib.pgolf", quantize_state_dict_policy(state, "int6"), {}, "zlib")
    write_report({"pgolf": {}}, tmp_path / "bench.json")
    for name in ("model.pgolf", "sweep_0_zlib.pgolf", "bench.json"):
        assert mode(tmp_path / name) == 0o644, name


def test_a_bundle_is_written_0644_under_umask_022(tmp_path, umask_022, run_pgolf):
    code, _, err = run_pgolf(["bundle", "--preset", "tiny_cpu", "--no-specialise", "--out", str(tmp_path / "t.py")])
    assert code == 0, err
    assert mode(tmp_path / "t.py") == mode(tmp_path / "t_readable.py") == 0o644
