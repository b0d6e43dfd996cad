"""The shipped single-file bundle trains exactly like the package: same losses, step for step,
for two presets (and demo_cpu folds as tiny_cpu does, but its quant policy), and for two record presets (every technique they switch on, at toy width) the
same losses and the same round-trip score; the reference env vars still override its frozen
config, except a folded switch, which is refused in one line; its own size is the code bytes; the
baseline bundle is under 25,000 bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgolf.bundle.build import build_bundle
from pgolf.export.codecs import lrzip_available
from pgolf.bundle.specialise import folded_fields
from pgolf.check.track import bundle_source_sha256, facts_from_run
from pgolf.config import Config, artifact_fields, defaults_fingerprint, from_dict, iter_fields, override_env
from pgolf.export.loading import load_weights
from pgolf.presets import build_config

STEPS = 30
SMALL = ["TRAIN_BATCH_TOKENS=2048", "TRAIN_SEQ_LEN=128", "VAL_BATCH_SIZE=2048", "VAL_MAX_TOKENS=4096",
         "TRAIN_LOG_EVERY=0", "MAX_WALLCLOCK_SECONDS=0", "PGOLF_DEVICE=cpu", "PGOLF_COMPILE=0"]
# Each preset as small as a fast test needs. demo_cpu is tiny_cpu at another size with a lower small=
# (test_demo_cpu_bundles_the_same_code_as_tiny_cpu); the policy export path is run by the record presets.
PRESETS = {
    "baseline": ["NUM_LAYERS=2", "MODEL_DIM=64", "WARMUP_STEPS=2", *SMALL],  # GRAD_ACCUM_STEPS=0: 8 micro-steps
    "tiny_cpu": SMALL,
}

# Record presets at toy width on the sp1024 fixtures: small enough that both sides run in seconds, with
# every folded switch of the preset still on (recurrence, parallel residuals, gates, GPTQ/LQER, TTT).
RECORD_PRESETS = ("sp8192_lqer_sparsegate_bossmear", "leakyrelu_ttt_parallel_muon")
TOY = ["VOCAB_SIZE=1024", "MODEL_DIM=64", "NUM_HEADS=2", "NUM_KV_HEADS=1", "TRAIN_BATCH_TOKENS=4096", "TRAIN_SEQ_LEN=256",
       "EVAL_SEQ_LEN=256", "VAL_MAX_TOKENS=2048", "VAL_BATCH_SIZE=4096", "WARMUP_STEPS=1", "VAL_LOSS_EVERY=0",
       "TTT_EVAL_SEQ_LEN=256", "TTT_CHUNK_TOKENS=512", "GLOBAL_TTT_CHUNK_TOKENS=512", "GPTQ_CALIBRATION_BATCHES=1",
       "GPTQ_CALIB_SAMPLES=2", "BIGRAM_DIM=16", "VE_DIM=16", "GATE_WINDOW=8", "TRAIN_LOG_EVERY=0",
       "MAX_WALLCLOCK_SECONDS=0", "PGOLF_DEVICE=cpu", "PGOLF_COMPILE=0"]


def data_overrides(shared_data: Path) -> list[str]:
    return [
        f"DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
    ]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's env without any config variable, so only the frozen config and ``extra`` apply."""
    names = {f.metadata.get("env") for _, f in iter_fields(Config())} | {"RANK", "WORLD_SIZE", "LOCAL_RANK", "PGOLF_CODE_FILES"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def start_bundle(script: Path, runs: Path, run_id: str, *launcher: str, **env: str) -> subprocess.Popen:
    cmd = [*(launcher or (sys.executable,)), str(script)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=runs.parent,
                            env=clean_env(RUN_ID=run_id, PGOLF_RUNS_DIR=str(runs), **env))


def start_package(preset: str, overrides: list[str], runs: Path, run_id: str, **env: str) -> subprocess.Popen:
    sets = [f"--set={item}" for item in overrides]
    cmd = [sys.executable, "-m", "pgolf.cli", "train", "--preset", preset, "--runs-dir", str(runs), *sets]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(RUN_ID=run_id, PYTHONPATH=os.pathsep.join(sys.path), **env))


def finish(proc: subprocess.Popen, runs: Path, run_id: str) -> dict:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads((runs / run_id / "results.json").read_text())


def run_bundle(script: Path, runs: Path, run_id: str, *launcher: str, **env: str) -> dict:
    return finish(start_bundle(script, runs, run_id, *launcher, **env), runs, run_id)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if r["event"] == "train"]


def assert_same_artifact_config(runs: Path) -> None:
    """The bundle's artifact carries the package's config: its difference from the package's schema
    defaults (not the bundle's own, which are the frozen values), so the package rebuilds, field for
    field, the config the package's artifact holds (the fields scoring reads), under the package
    defaults' fingerprint; and that is the run's own (its config.json) in every such field."""
    metas = {side: load_weights(runs / side / "model.pgolf")[1].meta for side in ("bundle", "package")}
    assert metas["bundle"]["config_defaults"] == metas["package"]["config_defaults"] == defaults_fingerprint()
    bundled, package = (from_dict(metas[side]["config"]) for side in ("bundle", "package"))
    assert bundled == package
    run = from_dict(json.loads((runs / "package" / "config.json").read_text()))
    assert artifact_fields(package) == artifact_fields(run) and package.preset == run.preset


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_bundle_trains_exactly_like_the_package(preset, stock_bundle, shared_data, tmp_path):
    # The stock bundle, as `pgolf bundle --preset P` builds it; every override reaches it as a reference
    # env var, so it also shows the env winning over the frozen config (ITERATIONS, data paths, sizes).
    folder, report = stock_bundle(preset)
    overrides = data_overrides(shared_data) + PRESETS[preset] + ["SEED=7", f"ITERATIONS={STEPS}"]
    runs = tmp_path / "runs"
    # Both sides in fresh processes with one thread each (two cores, two jobs): same kernels, so
    # equality can be exact.
    package_proc = start_package(preset, overrides, runs, "package")
    bundled = run_bundle(folder / "train_gpt.py", runs, "bundle", **override_env(overrides))
    package = finish(package_proc, runs, "package")
    assert bundled["steps"] == package["steps"] == STEPS
    assert losses(runs / "bundle") == losses(runs / "package")  # exactly
    assert bundled["val_bpb"] == package["val_bpb"]
    assert bundled["bytes_code"] == report.bytes_wrapped == os.path.getsize(folder / "train_gpt.py")
    assert bundled["code_source"] == "bundle train_gpt.py"
    # the recorded config is the package's, less the fields this configuration never reads; folded switches included
    recorded, full = (json.loads((runs / side / "config.json").read_text()) for side in ("bundle", "package"))
    assert all(value == full[section][k] for section, values in recorded.items() if isinstance(values, dict)
               for k, value in values.items() if k != "run_id")
    assert all(k in recorded[section] for section, k in folded_fields(build_config(preset, environ={})))
    assert_same_artifact_config(runs)
    # the bundle's log states what pgolf submit / check record judge a run by, and the records' score lines
    facts = facts_from_run(runs / "bundle", "bundle")
    assert facts.code_source == "bundle train_gpt.py" and facts.bundle_config and facts.device.startswith("cpu")
    assert facts.source_sha256 == bundle_source_sha256("train_gpt.py", (folder / "train_gpt.py").read_bytes())
    log = (runs / "bundle" / "train.log").read_text()
    assert f"step:{STEPS}/{STEPS} val_loss:" in log and "final_roundtrip_exact val_loss:" in log


@pytest.mark.slow
@pytest.mark.parametrize("preset", RECORD_PRESETS)
def test_record_preset_bundles_train_and_score_exactly_like_the_package(preset, shared_data, tmp_path):
    overrides = data_overrides(shared_data) + TOY + ["ITERATIONS=4"]
    runs = tmp_path / "runs"
    package_proc = start_package(preset, overrides, runs, "package")  # trains while the bundle is built
    report = build_bundle(build_config(preset, overrides, environ={}), tmp_path / "train_gpt.py")
    bundle_proc = start_bundle(tmp_path / "train_gpt.py", runs, "bundle")
    # R44's weights go through lrzip, so its code may too: ZPAQ is the smallest of the three there
    lrzip_weights = "lrzip" in build_config(preset, environ={}).quant.compressor
    assert ("lrzip-zpaq" in dict(report.candidates)) == (lrzip_weights and lrzip_available())
    assert report.codec == ("lrzip-zpaq" if lrzip_weights and lrzip_available() else "brotli")
    # its round trip names its serializer and compressor, so it ships their code alone
    readable, q = (tmp_path / "train_gpt_readable.py").read_text(), build_config(preset, environ={}).quant
    own = {"lzma": "_lzma_compress", "lrzip-zpaq": "_lrzip_zpaq_compress"}[q.compressor]
    others = {"_lzma_compress", "_lrzip_zpaq_compress", "_zstd_compress", "_lrzip_compress", "codec_by_id", "compress_best",
              "decode_qgv3", "decode_pergroup"} - {own, "decode_pergroup" if q.serializer == "pergroup" else ""}
    assert f"def {own}(" in readable and not [n for n in others if f"def {n}(" in readable]
    # the model's config fields fold (nothing stores another config on the model: R44's packed global
    # SGD once did, and kept every `self.cfg.<switch>` test and its code, 600 bytes)
    ortho = build_config(preset, environ={}).model.ortho_init  # R22 on, R44 off
    assert "cfg.ortho_init" not in readable and ("def orthogonal_init_(" in readable) == ortho
    bundled, package = finish(bundle_proc, runs, "bundle"), finish(package_proc, runs, "package")
    assert losses(runs / "bundle") == losses(runs / "package") and len(losses(runs / "bundle")) == 4
    assert (bundled["val_loss"], bundled["val_bpb"]) == (package["val_loss"], package["val_bpb"])
    assert_same_artifact_config(runs)


@pytest.mark.slow
def test_r44s_bundle_under_torchrun_trains_exactly_like_the_package(shared_data, tmp_path):
    """R44's torchrun-only switches folded on (each rank's own gradient clipped, the warm-up's Muon momentum
    kept): on 2 gloo ranks its bundle and the package give the same losses."""
    preset, torchrun = "sp8192_lqer_sparsegate_bossmear", (sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                           "--nproc_per_node=2")
    overrides = data_overrides(shared_data) + TOY + ["ITERATIONS=3", "GRAD_ACCUM_STEPS=0"]
    runs = tmp_path / "runs"
    sets = [f"--set={item}" for item in overrides]
    package_proc = subprocess.Popen([*torchrun, "-m", "pgolf.cli", "train", "--preset", preset, "--runs-dir", str(runs), *sets],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=clean_env(RUN_ID="package", PYTHONPATH=os.pathsep.join(sys.path)))
    build_bundle(build_config(preset, overrides, environ={}), tmp_path / "train_gpt.py")
    bundled = run_bundle(tmp_path / "train_gpt.py", runs, "bundle", *torchrun)
    package = finish(package_proc, runs, "package")
    assert bundled["world_size"] == package["world_size"] == 2
    assert losses(runs / "bundle") == losses(runs / "package") and len(losses(runs / "bundle")) == 3


@pytest.mark.slow
def test_bundle_runs_under_torchrun_on_two_ranks(stock_bundle, shared_data, tmp_path):
    script = stock_bundle("tiny_cpu")[0] / "train_gpt.py"
    env = override_env(data_overrides(shared_data) + SMALL + ["ITERATIONS=4", "GRAD_ACCUM_STEPS=0"])
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    runs = tmp_path / "runs"
    ddp_proc = start_bundle(script, runs, "ddp", *torchrun, **env)
    single = run_bundle(script, runs, "single", **env)
    ddp = finish(ddp_proc, runs, "ddp")
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert max(abs(a - b) for a, b in zip(losses(runs / "ddp"), losses(runs / "single"))) < 1e-4


def test_a_bundle_counts_itself_whatever_pgolf_code_files_names(stock_bundle, shared_data, tmp_path):
    # PGOLF_CODE_FILES set empty (or to another file) in the environment once left a bundle counting
    # no code at all: "code 0 (0 pgolf module files imported)", the cap checked without the script.
    script = stock_bundle("tiny_cpu")[0] / "train_gpt.py"
    env = override_env(data_overrides(shared_data) + SMALL + ["ITERATIONS=1"])
    extra = tmp_path / "sidecar.bin"
    extra.write_bytes(b"x" * 100)
    runs = tmp_path / "runs"
    for run_id, named, counted in (("empty", "", 0), ("other", str(extra), 100)):
        results = run_bundle(script, runs, run_id, PGOLF_CODE_FILES=named, **env)
        assert results["bytes_code"] == os.path.getsize(script) + counted, (run_id, results["bytes_code"])


def test_demo_cpu_bundles_the_same_code_as_tiny_cpu():
    from pgolf.bundle.specialise import folded_fields

    # but its quant policy: demo_cpu lowers small= so its matrices are quantized (the policy path is the
    # record presets' too, and their bundles run below)
    demo, tiny = (folded_fields(build_config(p, environ={})) for p in ("demo_cpu", "tiny_cpu"))
    assert demo.pop(("quant", "scheme")) == "int8,small=4096" and tiny.pop(("quant", "scheme")) == "int8"
    assert demo == tiny


REFERENCE_SCRIPT_BYTES = 47_642  # the reference's raw train_gpt.py


@pytest.fixture(scope="module")
def baseline_bundle(stock_bundle):
    """The specialised baseline bundle, shared by the tests that only read or start it."""
    return stock_bundle("baseline")


def test_baseline_bundle_is_smaller_than_the_reference_script_and_readable_copy_is_the_same_program(baseline_bundle):
    tmp_path, report = baseline_bundle
    shipped = (tmp_path / "train_gpt.py").read_bytes()
    assert len(shipped) == report.bytes_wrapped < REFERENCE_SCRIPT_BYTES
    assert report.bytes_wrapped < report.bytes_minified < report.bytes_raw
    assert dict(report.candidates)[report.codec] == report.bytes_wrapped == min(dict(report.candidates).values())
    readable = (tmp_path / "train_gpt_readable.py").read_text()
    assert "import pgolf" not in readable and "from pgolf" not in readable
    # the schema's defaults are the frozen config; env names equal to the upper-cased field name are derived;
    # the input checks are stripped, so the fields' own checks (nothing reads them any more) go too
    assert "num_layers: int = _f(9)" in readable and "'> 0'" not in readable
    assert "compile: str = _f('auto', 'PGOLF_COMPILE')" in readable
    # fields the code never reads are left out (TTT is off); folded switches live in FOLDED_FIELDS
    assert "ttt_epochs" not in readable and "'in 2..8'" not in readable and "use_smeargate: bool" not in readable
    assert "FOLDED_FIELDS: dict = {'model': {'tie_embeddings': True" in readable
    # int8 policy, zlib, v1 layout, no GPTQ/LQER/QAT: none of the other export code ships
    assert not any(f"def {name}(" in readable for name in ("pack_codes", "parse_policy", "gptq_quantize", "enable_qat", "_lrzip_compress", "_entry_from_v2"))
    assert "class BigramHash" not in readable and "class ParallelMuon" not in readable  # switched off: not shipped
    # Muon's schedule and MuonEq-R fold through its constructor's keywords and attributes: the quintic,
    # unnormalised Muon ships neither Polar Express's coefficients nor the row normalisation
    assert "POLAR_EXPRESS_COEFFICIENTS" not in readable and "def normalize_rows(" not in readable
    # input checks are stripped (pgolf.bundle.checks): only the size cap's and the folded-switch refusal's remain
    raises = [line.strip()[:40] for line in readable.splitlines() if "raise PgolfError(" in line]
    assert len(raises) == 2 and "bytes over the" in readable and "folded into its code" in readable, raises
    assert 'if __name__ == "__main__":' in readable or "if __name__ == '__main__':" in readable
    compile(readable, "train_gpt_readable.py", "exec")
    assert "pgolf.bundle.cli" not in report.modules and "pgolf.cli" not in report.modules


def test_a_bundle_with_its_checks_kept_keeps_the_fields_own_checks_and_refuses_a_bad_value(tmp_path):
    build_bundle(build_config("baseline", environ={}), tmp_path / "train_gpt.py", keep_checks=True)
    readable = (tmp_path / "train_gpt_readable.py").read_text()
    assert "num_layers: int = _f(9, None, '> 0')" in readable
    proc = subprocess.run([sys.executable, str(tmp_path / "train_gpt.py")], capture_output=True, text=True,
                          cwd=tmp_path, env=clean_env(NUM_LAYERS="0"), timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "NUM_LAYERS=0: must be > 0" in proc.stderr, proc.stderr


def test_baseline_bundle_meets_the_25000_byte_target(baseline_bundle):
    _, report = baseline_bundle
    assert report.bytes_wrapped < 25_000


def test_a_folded_switch_set_to_another_value_by_env_is_refused_in_one_line(baseline_bundle):
    tmp_path, _ = baseline_bundle
    proc = subprocess.run([sys.executable, str(tmp_path / "train_gpt.py")], capture_output=True, text=True,
                          cwd=tmp_path, env=clean_env(USE_SMEARGATE="1"), timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "USE_SMEARGATE='1'" in proc.stderr and "USE_SMEARGATE=False folded" in proc.stderr and "rebuild" in proc.stderr


def test_check_folded_accepts_the_built_in_value_and_refuses_another():
    from pgolf.bundle.entry import check_folded
    from pgolf.errors import PgolfError

    folded = {"model": {"use_smeargate": False, "num_loops": 0, "logit_softcap_kind": "tanh"}, "optim": {"muon_wd": 0.0}}
    envs = {"logit_softcap_kind": "SOFTCAP_TYPE"}
    check_folded(folded, envs, {"USE_SMEARGATE": "0", "NUM_LOOPS": "0", "MUON_WD": "0", "SOFTCAP_TYPE": "tanh", "SEED": "3"})
    with pytest.raises(PgolfError, match="NUM_LOOPS='2': this train_gpt.py was bundled with NUM_LOOPS=0"):
        check_folded(folded, envs, {"NUM_LOOPS": "2"})
    with pytest.raises(PgolfError, match="SOFTCAP_TYPE='poly'"):  # a folded field's own env name
        check_folded(folded, envs, {"SOFTCAP_TYPE": "poly", "LOGIT_SOFTCAP_KIND": "poly"})


def test_bundle_cli_reports_sizes(run_pgolf, tmp_path):
    # --no-specialise: the sizes reported are what is tested, not folding (the slow part of a build)
    out_dir = tmp_path / "new" / "folder"  # --out creates its folder
    code, out, err = run_pgolf(["bundle", "--preset", "tiny_cpu", "--no-specialise", "--out", str(out_dir / "t.py"), "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["bytes_wrapped"] == os.path.getsize(out_dir / "t.py")
    assert report["bytes_raw"] == os.path.getsize(out_dir / "t_readable.py")


def test_bundle_cli_names_a_folder_it_cannot_make(run_pgolf, tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = run_pgolf(["bundle", "--preset", "tiny_cpu", "--out", str(tmp_path / "file" / "t.py")])
    assert code == 2 and err.count("\n") == 1 and "file: not a folder" in err


def test_bundle_cli_refuses_lrzip_without_its_binary(run_pgolf, tmp_path, monkeypatch):
    # asked for, lrzip is not quietly left out: the user would ship a larger script than they meant to
    monkeypatch.setattr("pgolf.export.codecs.lrzip_available", lambda: False)
    code, _, err = run_pgolf(["bundle", "--preset", "tiny_cpu", "--lrzip", "--out", str(tmp_path / "t.py")])
    assert code == 2 and err.count("\n") == 1 and "--lrzip: the lrzip binary is not installed" in err
    assert not list(tmp_path.iterdir())


# The fused Triton kernels: two 128-token rows a step keep the interpreted cross-entropy quick.
FUSED = ["FUSED_CE=1", "FUSED_MLP=1", "MLP_ACTIVATION=leaky_relu2", "Z_LOSS=0.0001", "TRAIN_BATCH_TOKENS=256",
         "TRAIN_SEQ_LEN=128", "VAL_MAX_TOKENS=4096", "TRAIN_LOG_EVERY=0", "ITERATIONS=4", "SEED=7"]


@pytest.fixture(scope="module")
def fused_bundle(tmp_path_factory):
    pytest.importorskip("triton", reason="triton is not installed (it comes with the dev extra on Linux x86-64)")
    folder = tmp_path_factory.mktemp("fused_bundle")
    report = build_bundle(build_config("tiny_cpu", FUSED, environ={}), folder / "train_gpt.py")
    return folder, report


@pytest.mark.slow
def test_a_bundle_with_the_fused_kernels_trains_exactly_like_the_package(fused_bundle, shared_data, tmp_path):
    folder, report = fused_bundle
    assert {"pgolf.kernels.softcapped_ce", "pgolf.kernels.mlp"} <= set(report.modules)
    overrides = data_overrides(shared_data) + FUSED
    runs = tmp_path / "runs"
    interpret = {"TRITON_INTERPRET": "1"}  # a CPU run (tiny_cpu): both sides run the kernels in Triton's interpreter
    package_proc = start_package("tiny_cpu", overrides, runs, "package", **interpret)
    bundled = run_bundle(folder / "train_gpt.py", runs, "bundle", **override_env(overrides), **interpret)
    package = finish(package_proc, runs, "package")
    assert bundled["steps"] == package["steps"] == 4
    assert losses(runs / "bundle") == losses(runs / "package")  # exactly


def test_the_kernels_in_a_bundle_compile_to_cubins(fused_bundle, tmp_path):
    """The minified kernels, read back by Triton through the script's registered source, still compile."""
    folder, _ = fused_bundle
    script = Path(__file__).parents[1] / "kernels" / "compile_for_gpu.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"TRITON_CACHE_DIR": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script), "--bundle", str(folder / "train_gpt.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.count("ok ") == 4, proc.stdout + proc.stderr


def test_a_bundle_without_the_kernels_carries_no_triton(stock_bundle):
    folder, report = stock_bundle("tiny_cpu")
    assert not any(m.startswith("pgolf.kernels.") and m != "pgolf.kernels.support" for m in report.modules)
    readable = (folder / "train_gpt_readable.py").read_text()
    assert "import triton" not in readable and "@triton.jit" not in readable


def test_fused_kernels_asked_of_a_bundle_without_them_are_refused_in_one_line(shared_data, tmp_path):
    # --no-specialise keeps FUSED_* dynamic, so the env can ask for kernels the script does not carry
    build_bundle(build_config("tiny_cpu", [], environ={}), tmp_path / "train_gpt.py", specialise=False)
    env = clean_env(TRITON_INTERPRET="1", FUSED_MLP="1", **override_env(data_overrides(shared_data)))
    proc = subprocess.run([sys.executable, str(tmp_path / "train_gpt.py")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "bundled without the fused kernels; rebuild it with them on" in proc.stderr


@pytest.mark.parametrize("specialise", [True, False], ids=["compact-schema", "package-schema"])
def test_a_bundles_artifact_config_rebuilds_the_packages_config(specialise, monkeypatch):
    # The bundle's own code, as its entry runs it (frozen config, then the env), up to the artifact's
    # config: with its schema compacted (defaults = the frozen values) and without (the package's schema,
    # the whole FROZEN_CONFIG). The package reads it back as the config the package resolves for that env.
    import types

    from pgolf.bundle.build import bundle_source

    preset, env = "mlp3x_int8emb_seq2048", {"MLP_MULT": "2", "SEED": "7", "TRAIN_SEQ_LEN": "1024"}  # 2: the default
    source, _ = bundle_source(build_config(preset, environ={}), specialise=specialise)
    bundled = types.ModuleType("bundled_train_gpt")  # dataclasses look the defining module up
    monkeypatch.setitem(sys.modules, bundled.__name__, bundled)
    exec(compile(source, "train_gpt.py", "exec"), bundled.__dict__)
    assert bool(bundled.PRESET) == specialise  # which of the entry's two forms this is
    cfg = bundled.Config(preset=bundled.PRESET) if bundled.PRESET else bundled.from_dict(bundled.FROZEN_CONFIG)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bundled.apply_env(cfg)
    meta = json.loads(json.dumps(bundled.artifact_meta(cfg)))  # as the artifact's JSON holds it
    monkeypatch.undo()
    assert meta["config_defaults"] == defaults_fingerprint()
    got, want = from_dict(meta["config"]), build_config(preset, environ=env)
    assert artifact_fields(got) == artifact_fields(want) != artifact_fields(build_config(preset, environ={}))
    assert got.preset == want.preset


def test_the_baseline_bundles_token_stream_crosses_a_shard_end_like_the_packages(baseline_bundle, tmp_path, monkeypatch):
    # a take() that begins exactly at a shard's end once raised UnboundLocalError in the bundle
    # (its counter's first store was dropped as unread: ``n += 1`` reads it)
    import importlib.util

    from pgolf.data.loader import TokenStream
    from pgolf.data.shards import write_shard

    folder, _ = baseline_bundle
    spec = importlib.util.spec_from_file_location("bundle_under_test", folder / "train_gpt_readable.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    namespace = vars(module)
    shards = [tmp_path / f"fineweb_train_00000{i}.bin" for i in range(2)]
    for i, path in enumerate(shards):
        write_shard(path, np.arange(10 * i, 10 * i + 10, dtype=np.uint16))
    bundled, package = namespace["TokenStream"](shards), TokenStream(shards)
    for n in (10, 3, 7, 10, 4):
        assert np.array_equal(bundled.take(n), package.take(n))
