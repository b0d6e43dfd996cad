"""verify(): per-shard checks and lines, tokenizer/vocab agreement, and the CLI's exit codes."""

from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np
import pytest
import sentencepiece as spm

from pgolf.data import cli as data_cli
from pgolf.data.shards import write_shard
from pgolf.data.verify import verify
from pgolf.errors import PgolfError


def test_real_train_sample_with_the_official_tokenizer(train_sample_dir, sp1024_model):
    out = io.StringIO()
    report = verify([train_sample_dir], tokenizer=sp1024_model, vocab_size=1024, out=out)
    assert len(report.shards) == 4 and report.vocab_size == 1024
    assert report.tokens == 4_797_698 and report.docs == 2_414 and report.max_id <= 1023
    lines = out.getvalue().splitlines()
    assert (
        lines[0]
        == f"{train_sample_dir / 'fineweb_train_000000.bin'}: 628457 tokens, 200 docs, max id {report.shards[0].max_id}"
    )
    assert lines[-1].startswith("OK: 4 shards, 4797698 tokens, 2414 docs") and len(lines) == 5


def test_real_val_prefix(val_prefix_shard, sp1024_model):
    report = verify(val_prefix_shard, tokenizer=sp1024_model, out=io.StringIO())
    assert (report.tokens, report.docs, report.max_id) == (1_040_298, 902, 1023)


def test_directory_includes_both_splits_in_name_order(tmp_path):
    write_shard(tmp_path / "fineweb_val_000000.bin", np.array([1, 5, 6, 1, 7], dtype=np.uint16))
    write_shard(tmp_path / "fineweb_train_000000.bin", np.array([9, 1, 8], dtype=np.uint16))
    report = verify(tmp_path, out=io.StringIO())
    assert [(s.tokens, s.docs, s.max_id) for s in report.shards] == [(3, 1, 9), (5, 2, 7)]
    assert report.vocab_size is None and "no vocab size" in report.summary()


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "fineweb_val_000000.bin", np.zeros(0, dtype=np.uint16))
    report = verify(tmp_path / "fineweb_val_000000.bin", vocab_size=4, out=io.StringIO())
    assert (report.tokens, report.docs, report.max_id) == (0, 0, -1)


def bad_header(path, magic=20240520, version=1, count=3, payload=3):
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, count
    path.write_bytes(header.tobytes() + np.ones(payload, dtype="<u2").tobytes())


@pytest.fixture
def shards(tmp_path):
    """A good shard and one of each kind of bad shard, by name."""
    write_shard(tmp_path / "good.bin", np.array([1, 10, 20], dtype=np.uint16))
    write_shard(tmp_path / "big_id.bin", np.array([1, 10, 1024], dtype=np.uint16))
    bad_header(tmp_path / "magic.bin", magic=7)
    bad_header(tmp_path / "version.bin", version=3)
    bad_header(tmp_path / "size.bin", count=4)
    (tmp_path / "empty_dir").mkdir()
    return tmp_path


CASES = [
    (["missing.bin"], {}, "missing.bin: no such file or directory"),
    (["*.nothing"], {}, "*.nothing: glob matched no files"),
    (["empty_dir"], {}, "empty_dir: no fineweb_*_*.bin shards in this directory"),
    (["good.bin", "magic.bin"], {}, "magic.bin: bad shard magic 7"),
    (["version.bin"], {}, "version.bin: unsupported shard version 3"),
    (["size.bin"], {}, "size.bin: shard size mismatch"),
    (["big_id.bin"], {"vocab_size": 1024}, "big_id.bin: token id 1024 >= vocab size 1024 (first at position 2)"),
    (["big_id.bin"], {"tokenizer": "SP1024"}, "big_id.bin: token id 1024 >= vocab size 1024"),
    (["good.bin"], {"tokenizer": "SP1024", "vocab_size": 512}, "does not match VOCAB_SIZE=512"),
    (["good.bin"], {"tokenizer": "missing.model"}, "missing.model: tokenizer file not found"),
    (["good.bin"], {"vocab_size": 0}, "vocab size must be a positive integer"),
]


def resolve(shards, sp1024_model, paths, kwargs):
    paths = [str(shards / p) for p in paths]
    kwargs = dict(kwargs)
    if kwargs.get("tokenizer") == "SP1024":
        kwargs["tokenizer"] = str(sp1024_model)
    elif "tokenizer" in kwargs:
        kwargs["tokenizer"] = str(shards / kwargs["tokenizer"])
    return paths, kwargs


@pytest.mark.parametrize(("paths", "kwargs", "problem"), CASES)
def test_bad_inputs_are_one_line_errors_naming_the_file(shards, sp1024_model, paths, kwargs, problem):
    paths, kwargs = resolve(shards, sp1024_model, paths, kwargs)
    with pytest.raises(PgolfError) as err:
        verify(paths, out=io.StringIO(), **kwargs)
    message = str(err.value)
    assert problem in message and "\n" not in message
    assert str(shards) in message or str(sp1024_model) in message or problem.startswith("vocab size")


@pytest.mark.parametrize(("paths", "kwargs", "problem"), CASES)
def test_cli_verify_bad_inputs_exit_2_with_one_stderr_line(shards, sp1024_model, run_pgolf, paths, kwargs, problem):
    paths, kwargs = resolve(shards, sp1024_model, paths, kwargs)
    argv = ["data", "verify", *paths]
    if "tokenizer" in kwargs:
        argv += ["--tokenizer", kwargs["tokenizer"]]
    if "vocab_size" in kwargs:
        argv += ["--vocab-size", str(kwargs["vocab_size"])]
    code, _, err = run_pgolf(argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("pgolf: error: ") and problem in err


def test_cli_verify_ok(shards, run_pgolf):
    code, out, err = run_pgolf(["data", "verify", str(shards / "good.bin"), "--vocab-size", "21"])
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"{shards / 'good.bin'}: 3 tokens, 1 docs, max id 20",
        "OK: 1 shards, 3 tokens, 1 docs, max id 20 < vocab size 21",
    ]
    code, out, err = run_pgolf(["data", "verify", str(shards / "good.bin"), "--vocab-size", "21", "--json"])
    assert code == 0 and err == "" and len(out.splitlines()) == 1
    assert json.loads(out) == {"shards": [{"path": str(shards / "good.bin"), "tokens": 3, "docs": 1, "max_id": 20}],
                               "tokens": 3, "docs": 1, "max_id": 20, "vocab_size": 21}


def test_tokenizer_without_bos_1_is_refused(tmp_path):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["some plain text to learn from"] * 20),
        model_prefix=str(tmp_path / "odd"),
        vocab_size=40,
        bos_id=2,
        eos_id=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    write_shard(tmp_path / "s.bin", np.array([1, 5], dtype=np.uint16))
    with pytest.raises(PgolfError, match="bos_id is 2"):
        verify(tmp_path / "s.bin", tokenizer=tmp_path / "odd.model", out=io.StringIO())


def test_data_without_subcommand_prints_help_and_exits_2(run_pgolf):
    code, _, err = run_pgolf(["data"])
    assert code == 2 and "verify" in err and "audit" in err


def test_every_option_has_help():
    parser = argparse.ArgumentParser(prog="pgolf")
    subparsers = parser.add_subparsers()
    data_cli.register(subparsers)
    data = subparsers.choices["data"]
    commands = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"verify", "prepare", "download", "audit"}
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"pgolf data {name} {action.dest} has no help"


def test_cli_module_imports_nothing_heavy():
    import subprocess

    heavy = ("torch", "sentencepiece", "huggingface_hub", "numpy")
    code = f"import sys, pgolf.data.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
