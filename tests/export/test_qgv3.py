"""PR #160's "QGv3" grouped serialisation (PGOLF_SERIALIZER=qgv3): pgolf's payload decodes with
PR #160's own ``deserialize_quant_obj_grouped`` + ``dequantize_state_dict_lowbit`` to pgolf's
dequantised weights, its int6 packing is PR #160's byte for byte, the artifact round-trips, and
damaged QGv3 payloads are one-line errors."""

from __future__ import annotations

import json
import lzma

import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.export.container import HEADER_BYTES, decode_artifact, decode_payload, encode_artifact, encode_payload, unpack_container
from pgolf.export.qgv3 import pack_int6, unpack_int6
from pgolf.presets import build_config
from pgolf.quant.int8 import dequantize
from pgolf.quant.policy import quantize_state_dict_policy

PR160 = "PR160_mlp3x_int8emb_seq2048/train_gpt.py"
POLICY = build_config("mlp3x_int8emb_seq2048", environ={}).quant.scheme


@pytest.fixture(scope="module")
def pr160(oracle):
    return oracle(PR160)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "tok_emb.weight": torch.randn(1024, 128, generator=g) * 0.5,  # int8 per row (int8ref)
        "blocks.0.attn.c_q.weight": torch.randn(384, 512, generator=g) * 2,  # int6 (ref rule), scales above the floor
        "blocks.0.mlp.proj.weight": torch.randn(512, 257, generator=g) * 0.05,  # odd count: int6 padding
        "blocks.0.attn_scale": torch.rand(512, generator=g),  # control: fp32
        "blocks.0.mlp.fc.bias_like": torch.randn(300, generator=g).bfloat16(),  # small: fp16, restored bf16
        "vec_long": torch.randn(70_001, generator=g),  # large non-matrix: per-tensor int8
        "step": torch.tensor([3, 4]),  # not a float: as it is
    }


def test_int6_packing_is_pr160s_byte_for_byte(pr160):
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 4, 5, 4097):
        codes = torch.randint(-31, 32, (n,), generator=g, dtype=torch.int8)
        assert torch.equal(pack_int6(codes), pr160.pack_signed_int6(codes))
        assert torch.equal(unpack_int6(pack_int6(codes), (n,), "t"), codes)


def test_pr160s_loader_reads_pgolfs_qgv3_payload_as_pgolf_dequantises_it(pr160):
    q = quantize_state_dict_policy(_state(), POLICY)
    blob = encode_artifact(q, {"run": 1}, "lzma", serializer="qgv3")
    payload = lzma.decompress(blob[HEADER_BYTES:])
    assert payload == unpack_container(blob, "t.ptz")
    theirs = pr160.dequantize_state_dict_lowbit(pr160.deserialize_quant_obj_grouped(payload))
    mine = dequantize(q)
    assert set(theirs) == set(mine)
    for name, t in mine.items():
        assert theirs[name].dtype == t.dtype and torch.equal(theirs[name], t), name
    loaded, meta = decode_artifact(blob, "t.ptz")
    assert meta == {"run": 1} and loaded.names() == sorted(q.names())  # like PR #160's, no order is kept
    for name, t in dequantize(loaded).items():
        assert torch.equal(t, mine[name]), name


def test_pgolfs_qgv3_payload_is_pr160s_serialisation_of_pr160s_quantization(pr160):
    # The same weights through PR #160's own quantizer and serializer: the same tensor bytes, only
    # the metadata differs (pgolf adds its order and meta under "pgolf").
    # (a large non-matrix tensor, which PR #160's model does not have, it would store as int6 per
    # tensor, pgolf as the reference's int8 per tensor)
    sd = {k: v for k, v in _state().items() if k not in ("step", "vec_long")}
    obj, _ = pr160.quantize_state_dict_lowbit(sd, 6, fp16_embed=False, fp16_late_k_layers=0, tok_embed_bits=8)
    theirs = pr160.serialize_quant_obj_grouped(obj)
    mine = encode_payload(quantize_state_dict_policy(sd, POLICY), {}, serializer="qgv3")
    head = 20
    meta_theirs, meta_mine = int.from_bytes(theirs[4:8], "little"), int.from_bytes(mine[4:8], "little")
    assert theirs[8:head] == mine[8:head]  # the three group lengths
    assert theirs[head + meta_theirs:] == mine[head + meta_mine:]


def _with_meta(payload: bytes, edit) -> bytes:
    """``payload`` with its meta JSON passed through ``edit`` (the header's lengths kept right)."""
    n = int.from_bytes(payload[4:8], "little")
    meta = json.loads(payload[20 : 20 + n])
    edit(meta)
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return payload[:4] + len(text).to_bytes(4, "little") + payload[8:20] + text + payload[20 + n :]


def test_older_pgolf_payloads_read_back_in_their_stored_order():
    q = quantize_state_dict_policy(_state(), POLICY)
    order = list(reversed(q.names()))
    old = _with_meta(encode_payload(q, {"run": 2}, serializer="qgv3"), lambda m: m["pgolf"].update(order=order))
    loaded, meta = decode_payload(old, "old.ptz")
    assert meta == {"run": 2} and loaded.names() == order
    mine = dequantize(q)
    assert all(torch.equal(t, mine[name]) for name, t in dequantize(loaded).items())
    bad = _with_meta(old, lambda m: m["pgolf"].update(order=order[1:]))
    with pytest.raises(PgolfError, match="tensor list and stored tensors disagree"):
        decode_payload(bad, "bad.ptz")


def test_what_qgv3_cannot_hold_is_a_clear_error():
    q = quantize_state_dict_policy(_state(), "int5")
    with pytest.raises(PgolfError, match="QGv3 holds per-row int6/int8"):
        encode_payload(q, {}, serializer="qgv3")
    with pytest.raises(PgolfError, match="unknown serializer"):
        encode_payload(q, {}, serializer="nope")


@pytest.mark.parametrize("damage", ["truncate", "lengths", "meta"])
def test_damaged_qgv3_payloads_are_refused_with_one_line(damage):
    from pgolf.export.qgv3 import decode_qgv3

    raw = bytearray(encode_payload(quantize_state_dict_policy(_state(), POLICY), {}, serializer="qgv3"))
    if damage == "truncate":
        raw = raw[: len(raw) - 10]
    elif damage == "lengths":
        raw[8] ^= 0x01
    else:
        raw[20] = ord("[")
    with pytest.raises(PgolfError) as err:
        decode_qgv3(bytes(raw), "bad.ptz")
    assert "\n" not in str(err.value) and "bad.ptz" in str(err.value)


def test_pr160s_preset_switches_it_on():
    q = build_config("mlp3x_int8emb_seq2048", environ={}).quant
    assert q.serializer == "qgv3" and q.compressor == "lzma"
    assert build_config("baseline", environ={}).quant.serializer == "pgolf"


@pytest.mark.parametrize("kind", ["qgv3", "stream shuffle"])
def test_byte_attribution_names_what_it_cannot_read(tmp_path, kind):
    from pgolf.export.container import write_artifact
    from pgolf.export.inspect import attribute_bytes

    q = quantize_state_dict_policy(_state(), POLICY)
    path = tmp_path / "a.ptz"
    if kind == "qgv3":
        write_artifact(path, q, {}, "zlib", serializer="qgv3")
    else:
        write_artifact(path, q, {}, "zlib", stream_shuffle=2)
    with pytest.raises(PgolfError, match="QGv3 payload" if kind == "qgv3" else "whole-stream byte shuffle"):
        attribute_bytes(path)
