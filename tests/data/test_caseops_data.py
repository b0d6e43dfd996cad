"""``pgolf data prepare`` on a CaseOps tokenizer writes what R44's own prepare_caseops_data.py writes:
the same transformed token shards and the same per-token byte sidecar, and a manifest that says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pgolf.data.prepare import prepare
from pgolf.data.shards import read_shard, resolve_shards
from pgolf.errors import PgolfError
from tests.conftest import CASEOPS_RAW_VAL_DOCS, CASEOPS_VAL_PREFIX_DOCS


def shard_names(folder):
    return sorted(p.name for p in folder.glob("fineweb_*.bin"))


def test_prepare_writes_the_records_shards_and_byte_sidecar(record_caseops_data, pgolf_caseops_data):
    record, _ = record_caseops_data
    ours = pgolf_caseops_data
    assert shard_names(ours) == shard_names(record) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"]
    for name in shard_names(record):
        assert np.array_equal(read_shard(ours / name), read_shard(record / name)), name
    val = np.asarray(read_shard(ours / "fineweb_val_000000.bin"))
    assert int((val == 1).sum()) == CASEOPS_VAL_PREFIX_DOCS + CASEOPS_RAW_VAL_DOCS


def test_manifest_records_the_transform_and_the_sidecar(pgolf_caseops_data):
    manifest = json.loads((pgolf_caseops_data / "manifest.json").read_text())
    assert manifest["text_transform"] == "caseops_v1"
    (val_shard,) = manifest["splits"]["val"]["shards"]
    assert val_shard["sidecar"]["file"] == "fineweb_val_bytes_000000.bin"
    assert "sidecar" not in manifest["splits"]["train"]["shards"][0]


def test_the_sidecar_is_never_read_as_a_token_shard(pgolf_caseops_data):
    assert [p.name for p in resolve_shards(pgolf_caseops_data, "val")] == ["fineweb_val_000000.bin"]
    assert [p.name for p in resolve_shards(f"{pgolf_caseops_data}/fineweb_val_*.bin")] == ["fineweb_val_000000.bin"]


def test_a_sidecar_cut_with_its_shard(record_caseops_data, r44_tokenizer, tmp_path):
    """Several val shards: each gets its own sidecar, cut where its shard is; together the record's."""
    record, docs = record_caseops_data
    out = tmp_path / "out"
    prepare(docs, out, tokenizer=r44_tokenizer, val_docs=CASEOPS_VAL_PREFIX_DOCS + CASEOPS_RAW_VAL_DOCS,
            shard_tokens=100_000, progress=False)
    sidecars = sorted(out.glob("fineweb_val_bytes_*.bin"))
    assert len(sidecars) == len(resolve_shards(out, "val")) > 2
    for sidecar, shard in zip(sidecars, resolve_shards(out, "val")):
        assert read_shard(sidecar).size == read_shard(shard).size
    joined = np.concatenate([np.asarray(read_shard(p)) for p in sidecars])
    assert np.array_equal(joined, read_shard(record / "fineweb_val_bytes_000000.bin"))


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"transform": "none"}, "has the CaseOps operator pieces"),
    ({"transform": "upper"}, "unknown text transform"),
])
def test_contradicting_transforms_are_refused(record_caseops_data, r44_tokenizer, tmp_path, kwargs, problem):
    _, docs = record_caseops_data
    with pytest.raises(PgolfError, match=problem):
        prepare(docs, tmp_path / "out", tokenizer=r44_tokenizer, val_docs=5, progress=False, **kwargs)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_caseops_with_a_plain_tokenizer_or_none_is_refused(record_caseops_data, sp1024_model, tmp_path):
    _, docs = record_caseops_data
    with pytest.raises(PgolfError, match="lacks the CaseOps operator pieces"):
        prepare(docs, tmp_path / "a", tokenizer=sp1024_model, val_docs=5, transform="caseops", progress=False)
    with pytest.raises(PgolfError, match="needs --tokenizer"):
        prepare(docs, tmp_path / "b", vocab_size=320, val_docs=5, transform="caseops", progress=False)


def test_cli_prepare_transform(record_caseops_data, r44_tokenizer, tmp_path, run_pgolf):
    _, docs = record_caseops_data
    code, _, _ = run_pgolf(["data", "prepare", "--docs", str(docs), "--out", str(tmp_path / "o"), "--tokenizer",
                            str(r44_tokenizer), "--val-docs", "3", "--transform", "caseops", "--quiet"])
    assert code == 0 and (tmp_path / "o" / "fineweb_val_bytes_000000.bin").is_file()
