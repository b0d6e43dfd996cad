"""``pgolf eval`` end to end: checkpoints and reference files score the same, bad input exits 2."""

from __future__ import annotations

import json
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pgolf.cli import main
from pgolf.data.shards import write_shard
from pgolf.model.gpt import GPT
from pgolf.presets import resolve_preset


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = GPT(resolve_preset("tiny_cpu").model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "checkpoint.safetensors"
    save_file(tiny_state(), str(path), metadata={"pgolf_config": resolve_preset("tiny_cpu").to_json()})
    return path


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def common(sp1024_model, val_prefix_shard) -> list[str]:
    return ["--tokenizer", str(sp1024_model), "--val", str(val_prefix_shard), "--max-tokens", "2048", "--device", "cpu"]


def test_json_and_token_losses(capsys, checkpoint, sp1024_model, val_prefix_shard, tmp_path):
    out_npy = tmp_path / "losses.npy"
    code, out, _ = run_eval(capsys, "--checkpoint", str(checkpoint), *common(sp1024_model, val_prefix_shard),
                            "--json", "--token-losses", str(out_npy))
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["tokens"] == 2048 and result["bytes"] > 2048
    losses = np.load(out_npy)
    assert losses.shape == (2048,) and losses.dtype == np.float32
    assert result["val_loss"] == pytest.approx(float(losses.astype(np.float64).mean()), rel=1e-6)


def test_reference_final_model_pt_scores_like_the_checkpoint(capsys, checkpoint, sp1024_model, val_prefix_shard, tmp_path):
    pt = tmp_path / "final_model.pt"
    torch.save(tiny_state(), pt)  # exactly how the reference saves final_model.pt
    args = [*common(sp1024_model, val_prefix_shard), "--json"]
    _, ours, _ = run_eval(capsys, "--checkpoint", str(checkpoint), *args)
    code, ref, _ = run_eval(capsys, "--checkpoint", str(pt), "--preset", "tiny_cpu", *args)
    assert code == 0
    a, b = json.loads(ours.splitlines()[-1]), json.loads(ref.splitlines()[-1])
    assert (a["val_loss"], a["val_bpb"]) == (b["val_loss"], b["val_bpb"])


def expect_one_line_error(capsys, args: list[str], needle: str) -> None:
    code, _, err = run_eval(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgolf: error:") and needle in lines[0], err


def test_missing_tokenizer(capsys, checkpoint, val_prefix_shard, tmp_path):
    expect_one_line_error(capsys, ["--checkpoint", str(checkpoint), "--tokenizer", str(tmp_path / "none.model"),
                                   "--val", str(val_prefix_shard)], "none.model")


def test_wrong_vocab_size(capsys, checkpoint, sp1024_model, val_prefix_shard):
    expect_one_line_error(capsys, ["--checkpoint", str(checkpoint), *common(sp1024_model, val_prefix_shard),
                                   "--set", "VOCAB_SIZE=512"], "does not match VOCAB_SIZE=512")


def test_corrupt_shard(capsys, checkpoint, sp1024_model, tmp_path):
    bad = tmp_path / "fineweb_val_000000.bin"
    write_shard(bad, np.arange(5000, dtype=np.uint16) % 1024)
    with open(bad, "r+b") as f:
        f.write(b"\x00\x00\x00\x00")  # destroy the magic
    expect_one_line_error(capsys, ["--checkpoint", str(checkpoint), "--tokenizer", str(sp1024_model), "--val", str(bad)],
                          "bad shard magic")


def test_token_ids_beyond_vocab(capsys, checkpoint, sp1024_model, tmp_path):
    bad = tmp_path / "fineweb_val_000000.bin"
    write_shard(bad, np.full(5000, 2000, dtype=np.uint16))
    expect_one_line_error(capsys, ["--checkpoint", str(checkpoint), "--tokenizer", str(sp1024_model), "--val", str(bad)],
                          "token id 2000 >= vocab size 1024")


def test_weights_that_do_not_fit_the_preset(capsys, checkpoint, sp1024_model, val_prefix_shard):
    expect_one_line_error(capsys, ["--checkpoint", str(checkpoint), *common(sp1024_model, val_prefix_shard),
                                   "--set", "NUM_LAYERS=3"], "do not fit")


class _RunsCode:
    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("wrap", [lambda b: b, lambda b: zlib.compress(b, 9)], ids=["raw", "zlib"])
def test_code_running_pickle_is_refused_and_runs_nothing(capsys, sp1024_model, val_prefix_shard, tmp_path, wrap):
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = str(marker)
    evil = tmp_path / "evil.ptz"
    evil.write_bytes(wrap(pickle.dumps({"state": payload})))
    code, _, err = run_eval(capsys, "--artifact", str(evil), "--preset", "tiny_cpu", *common(sp1024_model, val_prefix_shard))
    assert code == 2 and "evil.ptz" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_every_phase_is_scored_and_timed(capsys, checkpoint, sp1024_model, val_prefix_shard):
    code, out, _ = run_eval(capsys, "--checkpoint", str(checkpoint), "--tokenizer", str(sp1024_model), "--val",
                            str(val_prefix_shard), "--max-tokens", "512", "--device", "cpu", "--json",
                            "--stride", "64", "--doc-isolated", "--ttt", "sgd",
                            "--set", "TTT_CHUNK_TOKENS=256", "--set", "TTT_EPOCHS=1", "--set", "TTT_BATCH_SEQS=4")
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["phases"]) == {"standard", "sliding", "ttt"} and result["final_phase"] == "ttt"
    for phase in result["phases"].values():
        assert phase["tokens"] == 512
    assert result["phases"]["sliding"]["stride"] == 64 and result["phases"]["sliding"]["doc_isolated"]
    assert result["val_bpb"] == result["phases"]["ttt"]["val_bpb"]
    timing = result["timing"]
    assert set(timing["phase_s"]) == {"read_weights", "load_data", "build_model", "standard", "sliding", "ttt"}
    assert sum(timing["phase_s"].values()) <= timing["total_s"] == result["eval_time_s"]
    assert timing["within_limit"] is None and "CPU" in timing["note"]


def test_stride_longer_than_the_window_is_refused(capsys, checkpoint, sp1024_model, val_prefix_shard):
    expect_one_line_error(capsys, ["--checkpoint", str(checkpoint), *common(sp1024_model, val_prefix_shard),
                                   "--stride", "4096"], "stride must not exceed")


@pytest.mark.parametrize("given,missing,flag", [("--val", "TOKENIZER_PATH", "--tokenizer"), ("--tokenizer", "val shards", "--val")])
def test_paths_the_weights_carry_that_miss_here_say_which_flag_to_pass(capsys, checkpoint, sp1024_model, val_prefix_shard,
                                                                      tmp_path, monkeypatch, given, missing, flag):
    # the checkpoint's config holds tiny_cpu's relative ./data/... paths, as a run trained elsewhere would
    monkeypatch.chdir(tmp_path)
    value = str(val_prefix_shard) if given == "--val" else str(sp1024_model)
    code, _, err = run_eval(capsys, "--checkpoint", str(checkpoint), given, value, "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and missing in err and err.rstrip().endswith(f"pass {flag}"), err


@pytest.mark.parametrize("policy,quantized", [("int8", 0), ("int8,small=0", 22)])
def test_an_artifact_that_quantizes_nothing_is_named_in_a_warning(capsys, sp1024_model, val_prefix_shard, tmp_path,
                                                                  policy, quantized):
    from pgolf.export.artifact import export_model

    cfg = resolve_preset("tiny_cpu")
    cfg.quant.scheme = policy
    artifact = tmp_path / "model.pgolf"
    export_model(tiny_state(), artifact, {"config": cfg.to_dict()}, policy=policy)
    code, out, err = run_eval(capsys, "--artifact", str(artifact), *common(sp1024_model, val_prefix_shard), "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["quantized_tensors"] == quantized
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == (0 if quantized else 1)
    if not quantized:
        assert "quant policy 'int8' quantizes none of the 22 tensors" in warned[0]


def test_an_artifact_written_against_other_schema_defaults_is_refused_not_scored(capsys, sp1024_model, val_prefix_shard,
                                                                                 tmp_path, plant_default):
    # The artifact's config is its difference from the schema defaults: filled in with other defaults
    # (here a reader whose logit softcap default is 20, a field tiny_cpu leaves at the default) it would
    # be another model, scored without a word. Unless --preset says the config, the reader refuses.
    from pgolf.config import ModelConfig, artifact_meta
    from pgolf.export.artifact import export_model

    artifact = tmp_path / "model.pgolf"
    export_model(tiny_state(), artifact, artifact_meta(resolve_preset("tiny_cpu")))
    code, out, err = run_eval(capsys, "--artifact", str(artifact), *common(sp1024_model, val_prefix_shard), "--json")
    assert code == 0, err
    score = json.loads(out.splitlines()[-1])["val_bpb"]
    plant_default(ModelConfig, "logit_softcap", 20.0)
    code, out, err = run_eval(capsys, "--artifact", str(artifact), *common(sp1024_model, val_prefix_shard), "--json")
    assert code == 2 and out == "" and err.count("\n") == 1 and "other schema defaults" in err, err
    assert err.rstrip().endswith("pass --preset/--set to say the config")
    # --preset says the config: the embedded one is not used, so nothing to refuse
    code, out, err = run_eval(capsys, "--artifact", str(artifact), "--preset", "tiny_cpu", "--set", "LOGIT_SOFTCAP=30",
                              *common(sp1024_model, val_prefix_shard), "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["val_bpb"] == score, err


class _ReadLog:
    """A config section that records which of its fields are read (and forwards to the real values)."""

    def __init__(self, section, reads: set[str]):
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, name):
        if not name.startswith("__"):
            self._reads.add(name)
        return getattr(self._section, name)

    def __setattr__(self, name, value):  # the CLI's own flags (--stride, --ttt) write into the config
        setattr(self._section, name, value)


@pytest.mark.parametrize("flags", [[], ["--stride", "64", "--doc-isolated"], ["--ttt", "sgd"], ["--ttt", "lora"], ["--ttt", "phased"]],
                         ids=["standard", "sliding", "sgd", "lora", "phased"])
def test_scoring_an_artifact_reads_no_config_field_the_artifact_leaves_out(capsys, monkeypatch, sp1024_model,
                                                                          val_prefix_shard, tmp_path, flags):
    # An artifact carries only the fields scoring reads (pgolf.config.artifact_fields): the optimizer's
    # section and the training-only fields are left out, and a reader fills them with its own defaults.
    # Every evaluation phase, watched field by field, reads none of them: else a training setting
    # would silently change a score between the training run and a reader of its artifact.
    import pgolf.eval.cli as eval_cli
    from pgolf.config import ARTIFACT_TRAIN_FIELDS, artifact_meta
    from pgolf.export.artifact import export_model

    artifact = tmp_path / "model.pgolf"
    export_model(tiny_state(), artifact, artifact_meta(resolve_preset("tiny_cpu")))
    reads = {"optim": set(), "train": set()}
    apply_flags = eval_cli._apply_eval_flags

    def watched(cfg, *flags):  # the config resolved, flags applied and validated (which reads every field)
        apply_flags(cfg, *flags)
        for section in reads:
            setattr(cfg, section, _ReadLog(getattr(cfg, section), reads[section]))

    monkeypatch.setattr(eval_cli, "_apply_eval_flags", watched)
    code, out, err = run_eval(capsys, "--artifact", str(artifact), *common(sp1024_model, val_prefix_shard), *flags,
                              "--set", "TTT_CHUNK_TOKENS=256", "--set", "TTT_EPOCHS=1", "--set", "TTT_BATCH_SEQS=4", "--json")
    assert code == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["tokens"] == 2048
    assert result["final_phase"] == ("ttt" if "--ttt" in flags else "sliding" if "--stride" in flags else "standard")
    assert reads["optim"] == set(), reads
    reader_own = {"device", "compile", "attn_backend", "fused_ce", "fused_mlp"}  # the reader's run settings
    assert reads["train"] <= set(ARTIFACT_TRAIN_FIELDS) | reader_own, reads
    assert "train_seq_len" in reads["train"]  # the watch sees reads
