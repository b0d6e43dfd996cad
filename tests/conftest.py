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

# Off a terminal, a phase that outlasts a few seconds prints progress lines on stderr, so how many
# stderr lines a verb prints would depend on the machine's load; the progress tests choose the mode
# themselves (PGOLF_PROGRESS), every other test sees none.
os.environ.setdefault("PGOLF_PROGRESS", "off")


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


@pytest.fixture(scope="session")
def finished_run(shared_data, tmp_path_factory) -> Path:
    """``runs/w``: a finished tiny_cpu run on the real data (3 steps, a 4,096-token val prefix), its
    artifact int8 with ``small=4096`` (so its matrices and embedding hold int8 values and scales, as a
    real export does). Shared by the tests that read a run; none of them may change it."""
    from pgolf.presets import build_config
    from pgolf.train.loop import train

    d = shared_data / "datasets"
    runs = tmp_path_factory.mktemp("runs")
    sets = [f"DATA_PATH={d / 'fineweb10B_sp1024_trainsample'}",
            f"VAL_FILES={d / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
            "ITERATIONS=3", "VAL_MAX_TOKENS=4096", "TRAIN_LOG_EVERY=0", "PGOLF_QUANT_SCHEME=int8,small=4096", "RUN_ID=w"]
    train(build_config("tiny_cpu", sets, environ={}), runs_dir=runs, echo=False)
    return runs / "w"


# -- oracles: the reference and record scripts (../shared/oracles or PGOLF_ORACLES), imported on CPU,
# never copied (tests/oracles.py); where absent, the test using them is skipped in one line.

@pytest.fixture()
def plant_default(monkeypatch):
    """``plant(section_cls, name, value)``: give a config field another schema default for this test (a
    pgolf built with other defaults, reading an artifact whose config is its difference from the defaults)."""
    from dataclasses import fields

    def plant(section_cls, name: str, value) -> None:
        defaults = list(section_cls.__init__.__defaults__)  # one per field: every field has a default
        defaults[[f.name for f in fields(section_cls)].index(name)] = value
        monkeypatch.setattr(section_cls.__init__, "__defaults__", tuple(defaults))

    return plant


@pytest.fixture(scope="session")
def oracle():
    """``oracle("R22_leakyrelu_ttt_parallel_muon/train_gpt.py")`` -> that script's module, imported once
    with an SDPA stand-in for FlashAttention 3."""
    from oracles import import_oracle

    return import_oracle


@pytest.fixture(scope="session")
def reference_script(oracle):
    """The reference train_gpt.py as a module (its main() is behind a __main__ guard)."""
    return oracle("reference/train_gpt.py")


R44_FOLDER = "R44_sp8192_lqer_sparsegate_bossmear"
R44_TOKENIZER = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
CASEOPS_VAL_PREFIX_DOCS = 300  # val-prefix docs in the CaseOps oracle data (issue 16's measurement)
CASEOPS_RAW_VAL_DOCS = 20  # raw docs (newlines, capitals, NFKC-changed characters) after them, still val
CASEOPS_TRAIN_DOCS = 10


@pytest.fixture(scope="session")
def r44_tokenizer() -> Path:
    from oracles import oracle_path

    return oracle_path(f"{R44_FOLDER}/{R44_TOKENIZER}")


@pytest.fixture(scope="session")
def lossless_caps(oracle):
    """R44's own case transform (lossless_caps.py)."""
    return oracle(f"{R44_FOLDER}/lossless_caps.py")


@pytest.fixture(scope="session")
def r44_prepare(oracle):
    """R44's prepare_caseops_data.py, whose SentencePiece calls the removed ``encode_as_immutable_proto``:
    its ``spm`` is given a processor that provides it from SentencePiece's own serialized proto."""
    import types

    from oracles import ProtoSurfaces

    module = oracle(f"{R44_FOLDER}/prepare_caseops_data.py")
    module.spm = types.SimpleNamespace(SentencePieceProcessor=ProtoSurfaces)
    return module


def caseops_oracle_docs(shared: Path) -> list[str]:
    import itertools
    import json

    def texts(name: str, count: int, skip: int = 0) -> list[str]:
        with (shared / "docs" / name).open(encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in itertools.islice(f, skip, skip + count)]

    return (texts("fineweb_val_prefix_docs.jsonl", CASEOPS_VAL_PREFIX_DOCS)
            + texts("fineweb_docs_selected_sample200.jsonl", CASEOPS_RAW_VAL_DOCS + CASEOPS_TRAIN_DOCS))


@pytest.fixture(scope="session")
def record_caseops_data(shared_data, r44_prepare, r44_tokenizer, tmp_path_factory):
    """(folder of CaseOps shards + val byte sidecar built by the record's own prepare_caseops_data.main(), the docs file).

    Val: the first 300 val-prefix docs, then 20 raw FineWeb docs; train: 10 more raw docs.
    """
    import json
    import sys

    root = tmp_path_factory.mktemp("record_caseops")
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in caseops_oracle_docs(shared_data)), encoding="utf-8")
    argv = sys.argv
    sys.argv = ["prepare_caseops_data.py", "--docs", str(docs), "--out", str(root / "out"), "--sp", str(r44_tokenizer),
                "--val-docs", str(CASEOPS_VAL_PREFIX_DOCS + CASEOPS_RAW_VAL_DOCS)]
    try:
        r44_prepare.main()
    finally:
        sys.argv = argv
    return root / "out" / "datasets" / "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved", docs


@pytest.fixture(scope="session")
def r44_script():
    """R44's train_gpt.py as a module."""
    from oracles import import_oracle

    return import_oracle(f"{R44_FOLDER}/train_gpt.py")


@pytest.fixture(scope="session")
def pgolf_caseops_data(record_caseops_data, r44_tokenizer, tmp_path_factory) -> Path:
    """The same documents as ``record_caseops_data`` through ``pgolf data prepare`` (CaseOps from the tokenizer)."""
    from pgolf.data.prepare import prepare

    _, docs = record_caseops_data
    out = tmp_path_factory.mktemp("pgolf_caseops") / "data"
    prepare(docs, out, tokenizer=r44_tokenizer, val_docs=CASEOPS_VAL_PREFIX_DOCS + CASEOPS_RAW_VAL_DOCS, progress=False)
    return out
