"""LQER: the low-rank correction lowers reconstruction error, packs as the records do, survives the
artifact round trip bit for bit, is counted by `quant inspect`, and damaged records are refused."""

from __future__ import annotations

import json
import os
import struct
from functools import lru_cache

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.errors import PgolfError
from pgolf.export.container import decode_artifact, encode_artifact, encode_payload, pack_container, write_artifact
from pgolf.export.inspect import attribute_bytes
from pgolf.quant.int8 import KIND_INTN, dequantize, payload_bytes
from pgolf.quant.lqer import MODE_ASYM, MODE_SYM, add_lqer, lowrank_dequantize, pack_asym, pack_sym
from pgolf.quant.policy import quantize_state_dict_policy

NAMES = ("blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight", "blocks.1.mlp.proj.weight")


def _error(w: torch.Tensor, q) -> float:
    return float((w - dequantize(q)[NAMES[0]]).norm())


@pytest.mark.parametrize("asym", [True, False])
@pytest.mark.parametrize("policy", ["int4,small=0", "int3g32:mse,small=0"])
def test_lqer_lowers_the_reconstruction_error(trained_tiny, asym, policy):
    model, _ = trained_tiny
    w = model.state_dict()[NAMES[0]]
    sd = {NAMES[0]: w}
    plain = quantize_state_dict_policy(sd, policy)
    corrected = add_lqer(plain, sd, rank=4, top_k=1, factor_bits=4, asym=asym, group_size=64)
    entry = corrected.entry(NAMES[0])
    assert entry.lqer.mode == (MODE_ASYM if asym else MODE_SYM) and entry.lqer.a_codes.shape[1] == 4
    assert torch.equal(entry.values, plain.entry(NAMES[0]).values)  # the codes are untouched
    assert _error(w, corrected) < _error(w, plain)
    # With int4 factors the squared error drops by at least half of what the exact rank-4 SVD of
    # the error removes (its top 4 squared singular values); asym's int2 A with a single scale
    # (the records' packing) keeps less of it.
    exact_gain = float(torch.linalg.svdvals(w - dequantize(plain)[NAMES[0]])[:4].square().sum())
    share = (_error(w, plain) ** 2 - _error(w, corrected) ** 2) / exact_gain
    assert share > (0.1 if asym else 0.5)


def test_lqer_corrects_the_top_k_tensors_by_error(trained_tiny):
    model, _ = trained_tiny
    sd = {n: model.state_dict()[n] for n in NAMES}
    q = quantize_state_dict_policy(sd, "int3,small=0")
    errors = {n: float((sd[n] - dequantize(q)[n]).norm()) for n in NAMES}
    corrected = add_lqer(q, sd, rank=2, top_k=2)
    assert {e.name for e in corrected if e.lqer is not None} == set(sorted(errors, key=errors.get)[1:])


def test_asym_packing_follows_the_records():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 2, generator=g), torch.randn(2, 64, generator=g)
    lr = pack_asym(a, b, 32)
    sa = (a.abs().max() / 1.5).half()
    assert torch.equal(lr.a_scale, sa.reshape(1))
    assert torch.equal(lr.a_codes, torch.clamp(torch.round(a / sa.float()), -2, 1).to(torch.int8))
    sb = (b.reshape(-1, 32).abs().amax(dim=1) / 7.5).half()
    assert torch.equal(lr.b_scale, sb)
    assert torch.equal(lr.b_codes, torch.clamp(torch.round(b.reshape(-1, 32) / sb.float()[:, None]), -8, 7).to(torch.int8).reshape(2, 64))
    assert int(lr.a_codes.min()) >= -2 and int(lr.a_codes.max()) <= 1
    expected = (lr.a_codes.float() * sa.float()) @ (lr.b_codes.float().reshape(-1, 32) * sb.float()[:, None]).reshape(2, 64)
    assert torch.equal(lowrank_dequantize(lr), expected)
    sym = pack_sym(a, b, 4)
    assert sym.a_scale.shape == (8,) and sym.b_scale.shape == (2,) and int(sym.a_codes.abs().max()) <= 7


def test_zero_error_gives_valid_scales():
    sd = {NAMES[0]: torch.zeros(16, 64)}
    q = add_lqer(quantize_state_dict_policy(sd, "int4,small=0"), sd, rank=4, top_k=1)
    assert torch.equal(dequantize(q)[NAMES[0]], sd[NAMES[0]])


@lru_cache(maxsize=None)
def lqer_state():
    g = torch.Generator().manual_seed(0)
    sd = {NAMES[0]: torch.randn(32, 64, generator=g), NAMES[1]: torch.randn(16, 48, generator=g), "s": torch.ones(4)}
    q = quantize_state_dict_policy(sd, "int4g16,small=0")
    # The larger error first: asym (B = 4 x 64, groups of 64); then the other one, whose B (3 x 48)
    # has no whole groups of 100, so it falls back to sym.
    q = add_lqer(q, sd, rank=4, top_k=1, asym=True, group_size=64)
    return add_lqer(q, sd, rank=3, top_k=1, asym=True, group_size=100)


@pytest.mark.parametrize("codec, shuffle, pack", [("zlib", False, False), ("zstd", True, True), ("brotli", False, True)])
def test_lqer_artifacts_round_trip_bit_for_bit(codec, shuffle, pack):
    q = lqer_state()
    modes = {e.name: e.lqer.mode for e in q if e.lqer is not None}
    assert modes == {NAMES[0]: MODE_ASYM, NAMES[1]: MODE_SYM}
    loaded, _ = decode_artifact(encode_artifact(q, {}, codec, shuffle=shuffle, pack=pack), "t")
    for e in q:
        f = loaded.entry(e.name)
        if e.lqer is not None:
            for part in ("a_codes", "a_scale", "b_codes", "b_scale"):
                assert torch.equal(getattr(e.lqer, part), getattr(f.lqer, part)), part
            assert (e.lqer.mode, e.lqer.bits, e.lqer.group_size) == (f.lqer.mode, f.lqer.bits, f.lqer.group_size)
    want, got = dequantize(q), dequantize(loaded)
    assert all(torch.equal(want[k], got[k]) for k in want)
    lqer_bytes = sum(getattr(e.lqer, p).numel() * getattr(e.lqer, p).element_size()
                     for e in q if e.lqer is not None for p in ("a_codes", "a_scale", "b_codes", "b_scale"))
    plain = quantize_state_dict_policy({e.name: dequantize(q)[e.name] for e in q}, "int4g16,small=0")
    assert payload_bytes(q) == payload_bytes(plain) + lqer_bytes


def test_inspect_counts_lqer_bytes_to_the_file_size(tmp_path):
    path = tmp_path / "a.pgolf"
    write_artifact(path, lqer_state(), {}, "zlib")
    rows = attribute_bytes(path)
    assert sum(r.file_bytes for r in rows) == os.path.getsize(path)
    assert {r.group for r in rows if ".lqer." in r.group} == {
        "mlp.lqer.a_codes.int8", "mlp.lqer.a_scale.float16", "mlp.lqer.b_codes.int8", "mlp.lqer.b_scale.float16",
        "attn.lqer.a_codes.int8", "attn.lqer.a_scale.float16", "attn.lqer.b_codes.int8", "attn.lqer.b_scale.float16"}


def _forge(payload: bytes, edit_doc=None, edit_tensors=None) -> bytes:
    """Re-save ``payload`` with its pgolf metadata and/or tensors edited (valid safetensors + CRC)."""
    (n,) = struct.unpack_from("<Q", payload)
    doc = json.loads(json.loads(payload[8 : 8 + n])["__metadata__"]["pgolf"])
    tensors = safetensors.torch.load(payload)
    if edit_doc:
        edit_doc(doc)
    if edit_tensors:
        edit_tensors(tensors)
    return pack_container(safetensors.torch.save(tensors, metadata={"pgolf": json.dumps(doc)}), "zlib")


def _lqer_record(doc):
    return next(e["lqer"] for e in doc["entries"] if "lqer" in e)


def _tensor_key(part):
    return next(k for k in safetensors.torch.load(encode_payload(lqer_state(), {})) if f".lqer.{part}." in k)


FORGERIES = {
    "mode": lambda d: _lqer_record(d).update(mode="zzz"),
    "bits": lambda d: _lqer_record(d).update(bits=99),
    "bits-type": lambda d: _lqer_record(d).update(bits="4"),
    "group": lambda d: _lqer_record(d).update(group_size=7),
    "group-zero": lambda d: _lqer_record(d).update(group_size=0),
    "missing-key": lambda d: _lqer_record(d)["tensors"].update(a_codes="nope"),
    "reused-key": lambda d: _lqer_record(d)["tensors"].update(a_scale=_lqer_record(d)["tensors"]["b_scale"]),
    "values-key": lambda d: _lqer_record(d)["tensors"].update(a_codes=d["entries"][0]["tensors"]["values"]["key"]),
    "not-a-dict": lambda d: next(e for e in d["entries"] if "lqer" in e).update(lqer=[1, 2]),
    "on-passthrough": lambda d: next(e for e in d["entries"] if e["kind"] == "passthrough").update(
        lqer=_lqer_record(d)),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_lying_lqer_records_are_refused(forgery):
    blob = _forge(encode_payload(lqer_state(), {}), edit_doc=FORGERIES[forgery])
    with pytest.raises(PgolfError) as info:
        decode_artifact(blob, "f")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("part, bad", [
    ("a_codes", lambda t: t.fill_(9)), ("b_codes", lambda t: t.fill_(-9)), ("a_scale", lambda t: t.float()),
    ("b_scale", lambda t: t[:-1].clone()), ("b_codes", lambda t: t[:, :-1].contiguous()), ("a_codes", lambda t: t.short()),
])
def test_bad_lqer_tensors_are_refused(part, bad):
    key = _tensor_key(part)

    def edit(tensors):
        tensors[key] = bad(tensors[key].clone())

    with pytest.raises(PgolfError):
        decode_artifact(_forge(encode_payload(lqer_state(), {}), edit_tensors=edit), "f")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_damage_to_an_lqer_artifact_is_a_clean_error(data):
    b = bytearray(encode_artifact(lqer_state(), {}, "zlib"))
    if data.draw(st.booleans()):
        b = b[: data.draw(st.integers(0, len(b) - 1))]
    else:
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(PgolfError):
        decode_artifact(bytes(b), "f")


def test_only_intn_entries_get_corrections():
    sd = {NAMES[0]: torch.randn(32, 64), "s": torch.ones(4)}
    q = add_lqer(quantize_state_dict_policy(sd, "int8"), sd, rank=4, top_k=3)
    assert all(e.lqer is None for e in q) and not any(e.kind == KIND_INTN for e in q)
