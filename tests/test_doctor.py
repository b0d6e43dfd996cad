"""``pgolf doctor``: one line per check, the data checks follow the configuration, exit 1 on a failure."""

from __future__ import annotations

import json

from pgolf import doctor


def data_sets(shared_data) -> list[str]:
    return [
        f"--set=DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
        f"--set=VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"--set=TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
    ]


def test_a_ready_cpu_machine_passes_with_warnings_only(shared_data, run_pgolf):
    code, out, _ = run_pgolf(["doctor", *data_sets(shared_data)])
    assert code == 0, out
    lines = out.splitlines()
    for check in ("python", "torch", "gpu", "attention", "compile", "fused", "exec temp", "compressors", "tokenizer",
                  "train shards", "val shards", "disk"):
        assert any(line[6:].startswith(check) for line in lines), (check, out)
    assert "4,797,698 tokens" in out and "1,040,298 tokens" in out and lines[-1].startswith("0 failing")


def test_missing_data_fails_naming_the_path_and_the_fix(tmp_path, run_pgolf):
    code, out, _ = run_pgolf(["doctor", f"--set=DATA_PATH={tmp_path / 'nowhere'}", "--json"])
    assert code == 1
    found = {f["check"]: f for f in json.loads(out)}
    assert found["train shards"]["status"] == "fail" and "nowhere" in found["train shards"]["detail"]
    assert "pgolf data download" in found["train shards"]["detail"]
    assert found["python"]["status"] == "ok" and {f["status"] for f in found.values()} <= {"ok", "warn", "fail"}


def test_a_temp_folder_that_cannot_run_files_fails(tmp_path, monkeypatch):
    assert doctor.check_exec_temp(str(tmp_path)).status == doctor.OK

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")  # what a noexec mount gives

    monkeypatch.setattr(doctor.subprocess, "run", refuse)
    finding = doctor.check_exec_temp(str(tmp_path))
    assert finding.status == doctor.FAIL and "TORCHINDUCTOR_CACHE_DIR" in finding.detail
    assert not list(tmp_path.iterdir())  # the probe script is removed either way


def test_the_disk_check_climbs_to_an_existing_folder(tmp_path):
    finding = doctor.check_disk(tmp_path / "not" / "yet" / "made")
    assert finding.status in (doctor.OK, doctor.WARN) and str(tmp_path) in finding.detail



def test_fused_kernels_a_machine_cannot_run_fail_in_one_line(shared_data, run_pgolf, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    code, out, _ = run_pgolf(["doctor", *data_sets(shared_data), "--set=FUSED_MLP=1", "--json"])
    found = {f["check"]: f for f in json.loads(out)}
    if found["gpu"]["status"] == "ok":  # a CUDA machine with triton runs them
        assert code == 0 and found["fused"]["detail"] == "FUSED_MLP: Triton kernels on cuda"
    else:
        assert code == 1 and found["fused"]["status"] == "fail"
        assert "FUSED_MLP=1: fused Triton kernels cannot run here" in found["fused"]["detail"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    code, out, _ = run_pgolf(["doctor", *data_sets(shared_data), "--set=FUSED_MLP=1", "--set=MLP_ACTIVATION=swiglu", "--json"])
    found = {f["check"]: f for f in json.loads(out)}
    assert code == 1 and "MLP_ACTIVATION=swiglu has no fused kernel" in found["fused"]["detail"]
