"""The artifact container: exact round trips, and a one-line PgolfError for every defect."""

from __future__ import annotations

import json
import struct
import zlib
from functools import lru_cache

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.errors import PgolfError
from pgolf.export import container
from pgolf.export.container import (
    HEADER_BYTES,
    MAGIC,
    decode_artifact,
    encode_artifact,
    pack_container,
    read_artifact,
    unpack_container,
    write_artifact,
)
from pgolf.quant.int8 import KIND_PER_ROW, dequantize, quantize_state_dict


def gpt_like_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"tok_emb.weight": torch.randn(1024, 96, generator=g).bfloat16()}
    for i in range(2):
        p = f"blocks.{i}."
        sd[p + "attn.c_qkv.weight"] = torch.randn(288, 256, generator=g)
        sd[p + "attn.q_gain"] = torch.randn(4, generator=g)
        sd[p + "attn_scale"] = torch.ones(96)
        sd[p + "mlp.fc.weight"] = torch.randn(96, 96, generator=g)
        sd[p + "resid_mix"] = torch.randn(2, 96, generator=g)
    sd["skip_weights"] = torch.randn(1, 96, generator=g)
    sd["vec"] = torch.randn(70_000, generator=g).half()
    sd["steps"] = torch.tensor(7)
    sd["mask"] = torch.ones(5, dtype=torch.bool)
    return sd


@lru_cache(maxsize=1)
def small_blob() -> bytes:
    g = torch.Generator().manual_seed(1)
    sd = {"w": torch.randn(70, 1000, generator=g), "k": torch.randn(6, generator=g), "i": torch.arange(4)}
    return encode_artifact(quantize_state_dict(sd), {"run": "tiny"})


def assert_one_line(exc: PgolfError, source: str) -> None:
    text = str(exc)
    assert "\n" not in text and text.startswith(f"{source}: "), text


# --- round trips ---------------------------------------------------------------------------------


def test_round_trip_is_bit_identical(tmp_path):
    sd = gpt_like_state_dict()
    q = quantize_state_dict(sd)
    meta = {"val_bpb": 1.2243657, "seed": 1337, "notes": ["ü", None]}
    size = write_artifact(tmp_path / "m.pgolf", q, meta)
    assert size == (tmp_path / "m.pgolf").stat().st_size
    q2, meta2 = read_artifact(tmp_path / "m.pgolf")
    assert meta2 == meta
    assert q2.names() == q.names() == list(sd)
    for a, b in zip(q, q2):
        assert (a.kind, a.restore_dtype) == (b.kind, b.restore_dtype)
        assert a.values.dtype == b.values.dtype and torch.equal(a.values, b.values)
        assert (a.scale is None) == (b.scale is None)
        if a.scale is not None:
            assert a.scale.dtype == b.scale.dtype and a.scale.shape == b.scale.shape
            assert torch.equal(a.scale, b.scale)
    mem, disk = dequantize(q), dequantize(q2)
    assert list(mem) == list(disk)
    for name in mem:
        assert mem[name].dtype == disk[name].dtype and torch.equal(mem[name], disk[name]), name


def test_encoding_is_deterministic_and_header_is_as_documented():
    q = quantize_state_dict(gpt_like_state_dict())
    blob = encode_artifact(q, {"a": 1})
    assert blob == encode_artifact(quantize_state_dict(gpt_like_state_dict()), {"a": 1})
    magic, version, codec, length, crc = struct.unpack_from("<8sBBQI", blob)
    assert (magic, version, codec, HEADER_BYTES) == (b"PGOLF\x00AR", 1, 1, 22)
    payload = zlib.decompress(blob[HEADER_BYTES:])
    assert len(payload) == length and zlib.crc32(payload) == crc
    assert blob[HEADER_BYTES:] == zlib.compress(payload, 9)


def test_tied_weights_share_storage_and_still_serialize(tmp_path):
    emb = torch.randn(300, 300)
    q = quantize_state_dict({"a": emb[:10, :5], "b": torch.arange(10), "c": torch.arange(10)[2:]})
    write_artifact(tmp_path / "t.pgolf", q, {})
    out = dequantize(read_artifact(tmp_path / "t.pgolf")[0])
    assert torch.equal(out["c"], torch.arange(2, 10))


def test_write_refuses_bad_meta_and_missing_folder(tmp_path):
    q = quantize_state_dict({"k": torch.zeros(3)})
    with pytest.raises(PgolfError, match="not plain JSON"):
        write_artifact(tmp_path / "a", q, {"x": object()})
    with pytest.raises(PgolfError, match="not plain JSON"):
        write_artifact(tmp_path / "a", q, {"x": float("nan")})
    with pytest.raises(PgolfError, match="does not exist"):
        write_artifact(tmp_path / "no" / "a", q, {})
    with pytest.raises(PgolfError, match="unknown compressor"):
        write_artifact(tmp_path / "a", q, {}, codec="lz4")
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path):
    with pytest.raises(PgolfError, match="not found"):
        read_artifact(tmp_path / "nope.pgolf")


# --- corrupted framing ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=2000)
@given(st.data())
def test_any_truncation_is_rejected(data):
    blob = small_blob()
    cut = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    with pytest.raises(PgolfError) as info:
        decode_artifact(blob[:cut], "a.pgolf")
    assert_one_line(info.value, "a.pgolf")


@settings(max_examples=200, deadline=2000)
@given(st.data())
def test_any_bit_flip_is_rejected(data):
    blob = bytearray(small_blob())
    pos = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    blob[pos] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    with pytest.raises(PgolfError) as info:
        decode_artifact(bytes(blob), "a.pgolf")
    assert_one_line(info.value, "a.pgolf")


@settings(max_examples=100, deadline=2000)
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lying_length_header_is_rejected(claimed):
    blob = bytearray(small_blob())
    true_length = struct.unpack_from("<Q", blob, 10)[0]
    if claimed == true_length:
        claimed += 1
    struct.pack_into("<Q", blob, 10, claimed)
    with pytest.raises(PgolfError) as info:
        decode_artifact(bytes(blob), "a.pgolf")
    assert_one_line(info.value, "a.pgolf")


@settings(max_examples=50, deadline=2000)
@given(st.binary(max_size=64))
def test_trailing_garbage_is_rejected(tail):
    blob = small_blob() + b"\x00" + tail
    with pytest.raises(PgolfError, match="unexpected bytes after|corrupt"):
        decode_artifact(blob, "a.pgolf")


@pytest.mark.parametrize(
    "offset, value, message",
    [(0, ord("X"), "bad magic"), (8, 2, "format version 2"), (9, 0, "compressor id 0"), (9, 77, "compressor id 77")],
)
def test_header_fields_are_checked(offset, value, message):
    blob = bytearray(small_blob())
    blob[offset] = value
    with pytest.raises(PgolfError, match=message):
        decode_artifact(bytes(blob), "a.pgolf")


def test_crc_is_checked():
    blob = bytearray(small_blob())
    blob[18] ^= 0x01  # the CRC field itself
    with pytest.raises(PgolfError, match="CRC32 mismatch"):
        decode_artifact(bytes(blob), "a.pgolf")
    # A payload changed behind a valid zlib stream of the right length: only the CRC notices.
    payload = bytearray(zlib.decompress(small_blob()[HEADER_BYTES:]))
    payload[-1] ^= 0xFF
    forged = small_blob()[:HEADER_BYTES] + zlib.compress(bytes(payload), 9)
    with pytest.raises(PgolfError, match="CRC32 mismatch"):
        decode_artifact(forged, "a.pgolf")


def test_empty_and_foreign_files(tmp_path):
    with pytest.raises(PgolfError, match="truncated artifact header"):
        decode_artifact(b"", "a")
    with pytest.raises(PgolfError, match="truncated artifact header"):
        decode_artifact(MAGIC + b"\x01", "a")
    with pytest.raises(PgolfError, match="bad magic"):
        decode_artifact(b"PK\x03\x04" + bytes(40), "a")


def test_decompression_is_capped():
    payload = bytes(2_000_000)
    honest = pack_container(payload)
    assert len(honest) < 5_000
    with pytest.raises(PgolfError, match="over the 1000000-byte cap"):
        unpack_container(honest, "bomb", max_payload_bytes=1_000_000)
    lying = bytearray(honest)
    struct.pack_into("<Q", lying, 10, 1_000)  # claims 1 kB, would inflate to 2 MB
    with pytest.raises(PgolfError, match="more than 1000 bytes"):
        unpack_container(bytes(lying), "bomb")
    assert unpack_container(honest, "ok", max_payload_bytes=2_000_000) == payload


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.pgolf"
    path.write_bytes(small_blob())
    with pytest.raises(PgolfError, match="far too large"):
        read_artifact(path, max_payload_bytes=100)


# --- well-framed payloads with wrong contents --------------------------------------------------------


def _safetensors(tensors: dict, doc: object | None, raw_meta: str | None = None) -> bytes:
    if doc is None and raw_meta is None:
        return safetensors.torch.save(tensors)
    meta = {"pgolf": raw_meta if raw_meta is not None else json.dumps(doc)}
    return safetensors.torch.save(tensors, metadata=meta)


def _doc(entries: list[dict], meta: object = None) -> dict:
    return {"schema": container.SCHEMA, "entries": entries, "meta": {} if meta is None else meta}


W = {"values/w": torch.zeros(3, 2, dtype=torch.int8), "scale/w": torch.ones(3, dtype=torch.float16)}
W_ENTRY = {"name": "w", "kind": KIND_PER_ROW, "restore_dtype": "float32"}


def test_valid_hand_built_payload_decodes():
    q, meta = decode_artifact(pack_container(_safetensors(W, _doc([W_ENTRY], {"k": 1}))), "a")
    assert q.names() == ["w"] and meta == {"k": 1}


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "too short"),
        (b"garbage!garbage!", "exceeds the payload"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "unreadable"),
        (struct.pack("<Q", 2) + b"[]", "unreadable"),
        (struct.pack("<Q", 2) + b"{}", "unreadable"),
        (_safetensors(W, None), "unreadable"),
        (_safetensors(W, None, raw_meta="{not json"), "unreadable"),
        (_safetensors(W, {"schema": "other", "entries": [], "meta": {}}), "schema"),
        (_safetensors(W, {"schema": container.SCHEMA, "entries": {}, "meta": {}}), "entry list"),
        (_safetensors(W, _doc([W_ENTRY], meta=[1])), "entry list or meta"),
        (_safetensors(W, _doc([W_ENTRY, {**W_ENTRY, "name": "v"}])), "'v' is listed in the metadata but missing"),
        (_safetensors({"values/w": W["values/w"]}, _doc([W_ENTRY])), "'w' is listed in the metadata but missing"),
        (_safetensors(W, _doc([])), "does not list"),
        (_safetensors(W, _doc([W_ENTRY, W_ENTRY])), "appears twice"),
        (_safetensors(W, _doc([{**W_ENTRY, "kind": "int4"}])), "malformed metadata entry"),
        (_safetensors(W, _doc(["w"])), "malformed metadata entry"),
        (_safetensors(W, _doc([{**W_ENTRY, "restore_dtype": "os"}])), "unknown restore dtype"),
        (_safetensors(W, _doc([{**W_ENTRY, "restore_dtype": "int64"}])), "non-float"),
        (_safetensors({**W, "scale/w": torch.ones(2)}, _doc([W_ENTRY])), "2 elements for 3 rows"),
        (_safetensors({**W, "values/w": torch.zeros(3, 2)}, _doc([W_ENTRY])), "expected int8"),
        (_safetensors(W, _doc([{**W_ENTRY, "kind": "passthrough"}])), "cannot restore int8 storage as float32"),
        (_safetensors(W, _doc([{**W_ENTRY, "kind": "passthrough", "restore_dtype": "int8"}])), "'scale/w' that the"),
    ],
)
def test_bad_payload_contents_are_rejected(payload, message):
    with pytest.raises(PgolfError, match=message) as info:
        decode_artifact(pack_container(payload), "a.pgolf")
    assert_one_line(info.value, "a.pgolf")


def test_garbage_safetensors_body_is_rejected():
    good = _safetensors(W, _doc([W_ENTRY]))
    (n,) = struct.unpack_from("<Q", good)
    header = json.loads(good[8 : 8 + n])
    header["values/w"]["data_offsets"] = [0, 10**12]
    text = json.dumps(header).encode()
    bad = struct.pack("<Q", len(text)) + text + good[8 + n :]
    with pytest.raises(PgolfError, match="corrupt safetensors payload"):
        decode_artifact(pack_container(bad), "a.pgolf")


def test_each_compressor_name_finds_its_own_codec_and_round_trips():
    # codec_named spells every compressor out by name (so that a bundle ships one): each name must give
    # the codec the header id reads back, and that codec must invert itself.
    from pgolf.export.codecs import codec_by_id, codec_named, every_codec

    data = bytes(range(256)) * 2
    for c in every_codec():
        if not c.available():
            continue
        named = codec_named(c.name)
        assert named is c and codec_by_id(named.codec_id) is c and named.name == c.name
        assert named.decompress(named.compress(data), len(data), "x") == data
    with pytest.raises(PgolfError, match="unknown compressor 'zip'"):
        codec_named("zip")
