"""The byte audit: the val_bpb byte rule equals decoded UTF-8 length on the real val prefix, a CaseOps
val set's charged bytes equal its original text's (R44's own data), and deliberately wrong rules are caught."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import sentencepiece as spm

from pgolf.data.audit import audit
from pgolf.data.shards import read_shard, write_shard
from pgolf.errors import PgolfError
from pgolf.tokenizer.luts import build_byte_table
from tests.conftest import CASEOPS_RAW_VAL_DOCS, CASEOPS_VAL_PREFIX_DOCS

VAL_PREFIX_TOKENS = 1_040_298
VAL_PREFIX_DOCS = 902


@pytest.fixture(scope="module")
def sp(sp1024_model):
    return spm.SentencePieceProcessor(model_file=str(sp1024_model))


@pytest.fixture(scope="module")
def real_report(sp1024_model, val_prefix_shard):
    return audit(sp1024_model, val_prefix_shard)


def test_real_val_prefix_passes(real_report):
    r = real_report
    assert r.ok, "\n".join(r.lines())
    assert (r.docs, r.tokens, r.targets) == (VAL_PREFIX_DOCS, VAL_PREFIX_TOKENS, VAL_PREFIX_TOKENS - 1)
    assert r.rule_bytes == r.text_bytes and r.boundary_bytes == 0 and r.mismatched_docs == 0
    assert r.text_source == "decoded text"
    assert r.truncated_tail_bytes == 0  # the prefix is cut inside ASCII text
    assert r.tokens_per_byte == pytest.approx(0.41531, abs=5e-6)  # the figure in shared/data/README.md


def test_real_val_prefix_split_across_two_shards_gives_the_same_totals(
    real_report, val_prefix_shard, sp1024_model, tmp_path
):
    tokens = np.asarray(read_shard(val_prefix_shard))
    write_shard(tmp_path / "fineweb_val_000000.bin", tokens[:500_001])  # the cut falls inside a document
    write_shard(tmp_path / "fineweb_val_000001.bin", tokens[500_001:])
    r = audit(sp1024_model, tmp_path)
    assert r.ok and len(r.files) == 2
    assert (r.docs, r.rule_bytes) == (real_report.docs, real_report.rule_bytes)


def wrong_table(sp, **changes):
    table = build_byte_table(sp)
    fields = {f.name: getattr(table, f.name).copy() for f in dataclasses.fields(table)}
    for name, edit in changes.items():
        edit(fields[name])
    return type(table)(**fields)


def byte_ids(sp):
    return np.array([i for i in range(sp.vocab_size()) if sp.is_byte(i)])


def space_ids(sp):
    return np.array([i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith("\u2581")])


def test_byte_fallback_counted_as_three_bytes_is_caught(sp, sp1024_model, val_prefix_shard):
    def three(base):
        base[byte_ids(sp)] = 3  # as if <0xNN> were U+FFFD

    r = audit(sp1024_model, val_prefix_shard, table=wrong_table(sp, base_bytes=three))
    assert not r.ok and r.mismatched_docs > 0
    assert all(m.rule_bytes > m.text_bytes for m in r.mismatches)
    assert len(r.mismatches) <= 10 and any(line.startswith("FAIL") for line in r.lines())


def test_space_mark_counted_as_its_utf8_bytes_is_caught(sp, sp1024_model, val_prefix_shard):
    def utf8_mark(base):
        base[space_ids(sp)] += 2  # "▁" is 3 bytes in UTF-8 but stands for one space

    r = audit(sp1024_model, val_prefix_shard, table=wrong_table(sp, base_bytes=utf8_mark))
    assert not r.ok and r.mismatched_docs >= VAL_PREFIX_DOCS - 5


def test_leading_space_never_counted_is_caught(sp, sp1024_model, val_prefix_shard):
    def drop(lead):
        lead[:] = False

    r = audit(sp1024_model, val_prefix_shard, table=wrong_table(sp, has_leading_space=drop))
    assert not r.ok and all(m.rule_bytes < m.text_bytes for m in r.mismatches)


def test_bytes_charged_to_bos_targets_are_caught(sp, sp1024_model, val_prefix_shard):
    def charge_bos(base):
        base[1] = 1

    r = audit(sp1024_model, val_prefix_shard, table=wrong_table(sp, base_bytes=charge_bos))
    # Each document alone still adds up; only the stream total exposes the 901 charged BOS targets.
    assert r.mismatched_docs == 0 and r.boundary_bytes == VAL_PREFIX_DOCS - 1
    assert r.rule_bytes == r.text_bytes + VAL_PREFIX_DOCS - 1 and not r.ok


def test_leading_space_always_counted_is_caught_where_a_doc_starts_with_one(sp, sp1024_model, tmp_path):
    """Real docs never start with a "▁" piece (normalization strips leading spaces), so this rule can only
    be told apart on a stream where one does; SentencePiece drops that space when decoding."""
    the = sp.piece_to_id("\u2581the")
    tokens = [1, the] + sp.encode("the cat sat") + [1] + sp.encode("on the mat")
    write_shard(tmp_path / "fineweb_val_000000.bin", np.array(tokens, dtype=np.uint16))
    assert audit(sp1024_model, tmp_path).ok

    def never_boundary(boundary):
        boundary[:] = False

    r = audit(sp1024_model, tmp_path, table=wrong_table(sp, is_boundary=never_boundary))
    assert not r.ok and [(m.doc, m.rule_bytes, m.text_bytes) for m in r.mismatches] == [(0, 15, 14)]


def test_stream_cut_inside_a_byte_fallback_character(sp, sp1024_model, tmp_path):
    tokens = [1] + sp.encode("a \u4f60\u597d")  # two CJK chars, three byte tokens each
    write_shard(tmp_path / "fineweb_val_000000.bin", np.array(tokens[:-1], dtype=np.uint16))
    r = audit(sp1024_model, tmp_path)
    assert r.ok and r.truncated_tail_bytes == 2 and r.rule_bytes == len("a \u4f60".encode()) + 2


def test_unknown_token_is_a_mismatch(sp, sp1024_model, tmp_path):
    tokens = [1] + sp.encode("fine text") + [1] + sp.encode("bad") + [3] + [1] + sp.encode("more")
    write_shard(tmp_path / "fineweb_val_000000.bin", np.array(tokens, dtype=np.uint16))
    r = audit(sp1024_model, tmp_path)
    assert not r.ok and [m.doc for m in r.mismatches] == [1]


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        ([5, 1, 6], "starts with token 5, not BOS=1"),
        ([1], r"1 token\(s\), nothing to score"),
        ([1, 7, 1024], "token id 1024 >= vocab size 1024"),
    ],
)
def test_bad_val_streams(sp1024_model, tmp_path, tokens, problem):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, np.array(tokens, dtype=np.uint16))
    with pytest.raises(PgolfError, match=problem) as err:
        audit(sp1024_model, path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_inputs(sp1024_model, val_prefix_shard, tmp_path):
    with pytest.raises(PgolfError, match="tokenizer file not found"):
        audit(tmp_path / "none.model", val_prefix_shard)
    with pytest.raises(PgolfError, match="no such file or directory"):
        audit(sp1024_model, tmp_path / "none.bin")


def test_table_smaller_than_vocab_is_refused(sp, sp1024_model, val_prefix_shard):
    table = build_byte_table(sp)
    small = type(table)(table.base_bytes[:100], table.has_leading_space[:100], table.is_boundary[:100])
    with pytest.raises(PgolfError, match="byte table has 100 entries"):
        audit(sp1024_model, val_prefix_shard, table=small)


def test_cli_audit_json(sp1024_model, val_prefix_shard, run_pgolf):
    code, out, _ = run_pgolf(
        ["data", "audit", "--tokenizer", str(sp1024_model), "--val", str(val_prefix_shard), "--json"]
    )
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["docs"] == VAL_PREFIX_DOCS
    assert report["rule_bytes"] == report["text_bytes"]


def test_cli_audit_mismatch_exits_1(sp, sp1024_model, tmp_path, run_pgolf):
    tokens = [1] + sp.encode("bad") + [3]
    write_shard(tmp_path / "fineweb_val_000000.bin", np.array(tokens, dtype=np.uint16))
    code, out, _ = run_pgolf(["data", "audit", "--tokenizer", str(sp1024_model), "--val", str(tmp_path)])
    assert code == 1 and "doc 0 (4 tokens): charged 3 bytes, text 8 bytes" in out and "FAIL" in out


def test_cli_audit_bad_stream_exits_2_with_one_line(sp1024_model, tmp_path, run_pgolf):
    write_shard(tmp_path / "fineweb_val_000000.bin", np.array([9, 1, 2], dtype=np.uint16))
    code, _, err = run_pgolf(["data", "audit", "--tokenizer", str(sp1024_model), "--val", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and "not BOS=1" in err


# -- CaseOps: a transformed-text tokenizer; the reference is the original text ------------------------


@pytest.fixture(scope="module")
def caseops_sp(r44_tokenizer):
    return spm.SentencePieceProcessor(model_file=str(r44_tokenizer))


def doc_bytes(docs_file) -> int:
    return sum(len(json.loads(line)["text"].encode("utf-8")) for line in docs_file.read_text().splitlines())


def test_caseops_set_from_prepare_matches_its_source_documents(pgolf_caseops_data, r44_tokenizer, record_caseops_data):
    _, docs = record_caseops_data
    r = audit(r44_tokenizer, pgolf_caseops_data)  # the manifest names the documents
    assert r.ok, "\n".join(r.lines())
    assert r.text_source == "source documents" and r.docs == CASEOPS_VAL_PREFIX_DOCS + CASEOPS_RAW_VAL_DOCS
    val_docs = "\n".join(docs.read_text().splitlines()[: r.docs])
    assert r.rule_bytes == r.text_bytes == sum(len(json.loads(x)["text"].encode()) for x in val_docs.splitlines())


def test_records_caseops_set_is_checked_against_its_sidecar_or_given_documents(record_caseops_data, r44_tokenizer):
    folder, docs = record_caseops_data
    bare = audit(r44_tokenizer, folder)  # no manifest: the sidecar is the reference
    assert bare.ok and bare.text_source == "byte sidecar"
    with_docs = audit(r44_tokenizer, folder, docs=docs)
    assert with_docs.ok and with_docs.text_source == "source documents" and with_docs.text_bytes == bare.text_bytes


def test_case_operators_charged_as_text_fail(record_caseops_data, r44_tokenizer, caseops_sp):
    """The old behaviour (the tokenizer's byte rule on CaseOps text) against the original text: every
    document with a capital is over-charged, by 3 bytes per operator."""
    folder, docs = record_caseops_data
    for reference in (None, docs):  # against the sidecar, and against the documents
        r = audit(r44_tokenizer, folder, table=build_byte_table(caseops_sp), docs=reference)
        assert not r.ok and r.mismatched_docs > 0.95 * r.docs
        assert all(m.rule_bytes > m.text_bytes and (m.rule_bytes - m.text_bytes) % 3 == 0 for m in r.mismatches)
        assert r.rule_bytes / r.text_bytes == pytest.approx(1.09, abs=0.01)


def test_wrong_source_documents_fail(record_caseops_data, r44_tokenizer, tmp_path):
    folder, docs = record_caseops_data
    lines = docs.read_text().splitlines()
    (tmp_path / "shifted.jsonl").write_text("\n".join(lines[1:]) + "\n")
    r = audit(r44_tokenizer, folder, docs=tmp_path / "shifted.jsonl")
    assert not r.ok and r.text_source == "source documents"


def test_caseops_stream_cut_inside_a_document(record_caseops_data, r44_tokenizer, tmp_path):
    folder, docs = record_caseops_data
    tokens = np.asarray(read_shard(folder / "fineweb_val_000000.bin"))
    counts = np.asarray(read_shard(folder / "fineweb_val_bytes_000000.bin"))
    cut = int(np.flatnonzero(tokens == 1)[5]) + 40  # 40 tokens into the sixth document
    write_shard(tmp_path / "fineweb_val_000000.bin", tokens[:cut])
    write_shard(tmp_path / "fineweb_val_bytes_000000.bin", counts[:cut])
    r = audit(r44_tokenizer, tmp_path, docs=docs)
    assert r.ok and r.docs == 6 and r.rule_bytes == int(counts[:cut].sum())


def test_caseops_set_without_its_sidecar_is_refused(record_caseops_data, r44_tokenizer, tmp_path, run_pgolf):
    folder, docs = record_caseops_data
    write_shard(tmp_path / "fineweb_val_000000.bin", np.asarray(read_shard(folder / "fineweb_val_000000.bin")))
    with pytest.raises(PgolfError, match="needs its byte sidecar"):
        audit(r44_tokenizer, tmp_path, docs=docs)
    code, _, err = run_pgolf(["data", "audit", "--tokenizer", str(r44_tokenizer), "--val", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and "needs its byte sidecar" in err


def test_documents_are_only_for_caseops_sets(sp1024_model, val_prefix_shard, record_caseops_data):
    _, docs = record_caseops_data
    with pytest.raises(PgolfError, match="source documents are for CaseOps val sets"):
        audit(sp1024_model, val_prefix_shard, docs=docs)


def test_cli_audit_caseops_json(record_caseops_data, r44_tokenizer, run_pgolf):
    folder, docs = record_caseops_data
    code, out, _ = run_pgolf(["data", "audit", "--tokenizer", str(r44_tokenizer), "--val", str(folder), "--docs", str(docs),
                              "--json"])
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["text_source"] == "source documents"
