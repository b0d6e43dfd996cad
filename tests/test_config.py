"""Config resolution: presets, the reference env names, --set overrides and their errors."""

from __future__ import annotations

import pytest

from pgolf.config import Config, apply_env, apply_overrides, from_dict, iter_fields, override_env
from pgolf.errors import PgolfError
from pgolf.presets import PRESETS, build_config, resolve_preset

# Every Hyperparameters attribute of the reference train_gpt.py that is read from the environment.
REFERENCE_ENV_NAMES = {
    "DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "SEED", "VAL_BATCH_SIZE", "VAL_LOSS_EVERY", "TRAIN_LOG_EVERY",
    "ITERATIONS", "WARMDOWN_ITERS", "WARMUP_STEPS", "TRAIN_BATCH_TOKENS", "TRAIN_SEQ_LEN", "MAX_WALLCLOCK_SECONDS",
    "QK_GAIN_INIT", "VOCAB_SIZE", "NUM_LAYERS", "NUM_KV_HEADS", "MODEL_DIM", "NUM_HEADS", "MLP_MULT",
    "TIE_EMBEDDINGS", "ROPE_BASE", "LOGIT_SOFTCAP", "EMBED_LR", "HEAD_LR", "TIED_EMBED_LR", "TIED_EMBED_INIT_STD",
    "MATRIX_LR", "SCALAR_LR", "MUON_MOMENTUM", "MUON_BACKEND_STEPS", "MUON_MOMENTUM_WARMUP_START",
    "MUON_MOMENTUM_WARMUP_STEPS", "BETA1", "BETA2", "ADAM_EPS", "GRAD_CLIP_NORM",
}


def test_every_reference_env_name_is_a_field():
    names = {f.metadata["env"] for _, f in iter_fields(Config())}
    assert REFERENCE_ENV_NAMES <= names


def test_baseline_defaults_equal_the_reference_defaults():
    cfg = build_config("baseline", environ={})
    assert (cfg.model.num_layers, cfg.model.model_dim, cfg.model.num_heads, cfg.model.num_kv_heads) == (9, 512, 8, 4)
    assert (cfg.train.iterations, cfg.train.warmdown_iters, cfg.train.warmup_steps) == (20000, 1200, 20)
    assert (cfg.train.train_batch_tokens, cfg.train.train_seq_len, cfg.train.max_wallclock_seconds) == (524288, 1024, 600.0)
    assert (cfg.optim.matrix_lr, cfg.optim.tied_embed_lr, cfg.optim.muon_momentum_warmup_start) == (0.04, 0.05, 0.85)
    assert cfg.data.train_glob() == "./data/datasets/fineweb10B_sp1024/fineweb_train_*.bin"


def test_env_then_set_precedence():
    env = {"NUM_LAYERS": "11", "TRAIN_SEQ_LEN": "2048", "TIE_EMBEDDINGS": "0", "MATRIX_LR": "0.02"}
    cfg = build_config("baseline", ["model.num_layers=12"], environ=env)
    assert cfg.model.num_layers == 12  # --set beats the environment
    assert cfg.train.train_seq_len == 2048 and cfg.model.tie_embeddings is False and cfg.optim.matrix_lr == 0.02


def test_set_accepts_reference_names_and_integral_floats():
    cfg = build_config("baseline", ["NUM_LAYERS=10", "TRAIN_BATCH_TOKENS=7.86432e5"], environ={})
    assert cfg.model.num_layers == 10 and cfg.train.train_batch_tokens == 786432


@pytest.mark.parametrize(
    "override, message",
    [
        ("NOPE=1", "unknown config key"),
        ("model.nope=1", "has no field"),
        ("NUM_LAYERS=abc", "expected a int"),
        ("TRAIN_SEQ_LEN=1.5", "expected a int"),
        ("TIE_EMBEDDINGS=maybe", "expected a bool"),
        ("NUM_HEADS=7", "divisible"),
        ("novalue", "expected key=value"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(PgolfError, match=message) as info:
        build_config("baseline", [override], environ={})
    assert "\n" not in str(info.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(PgolfError, match="ITERATIONS"):
        apply_env(Config(), {"ITERATIONS": "lots"})


def test_unknown_preset_lists_known_ones():
    with pytest.raises(PgolfError, match="baseline"):
        resolve_preset("nope")


def test_to_dict_round_trip_for_every_preset():
    for name in PRESETS:
        cfg = resolve_preset(name)
        assert from_dict(cfg.to_dict()) == cfg


def test_toml_preset_with_base(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('base = "baseline"\n[model]\nnum_layers = 11\n[train]\ntrain_seq_len = 2048\n')
    cfg = build_config(str(path), environ={})
    assert cfg.model.num_layers == 11 and cfg.train.train_seq_len == 2048 and cfg.model.model_dim == 512
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(PgolfError, match="invalid TOML"):
        build_config(str(bad), environ={})
    with pytest.raises(PgolfError, match="not found"):
        build_config(str(tmp_path / "missing.toml"), environ={})


@pytest.mark.parametrize("override, message", [
    ("MLP_ACTIVATION=gelu", "MLP_ACTIVATION='gelu': expected one of relu2, leaky_relu2, swiglu"),
    ("PGOLF_TTT=adam", "PGOLF_TTT='adam': expected one of '', sgd, lora, phased"),
    ("NUM_HEADS=0", r"NUM_HEADS=0: must be > 0"),
    ("Z_LOSS=-0.5", r"Z_LOSS=-0.5: must be >= 0"),
    ("EMA_DECAY=1", r"EMA_DECAY=1.0: must be in \[0, 1\)"),
    ("WARMDOWN_FRAC=1.5", r"WARMDOWN_FRAC=1.5: must be in \[0, 1\]"),
    ("VOCAB_SIZE=70000", "VOCAB_SIZE=70000: must be in 1..65536"),
    ("LQER_FACTOR_BITS=9", "LQER_FACTOR_BITS=9: must be in 2..8"),
])
def test_each_field_check_names_the_variable_and_the_rule(override, message):
    with pytest.raises(PgolfError, match=message):
        build_config("baseline", [override], environ={})


def test_field_checks_accept_their_boundaries():
    build_config("baseline", ["EMA_DECAY=0", "WARMDOWN_FRAC=1", "VOCAB_SIZE=65536", "LQER_FACTOR_BITS=2", "Z_LOSS=0"],
                 environ={})


def test_a_cross_check_only_runs_with_its_switch_on():
    build_config("baseline", ["GATE_WINDOW=0"], environ={})  # no gate uses the window: nothing to refuse
    with pytest.raises(PgolfError, match="GATE_WINDOW=0"):
        build_config("baseline", ["GATE_WINDOW=0", "SMEAR_GATE_ENABLED=1"], environ={})


def test_packed_global_sgd_needs_document_isolated_attention():
    build_config("baseline", ["DOC_ISOLATED_ATTENTION=1", "PGOLF_GLOBAL_TTT_PACKED=1"], environ={})
    with pytest.raises(PgolfError, match="PGOLF_GLOBAL_TTT_PACKED .* needs DOC_ISOLATED_ATTENTION=1"):
        build_config("baseline", ["PGOLF_GLOBAL_TTT_PACKED=1"], environ={})


def test_schema_choices_equal_the_implementations_own():
    from pgolf.model.attn_backend import BACKENDS
    from pgolf.model.mlp import ACTIVATIONS
    from pgolf.model.residual import LANE_ENDINGS
    from pgolf.optim.muon import NS_SCHEDULES

    checks = {f.name: f.metadata["check"] for _, f in iter_fields(Config())}
    assert checks["mlp_activation"] == ACTIVATIONS and checks["attn_backend"] == BACKENDS
    assert checks["parallel_final_lane"] == LANE_ENDINGS and checks["muon_ns_schedule"] == NS_SCHEDULES


def test_override_env_gives_each_set_item_as_the_env_var_that_means_the_same():
    items = ["train.iterations=3", "NUM_LAYERS=2", "eval.ttt=sgd", "PGOLF_COMPILE=0"]
    env = override_env(items)
    assert env == {"ITERATIONS": "3", "NUM_LAYERS": "2", "PGOLF_TTT": "sgd", "PGOLF_COMPILE": "0"}
    by_set, by_env = Config(), Config()
    apply_overrides(by_set, items)
    apply_env(by_env, env)
    assert by_set == by_env


def test_override_env_refuses_a_bad_item_in_one_line():
    with pytest.raises(PgolfError, match="unknown config key 'NOPE'"):
        override_env(["NOPE=1"])
    with pytest.raises(PgolfError, match="ITERATIONS='x'"):
        override_env(["ITERATIONS=x"])


@pytest.mark.parametrize("override, message", [
    ("ITERATIONS=-5", r"ITERATIONS=-5: must be >= 0"),
    ("VAL_MAX_TOKENS=-1", r"VAL_MAX_TOKENS=-1: must be >= 0"),
    ("MAX_WALLCLOCK_SECONDS=-1", r"MAX_WALLCLOCK_SECONDS=-1.0: must be >= 0"),
    ("MATRIX_LR=-1", r"MATRIX_LR=-1.0: must be >= 0"),
    ("MATRIX_LR=nan", r"MATRIX_LR=nan: must be >= 0"),
    ("MUON_MOMENTUM=1", r"MUON_MOMENTUM=1.0: must be in \[0, 1\)"),
    ("ADAM_EPS=0", r"ADAM_EPS=0.0: must be > 0"),
    ("SEED=-3", r"SEED=-3: must be in 0..2\*\*32-1"),
    ("QK_GAIN_INIT=inf", r"QK_GAIN_INIT=inf: must be finite"),
    ("PARALLEL_RESIDUAL_START=-2", r"PARALLEL_RESIDUAL_START=-2: must be >= -1"),
])
def test_numeric_values_out_of_range_are_refused(override, message):
    with pytest.raises(PgolfError, match=message):
        build_config("baseline", [override], environ={})


def test_every_numeric_field_has_a_range():
    unchecked = [f.metadata["env"] for _, f in iter_fields(Config())
                 if f.type in ("int", "float") and f.metadata.get("check") is None]
    assert unchecked == []


def test_every_preset_passes_the_field_ranges():
    for name in PRESETS:
        build_config(name, environ={})


def test_the_cli_refuses_a_negative_iteration_count_before_writing_anything(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pgolf.cli", "train", "--preset", "tiny_cpu", "--set", "ITERATIONS=-5",
                           "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("ITERATIONS=-5: must be >= 0"), proc.stderr
    assert list(tmp_path.iterdir()) == []


# -- the artifact's config: its difference from the schema defaults ------------------------------


def other_value(value):
    """A value of the same type that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return value + "x"


def stored_fields(delta: dict) -> set[tuple[str, str]]:
    return {(s, k) for s, values in delta.items() if s != "preset" for k in values}


def carried(section: str, name: str) -> bool:
    """Whether an artifact carries the field (every section but optim; of train, the two scoring reads)."""
    from pgolf.config import ARTIFACT_TRAIN_FIELDS

    return section != "optim" and (section != "train" or name in ARTIFACT_TRAIN_FIELDS)


def differing_fields(cfg: Config) -> set[tuple[str, str]]:
    """Brute force: every carried field whose value is not the schema default's, by getattr."""
    defaults = Config()
    return {(s, f.name) for s, f in iter_fields(cfg)
            if carried(s, f.name) and repr(getattr(getattr(cfg, s), f.name)) != repr(getattr(getattr(defaults, s), f.name))}


def scoring_view(cfg: Config) -> dict:
    """The carried fields by getattr, and the preset: what a reader of the artifact must get back."""
    return {"preset": cfg.preset, **{(s, f.name): repr(getattr(getattr(cfg, s), f.name)) for s, f in iter_fields(cfg) if carried(s, f.name)}}


def rebuilds(delta: dict, cfg: Config) -> bool:
    """The artifact's config gives the reader ``cfg``'s carried fields, and its own defaults elsewhere."""
    got, defaults = from_dict(delta), Config()
    return scoring_view(got) == scoring_view(cfg) and all(
        repr(getattr(getattr(got, s), f.name)) == repr(getattr(getattr(defaults, s), f.name))
        for s, f in iter_fields(got) if not carried(s, f.name))


def test_the_artifact_config_holds_exactly_the_differing_fields_and_rebuilds_every_preset():
    import json

    from pgolf.config import artifact_meta

    for name in PRESETS:
        cfg = resolve_preset(name)
        delta = json.loads(json.dumps(artifact_meta(cfg)["config"]))  # as the artifact's JSON holds it
        assert stored_fields(delta) == differing_fields(cfg), name
        assert delta["preset"] == name
        assert rebuilds(delta, cfg), name


def test_the_artifact_config_rebuilds_a_config_with_any_one_field_changed():
    from pgolf.config import artifact_meta

    for preset in ("baseline", "sp8192_lqer_sparsegate_bossmear"):
        for section, f in iter_fields(Config()):
            cfg = resolve_preset(preset)
            values = getattr(cfg, section)
            setattr(values, f.name, other_value(getattr(values, f.name)))
            delta = artifact_meta(cfg)["config"]
            assert stored_fields(delta) == differing_fields(cfg) and rebuilds(delta, cfg), (preset, f.name)
            if not carried(section, f.name):  # training only: the artifact's bytes do not change
                assert delta == artifact_meta(resolve_preset(preset))["config"], (preset, f.name)


def test_a_bundles_artifact_config_is_the_packages(monkeypatch, plant_default):
    # A bundle's schema defaults are its frozen values (pgolf.bundle.specialise.compact_schema, planted
    # here); the bundler freezes in the frozen config's difference from the package's defaults, and the
    # artifact's config is that with what the environment changed laid over it, a field set back to the
    # package's default included. The package, with its own defaults, rebuilds the run's config.
    import dataclasses

    import pgolf.config as config
    from pgolf.config import artifact_meta

    frozen = resolve_preset("mlp3x_int8emb_seq2048")
    monkeypatch.setattr(config, "BUNDLE_DELTA", {s: v for s, v in artifact_meta(frozen)["config"].items() if s != "preset"})
    for section, f in iter_fields(frozen):
        plant_default(type(getattr(frozen, section)), f.name, getattr(getattr(frozen, section), f.name))
    cfg = Config(preset=frozen.preset)  # as the bundle's entry builds it
    assert dataclasses.asdict(cfg) == dataclasses.asdict(frozen)
    apply_env(cfg, {"MLP_MULT": "2", "SEED": "7", "TRAIN_SEQ_LEN": "1024"})  # 2 is the package's default
    bundled = artifact_meta(cfg)["config"]
    monkeypatch.undo()  # the package's defaults
    assert rebuilds(bundled, cfg) and scoring_view(cfg) != scoring_view(frozen)
    assert bundled["model"]["mlp_mult"] == 2 and bundled["train"]["seed"] == 7


def test_the_defaults_fingerprint_follows_the_schema_defaults(plant_default):
    from pgolf.config import ModelConfig, OptimConfig, TrainConfig, artifact_meta, check_defaults, defaults_fingerprint

    meta = artifact_meta(resolve_preset("tiny_cpu"))
    assert meta["config_defaults"] == defaults_fingerprint() and len(meta["config_defaults"]) == 16
    check_defaults(meta, "model.pgolf")  # the same defaults: read
    check_defaults({"config": {}}, "model.pgolf")  # no fingerprint (an older artifact, its config whole): read
    plant_default(OptimConfig, "matrix_lr", 0.5)  # a training-only default: every artifact stays readable
    plant_default(TrainConfig, "iterations", 7)
    assert defaults_fingerprint() == meta["config_defaults"]
    plant_default(TrainConfig, "train_seq_len", 512)  # one scoring reads: another config
    assert defaults_fingerprint() != meta["config_defaults"]
    plant_default(TrainConfig, "train_seq_len", 1024)  # the schema's own again
    assert defaults_fingerprint() == meta["config_defaults"]
    plant_default(ModelConfig, "logit_softcap", 20.0)
    assert defaults_fingerprint() != meta["config_defaults"]
    with pytest.raises(PgolfError, match=r"^model.pgolf: .*other schema defaults.*pass --preset/--set") as err:
        check_defaults(meta, "model.pgolf")
    assert "\n" not in str(err.value)


def test_an_artifact_fingerprinted_over_the_whole_config_stays_readable(plant_default):
    # Before the training-only fields were left out, the fingerprint hashed the whole Config().to_json()
    # (computed here by brute force, not by pgolf): such an artifact reads while those defaults hold.
    import hashlib

    from pgolf.config import OptimConfig, check_defaults

    def whole() -> dict:
        return {"config": {"preset": "tiny_cpu"}, "config_defaults": hashlib.sha256(Config().to_json().encode()).hexdigest()[:16]}

    old = whole()
    check_defaults(old, "old.pgolf")
    plant_default(OptimConfig, "matrix_lr", 0.5)  # its difference was from these defaults: now another config
    with pytest.raises(PgolfError, match="other schema defaults"):
        check_defaults(old, "old.pgolf")
    check_defaults(whole(), "new-defaults.pgolf")
