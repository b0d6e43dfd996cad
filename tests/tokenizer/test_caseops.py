"""pgolf's CaseOps transform against R44's own lossless_caps.py, on real documents (val prefix, raw FineWeb)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm

from pgolf.errors import PgolfError
from pgolf.tokenizer.caseops import (ALLCAPS, CAPNEXT, ESC, TITLE, decode_caseops, encode_caseops, is_caseops_tokenizer,
                                     original_token_bytes)

DOC_FILES = ("fineweb_val_prefix_docs.jsonl", "fineweb_docs_selected_sample200.jsonl")
# literal operators (escaped), every word shape, operators at the edges
EDGE_CASES = [
    "", "A", "a", "AB", "Ab", "aB", "ABc", "McDonald iPhone NASA A-B", "x\ue001y \ue004\ue004 \ue002", "end\ue003",
    "\ue004", "\ue001Title", "ABC1def GHI\ue004jkl", "Ünïcode ÀB Straße ﬁ ＡＢ \U0001f600 Cat",
]


@pytest.fixture(scope="module")
def real_docs(shared_data) -> list[str]:
    docs = []
    for name in DOC_FILES:
        with (shared_data / "docs" / name).open(encoding="utf-8") as f:
            docs += [json.loads(line)["text"] for line in f]
    return docs


@pytest.fixture(scope="module")
def caseops_sp(r44_tokenizer):
    return spm.SentencePieceProcessor(model_file=str(r44_tokenizer))


def test_transform_and_its_inverse_are_the_records(real_docs, lossless_caps):
    docs = real_docs + EDGE_CASES
    assert len(real_docs) == 902 + 200
    for doc in docs:
        transformed = encode_caseops(doc)
        assert transformed == lossless_caps.encode_lossless_caps_v2(doc), doc[:60]
        assert decode_caseops(transformed) == doc == lossless_caps.decode_lossless_caps_v2(transformed)


def test_hand_examples():
    assert encode_caseops("The NASA Launch") == f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"
    assert encode_caseops("McDonald iPhone") == f"{TITLE}mc{CAPNEXT}donald i{CAPNEXT}phone"
    assert encode_caseops(f"a{TITLE}b") == f"a{ESC}{TITLE}b"


@pytest.mark.parametrize("bad", [TITLE, f"{ALLCAPS} x", f"{CAPNEXT}1", ESC])
def test_malformed_caseops_text_is_refused(bad):
    with pytest.raises(PgolfError, match="CaseOps"):
        decode_caseops(bad)


def test_token_bytes_are_the_records_sidecar_values(real_docs, caseops_sp, r44_prepare, r44_tokenizer):
    """Per token, pgolf's original bytes equal the record's _token_original_byte_counts (surfaces from
    SentencePiece's own proto), on val-prefix docs, raw docs and the edge cases."""
    oracle_sp = r44_prepare.spm.SentencePieceProcessor(model_file=str(r44_tokenizer))
    for doc in real_docs[:120] + real_docs[902:942] + EDGE_CASES:
        transformed = encode_caseops(doc)
        encoded = caseops_sp.encode(transformed, out_type="offset_mapping")
        mine = original_token_bytes(transformed, encoded["offsets"])
        theirs = r44_prepare._token_original_byte_counts(oracle_sp, doc, transformed)
        assert np.array_equal(mine, theirs), doc[:60]


def test_operators_cost_nothing_and_the_rest_their_utf8_bytes():
    doc = "The NASA x\ue001"  # a literal operator keeps its 3 bytes
    transformed = encode_caseops(doc)
    whole = [(0, len(transformed))]
    assert original_token_bytes(transformed, whole).tolist() == [len(doc.encode("utf-8"))]


def test_only_the_caseops_tokenizer_is_one(caseops_sp, sp1024_model):
    assert is_caseops_tokenizer(caseops_sp)
    assert not is_caseops_tokenizer(spm.SentencePieceProcessor(model_file=str(sp1024_model)))
