"""prepare(): documents -> tokenizer + val/train shards + manifest, and every bad input named."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.data.prepare import count_documents, document_files, iter_documents, prepare
from pgolf.data.shards import file_sha256, read_shard
from pgolf.errors import PgolfError

WORDS = "the of and to in is was for on that with as by at from his her they this have had are not but".split()


def make_docs(num_docs: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))).capitalize() + f". {rng.randint(0, 999)}"
        for _ in range(num_docs)
    ]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def stream(out: Path, split: str) -> np.ndarray:
    files = sorted(out.glob(f"fineweb_{split}_*.bin"))
    return np.concatenate([np.asarray(read_shard(f)) for f in files]) if files else np.zeros(0, np.uint16)


def expected_stream(sp, docs: list[str]) -> list[int]:
    return [t for d in docs for t in [1] + sp.encode(d)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """30 docs, 5 for val, a 320-piece tokenizer trained here, 400-token shards."""
    root = tmp_path_factory.mktemp("prep")
    docs = make_docs(30)
    source = write_jsonl(root / "docs.jsonl", docs)
    result = prepare(source, root / "out", vocab_size=320, val_docs=5, shard_tokens=400, progress=False)
    return docs, result


def test_splits_hold_bos_plus_encoding_of_each_doc(prepared):
    docs, result = prepared
    sp = spm.SentencePieceProcessor(model_file=str(result.out_dir / "tokenizer.model"))
    assert sp.vocab_size() == 320
    assert stream(result.out_dir, "val").tolist() == expected_stream(sp, docs[:5])
    assert stream(result.out_dir, "train").tolist() == expected_stream(sp, docs[5:])


def test_shards_are_full_except_the_last_of_each_split(prepared):
    _, result = prepared
    for split in ("val", "train"):
        sizes = [read_shard(f).size for f in sorted(result.out_dir.glob(f"fineweb_{split}_*.bin"))]
        assert len(sizes) >= 2 and all(s == 400 for s in sizes[:-1]) and 0 < sizes[-1] <= 400


def test_manifest_counts_and_checksums(prepared):
    docs, result = prepared
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest == result.manifest
    out = result.out_dir
    for split, ndocs in (("val", 5), ("train", 25)):
        entry = manifest["splits"][split]
        assert entry["docs"] == ndocs
        assert entry["tokens"] == stream(out, split).size == sum(s["tokens"] for s in entry["shards"])
        for shard in entry["shards"]:
            assert file_sha256(out / shard["file"]) == shard["sha256"]
            assert read_shard(out / shard["file"]).size == shard["tokens"]
    stats = manifest["stats"]
    assert (stats["docs_total"], stats["docs_val"], stats["docs_train"]) == (30, 5, 25)
    assert stats["files_total"] == len(list(out.glob("fineweb_*.bin")))
    assert manifest["vocab_size"] == 320 and manifest["bos_id"] == 1 and manifest["append_eos"] is False
    tok = manifest["tokenizer"]
    assert tok["path"] == "tokenizer.model" and tok["trained"] is True
    assert tok["sha256"] == file_sha256(out / "tokenizer.model")
    assert manifest["options"]["val_docs"] == 5 and manifest["options"]["shard_tokens"] == 400


def test_output_dir_holds_only_the_results(prepared):
    _, result = prepared
    names = {p.name for p in result.out_dir.iterdir()}
    assert {"manifest.json", "tokenizer.model", "tokenizer.vocab"} <= names
    assert all(n.startswith("fineweb_") or n in {"manifest.json", "tokenizer.model", "tokenizer.vocab"} for n in names)


def test_same_input_gives_identical_output(prepared, tmp_path):
    docs, result = prepared
    again = prepare(
        write_jsonl(tmp_path / "docs.jsonl", docs),
        tmp_path / "out",
        vocab_size=320,
        val_docs=5,
        shard_tokens=400,
        progress=False,
    )
    for f in result.out_dir.iterdir():
        assert (again.out_dir / f.name).read_bytes() == f.read_bytes() or f.name == "manifest.json"
    assert again.manifest["splits"] == result.manifest["splits"]


def test_tokenizer_never_sees_val_documents(tmp_path):
    val_only = "zyzzyva quixotic " * 40
    docs = [val_only] * 3 + make_docs(20)
    result = prepare(
        write_jsonl(tmp_path / "d.jsonl", docs), tmp_path / "out", vocab_size=330, val_docs=3, progress=False
    )
    sp = spm.SentencePieceProcessor(model_file=str(result.out_dir / "tokenizer.model"))
    pieces = {sp.id_to_piece(i) for i in range(sp.vocab_size())}
    assert not any("zyzz" in p or "quix" in p for p in pieces)


def test_official_tokenizer_reproduces_the_published_sample_shard(shared_data, sp1024_model, tmp_path):
    """The 200 raw sample docs, tokenized here, give the shared sample shard byte for byte."""
    docs = shared_data / "docs" / "fineweb_docs_selected_sample200.jsonl"
    reference = shared_data / "datasets" / "fineweb10B_sp1024_sample" / "fineweb_train_000000.bin"
    result = prepare(docs, tmp_path / "out", tokenizer=sp1024_model, vocab_size=1024, val_docs=0, progress=False)
    assert (result.out_dir / "fineweb_train_000000.bin").read_bytes() == reference.read_bytes()
    assert not list(result.out_dir.glob("fineweb_val_*")) and not (result.out_dir / "tokenizer.model").exists()
    tok = result.manifest["tokenizer"]
    assert tok["trained"] is False and tok["path"] == str(sp1024_model.resolve())
    assert tok["sha256"] == file_sha256(sp1024_model)


def test_rerun_removes_shards_of_the_previous_run(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", make_docs(12))
    out = tmp_path / "out"
    prepare(source, out, vocab_size=320, val_docs=2, shard_tokens=100, progress=False)
    many = len(list(out.glob("fineweb_train_*.bin")))
    prepare(source, out, vocab_size=320, val_docs=2, shard_tokens=10**6, progress=False)
    assert many > 1 and [p.name for p in out.glob("fineweb_train_*.bin")] == ["fineweb_train_000000.bin"]


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    prepare(write_jsonl(tmp_path / "d.jsonl", make_docs(8)), tmp_path / "out", vocab_size=320, val_docs=2)
    captured = capsys.readouterr()
    assert "tokenize" in captured.err and "8/8" in captured.err and captured.out == ""


# ---- reading documents --------------------------------------------------------------------


def test_txt_documents_are_blank_line_separated_blocks(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n\nfirst line\nsecond line\n\n  \n\n third\n\nlast", encoding="utf-8")
    assert list(iter_documents([path])) == ["first line\nsecond line", " third", "last"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1).filter(
                lambda s: s.strip()
            ),
            min_size=1,
            max_size=4,
        ),
        max_size=6,
    )
)
def test_txt_rule_round_trips(tmp_path_factory, blocks):
    docs = ["\n".join(lines) for lines in blocks]
    path = tmp_path_factory.mktemp("txt") / "d.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    assert list(iter_documents([path])) == docs


def test_directory_input_reads_jsonl_and_txt_in_name_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", ["from b 1", "from b 2"])
    (tmp_path / "a.txt").write_text("from a\n", encoding="utf-8")
    (tmp_path / "c.md").write_text("ignored\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "z.jsonl", ["ignored too"])
    files = document_files(tmp_path)
    assert [f.name for f in files] == ["a.txt", "b.jsonl"]
    assert list(iter_documents(files)) == ["from a", "from b 1", "from b 2"]


def test_jsonl_blank_lines_skipped_and_empty_text_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one"}\n\n   \n{"text": "", "id": 3}\n', encoding="utf-8")
    assert list(iter_documents([path])) == ["one", ""]
    assert count_documents([path]) == 2


# ---- bad inputs -------------------------------------------------------------------------------


def error_of(tmp_path, **kwargs) -> str:
    kwargs.setdefault("vocab_size", 320)
    kwargs.setdefault("val_docs", 1)
    kwargs.setdefault("progress", False)
    with pytest.raises(PgolfError) as err:
        prepare(kwargs.pop("docs"), tmp_path / "out", **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_input(tmp_path):
    assert (
        error_of(tmp_path, docs=tmp_path / "nope.jsonl")
        == f"{tmp_path / 'nope.jsonl'}: documents file or directory not found"
    )


def test_directory_without_documents(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no .jsonl or .txt files" in error_of(tmp_path, docs=tmp_path / "empty")


def test_unsupported_file_type(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n")
    assert "unsupported documents file type '.csv'" in error_of(tmp_path, docs=tmp_path / "d.csv")


def test_no_documents(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n  \n")
    assert error_of(tmp_path, docs=tmp_path / "d.jsonl") == f"{tmp_path / 'd.jsonl'}: no documents found"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"text": "ok"', "bad JSON"),
        ('["text"]', 'expected a JSON object with a "text" string'),
        ('{"text": 5}', 'expected a JSON object with a "text" string'),
        ('{"body": "x"}', '"text" string'),
    ],
)
def test_bad_jsonl_line_is_named_with_its_line_number(tmp_path, line, problem):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n\n' + line + "\n", encoding="utf-8")
    message = error_of(tmp_path, docs=path)
    assert message.startswith(f"{path}:3: ") and problem in message


def test_not_utf8(tmp_path):
    path = tmp_path / "d.txt"
    path.write_bytes(b"good\n\n\xff\xfe bad\n")
    assert "not UTF-8 text" in error_of(tmp_path, docs=path)


@pytest.mark.parametrize("val_docs", [3, 4])
def test_val_docs_must_leave_train_docs(tmp_path, val_docs):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(3))
    message = error_of(tmp_path, docs=path, val_docs=val_docs)
    assert message.startswith(f"{path}: 3 documents, but {val_docs} are asked for val")


def test_given_tokenizer_with_other_vocab_size(tmp_path, sp1024_model):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(3))
    message = error_of(tmp_path, docs=path, tokenizer=sp1024_model, vocab_size=512)
    assert message == f"{sp1024_model}: tokenizer vocab size 1024 does not match VOCAB_SIZE=512"
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(3))
    assert (
        error_of(tmp_path, docs=path, tokenizer=tmp_path / "t.model")
        == f"{tmp_path / 't.model'}: tokenizer file not found"
    )


def test_unloadable_tokenizer(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(3))
    (tmp_path / "t.model").write_bytes(b"not a model")
    assert "not a loadable SentencePiece model" in error_of(tmp_path, docs=path, tokenizer=tmp_path / "t.model")


def test_needs_tokenizer_or_vocab_size(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(3))
    assert "give a tokenizer or a vocab size" in error_of(tmp_path, docs=path, vocab_size=None)


@pytest.mark.parametrize(("kwargs", "problem"), [({"val_docs": -1}, "val docs"), ({"shard_tokens": 0}, "shard tokens")])
def test_bad_counts(tmp_path, kwargs, problem):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(3))
    assert problem in error_of(tmp_path, docs=path, **kwargs)


def test_corpus_too_small_for_the_vocab_size(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(4))
    message = error_of(tmp_path, docs=path, vocab_size=2000)
    assert message.startswith(f"{path}: the train documents only yield a ") and "not 2000" in message
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_failed_training_leaves_nothing_behind(tmp_path):
    cjk = ["".join(chr(0x4E00 + i * 50 + j) for j in range(50)) for i in range(12)]
    path = write_jsonl(tmp_path / "d.jsonl", cjk * 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "Vocabulary size is smaller than required_chars" in error_of(tmp_path, docs=path, vocab_size=300)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ---- CLI --------------------------------------------------------------------------------------


def test_cli_prepare(tmp_path, run_pgolf):
    path = write_jsonl(tmp_path / "d.jsonl", make_docs(6))
    out = tmp_path / "out"
    argv = [
        "data",
        "prepare",
        "--docs",
        str(path),
        "--out",
        str(out),
        "--vocab-size",
        "320",
        "--val-docs",
        "2",
        "--quiet",
    ]
    code, stdout, _ = run_pgolf(argv)
    assert code == 0 and "2 val docs" in stdout and "4 train docs" in stdout
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("docs", "extra", "problem"),
    [
        ("bad.jsonl", ["--vocab-size", "320"], "bad.jsonl:1: bad JSON"),
        ("none.jsonl", ["--vocab-size", "320"], "none.jsonl: documents file or directory not found"),
        ("ok.jsonl", ["--vocab-size", "320", "--val-docs", "3"], "3 documents, but 3 are asked for val"),
        ("ok.jsonl", ["--tokenizer", "SP1024", "--vocab-size", "4096"], "does not match VOCAB_SIZE=4096"),
        ("ok.jsonl", ["--tokenizer", "none.model"], "none.model: tokenizer file not found"),
        ("ok.jsonl", [], "give a tokenizer or a vocab size"),
    ],
)
def test_cli_prepare_bad_inputs_exit_2_with_one_line(tmp_path, run_pgolf, sp1024_model, docs, extra, problem):
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    write_jsonl(tmp_path / "ok.jsonl", make_docs(3))
    extra = [str(sp1024_model) if a == "SP1024" else str(tmp_path / a) if a.endswith(".model") else a for a in extra]
    argv = ["data", "prepare", "--docs", str(tmp_path / docs), "--out", str(tmp_path / "o"), "--quiet", *extra]
    code, _, err = run_pgolf(argv)
    assert code == 2 and err.count("\n") == 1 and problem in err


def test_prepared_output_passes_verify_and_the_byte_audit(prepared):
    """End to end: a trained tokenizer's own val split satisfies the val_bpb byte rule."""
    from pgolf.data.audit import audit
    from pgolf.data.verify import verify

    _, result = prepared
    tokenizer = result.out_dir / "tokenizer.model"
    report = verify([result.out_dir], tokenizer=tokenizer, vocab_size=320, out=io.StringIO())
    assert report.docs == 30 and report.tokens == result.manifest["stats"]["tokens_total"]
    assert audit(tokenizer, result.out_dir).ok
