"""Reading the reference's log, refusing configurations it cannot run, warm-up shapes, result names."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgolf.bench.reference import check_reference_config, link_data, parse_reference_log, reference_env
from pgolf.bench.report import device_slug, result_path
from pgolf.bench.run import Measurement, warmup_windows
from pgolf.errors import PgolfError
from pgolf.presets import baseline

# Lines in the exact formats of the reference's log0 f-strings (train_gpt.py, main()).
REFERENCE_LOG = """\
model_params:17059912
warmup_step:20/20
step:0/3 val_loss:6.9357 val_bpb:4.1077 train_time:0ms step_avg:0.02ms
step:1/3 train_loss:6.9370 train_time:412ms step_avg:412.41ms
step:2/3 train_loss:6.1000 train_time:812ms step_avg:406.00ms
step:3/3 train_loss:5.9000 train_time:1203ms step_avg:401.00ms
step:3/3 val_loss:5.8 val_bpb:3.4 train_time:1203ms step_avg:401.00ms
peak memory allocated: 10184 MiB reserved: 10588 MiB
final_int8_zlib_roundtrip val_loss:5.8100 val_bpb:3.4400 eval_time:15023ms
final_int8_zlib_roundtrip_exact val_loss:5.81000000 val_bpb:3.44000000
"""

# The environment variable names the reference's Hyperparameters read (baseline train_gpt.py).
REFERENCE_ENV_NAMES = (
    "DATA_PATH TOKENIZER_PATH RUN_ID SEED VAL_BATCH_SIZE VAL_LOSS_EVERY TRAIN_LOG_EVERY ITERATIONS WARMDOWN_ITERS "
    "WARMUP_STEPS TRAIN_BATCH_TOKENS TRAIN_SEQ_LEN MAX_WALLCLOCK_SECONDS QK_GAIN_INIT VOCAB_SIZE NUM_LAYERS "
    "NUM_KV_HEADS MODEL_DIM NUM_HEADS MLP_MULT TIE_EMBEDDINGS ROPE_BASE LOGIT_SOFTCAP EMBED_LR HEAD_LR "
    "TIED_EMBED_LR TIED_EMBED_INIT_STD MATRIX_LR SCALAR_LR MUON_MOMENTUM MUON_BACKEND_STEPS "
    "MUON_MOMENTUM_WARMUP_START MUON_MOMENTUM_WARMUP_STEPS BETA1 BETA2 ADAM_EPS GRAD_CLIP_NORM"
).split()
SCRIPT_TEXT = "\n".join(f'x = os.environ.get("{name}", "")' for name in REFERENCE_ENV_NAMES)


def test_parse_reference_train_log_takes_the_last_train_step_line():
    got = parse_reference_log(REFERENCE_LOG, "train")
    assert got == {"steps": 3, "total_ms": 1203.0, "step_ms": 401.0, "peak_memory_mib": 10184,
                   "peak_memory_reserved_mib": 10588, "eval_time_ms": 15023.0}


def test_parse_reference_eval_log_needs_no_step_line():
    text = "\n".join(line for line in REFERENCE_LOG.splitlines() if "train_loss" not in line)
    assert parse_reference_log(text, "eval")["eval_time_ms"] == 15023.0
    with pytest.raises(PgolfError, match="no 'step:N/M train_loss"):
        parse_reference_log(text, "train")


def test_unfinished_reference_log_is_an_error():
    with pytest.raises(PgolfError, match="did it finish"):
        parse_reference_log(REFERENCE_LOG.split("peak memory")[0], "train")


def test_reference_config_checks():
    cfg = baseline()
    cfg.model.num_layers = 11  # the reference reads NUM_LAYERS: fine
    cfg.train.attn_backend = "fa3"  # which kernels pgolf uses is what a comparison is for
    cfg.train.fused_ce = cfg.train.fused_mlp = True
    check_reference_config(cfg, SCRIPT_TEXT, "train")
    cfg.eval.eval_seq_len = 2048
    with pytest.raises(PgolfError, match="eval.eval_seq_len=2048: the reference does not read EVAL_SEQ_LEN"):
        check_reference_config(cfg, SCRIPT_TEXT, "train")
    for key, value, mode, message in [
        ("grad_accum_steps", 1, "train", "GRAD_ACCUM_STEPS=1"),
        ("compile", "0", "train", "always compiles"),
    ]:
        cfg = baseline()
        setattr(cfg.train, key, value)
        with pytest.raises(PgolfError, match=message):
            check_reference_config(cfg, SCRIPT_TEXT, mode)
    cfg = baseline()
    cfg.eval.val_max_tokens = 1000
    check_reference_config(cfg, SCRIPT_TEXT, "train")
    with pytest.raises(PgolfError, match="full val split"):
        check_reference_config(cfg, SCRIPT_TEXT, "eval")


def test_reference_env_and_data_links(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("fineweb_train_000001.bin", "fineweb_train_000007.bin", "fineweb_val_000000.bin"):
        (src / name).write_bytes(b"x")
    cfg = baseline()
    cfg.data.data_path = str(src)
    data = link_data(cfg, tmp_path / "linked")
    assert sorted(p.name for p in data.iterdir()) == ["fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    assert (data / "fineweb_train_000001.bin").resolve() == (src / "fineweb_train_000007.bin").resolve()
    env = reference_env(cfg, data, iterations=5, warmup_steps=3)
    assert env["DATA_PATH"] == str(data) and env["ITERATIONS"] == "5" and env["WARMUP_STEPS"] == "3"
    assert env["NUM_LAYERS"] == "9" and env["TIE_EMBEDDINGS"] == "1" and env["MAX_WALLCLOCK_SECONDS"] == "0"
    assert env["VAL_LOSS_EVERY"] == "0" and env["TRAIN_LOG_EVERY"] == "5"


@pytest.mark.parametrize("total,batch,expected", [(39, 16, 23), (32, 16, 16), (7, 16, 7), (16, 16, 16)])
def test_warmup_windows_cover_every_batch_shape(total, batch, expected):
    assert warmup_windows(total, batch) == expected
    full_shapes = {min(batch, total - s) for s in range(0, total, batch)}
    warm_shapes = {min(batch, expected - s) for s in range(0, expected, batch)}
    assert warm_shapes == full_shapes


def test_result_names():
    assert device_slug("cpu (x86_64, 2 cores)", 1) == "cpu"
    assert device_slug("NVIDIA H100 80GB HBM3", 8) == "8xh100-80gb-hbm3"
    m = Measurement("eval", 1, 2, 10, 1.0, 1, "NVIDIA H200", 1, "fa3", True, 3, 0, 100)
    assert result_path(Path("out"), "configs/my run.toml", m, date="2026-01-02") == Path("out/2026-01-02_h200_my-run_eval.json")


# The last lines of R15's train.log (records/track_10min_16mb/2026-03-19_smeargate_orthoinit_muonwd).
R15_LOG_TAIL = """\
step:12047/20000 val_loss:2.0079 val_bpb:1.1892 train_time:599974ms step_avg:49.80ms
peak memory allocated: 11340 MiB reserved: 11504 MiB
final_int6_roundtrip val_loss:2.0077 val_bpb:1.1891 eval_time:1553ms
final_int6_roundtrip_exact val_loss:2.00771951 val_bpb:1.18908459
final_sliding_window_eval stride:64 val_loss:1.9511 val_bpb:1.1556 eval_time:75096ms
final_sliding_window_eval_exact stride:64 val_loss:1.95110428 val_bpb:1.15555486
"""
# R15's Hyperparameters read these names (its train_gpt_v5.py); the rest of its setup is hard-coded.
R15_ENV_NAMES = REFERENCE_ENV_NAMES + "EVAL_STRIDE MUON_WEIGHT_DECAY BIGRAM_HASH_BUCKETS BIGRAM_HASH_DIM USE_SMEARGATE".split()
R15_TEXT = "\n".join(f'x = os.environ.get("{name}", "")' for name in R15_ENV_NAMES)


def test_parse_a_record_log_with_its_sliding_evaluation():
    got = parse_reference_log(R15_LOG_TAIL, "eval", sliding=True)
    assert got["eval_time_ms"] == 1553.0  # final_int6_roundtrip: any export's round-trip line
    assert (got["sliding_stride"], got["sliding_val_bpb"], got["sliding_eval_time_ms"]) == (64, 1.1556, 75096.0)
    with pytest.raises(PgolfError, match="no 'final_..._sliding_window"):
        parse_reference_log(REFERENCE_LOG, "eval", sliding=True)
    # R22's order (train_seed1337.log): stride after the score, and an int8 "_exact" alias of the sliding score
    r22 = """\
peak memory allocated: 21471 MiB reserved: 22002 MiB
final_int6_roundtrip val_loss:1.9336 val_bpb:1.1452 eval_time:6562ms
final_int6_roundtrip_exact val_loss:1.93358885 val_bpb:1.14518023
final_int6_sliding_window val_loss:1.8939 val_bpb:1.1217 stride:64 eval_time:74066ms
final_int8_zlib_roundtrip_exact val_loss:1.89385556 val_bpb:1.12165091
"""
    got = parse_reference_log(r22, "eval", sliding=True)
    assert (got["eval_time_ms"], got["sliding_stride"], got["sliding_val_bpb"], got["sliding_eval_time_ms"]) == (6562.0, 64, 1.1217, 74066.0)


def test_a_record_preset_compares_with_its_own_script():
    from pgolf.presets import build_config

    cfg = build_config("smeargate_orthoinit_muonwd", [], environ={})
    check_reference_config(cfg, R15_TEXT, "eval")  # ORTHO_INIT, QAT, int6: not read, hard-coded at the preset's values
    env = reference_env(cfg, Path("/data"), iterations=0, warmup_steps=2)
    assert (env["BIGRAM_HASH_BUCKETS"], env["BIGRAM_HASH_DIM"], env["MUON_WEIGHT_DECAY"]) == ("4096", "128", "0.01")
    assert "BIGRAM_VOCAB_SIZE" not in env and env["EVAL_STRIDE"] == "64"
    cfg.model.ortho_init = False  # the script hard-codes orthogonal init
    with pytest.raises(PgolfError, match="model.ortho_init=False: the reference does not read ORTHO_INIT"):
        check_reference_config(cfg, R15_TEXT, "train")
    cfg = build_config("smeargate_orthoinit_muonwd", [], environ={})
    with pytest.raises(PgolfError, match="this script is not it"):
        check_reference_config(cfg, SCRIPT_TEXT, "train")  # the baseline's script for R15's preset
    cfg = build_config("baseline", ["EVAL_STRIDE=64"], environ={})
    with pytest.raises(PgolfError, match="does not read EVAL_STRIDE"):
        check_reference_config(cfg, SCRIPT_TEXT, "eval")


def test_a_record_sliding_rate_counts_the_targets_it_scores():
    from pgolf.bench.reference import sliding_targets
    from pgolf.bench.report import reference_numbers
    from pgolf.presets import build_config

    assert sliding_targets(4096, 1024, 64) == 49 * 64  # windows at 0, 64, ..., 3072
    assert sliding_targets(1000, 1024, 64) == 64  # one window, as its max(..., 1)
    cfg = build_config("smeargate_orthoinit_muonwd", [], environ={})
    ours = Measurement("eval", 1, 2, 4096, 500.0, 1, "cpu", 1, "sdpa", False, 0, 0, None, details={"stride": 64})
    raw = parse_reference_log(R15_LOG_TAIL, "eval", sliding=True)
    got = reference_numbers(raw, ours, cfg)
    assert got["tokens"] == 49 * 64 and got["tokens_per_s"] == pytest.approx(49 * 64 / 75.096)
