"""v2 artifacts (bit-packed intN, byte shuffle, every compressor): any damage is a one-line PgolfError."""

from __future__ import annotations

import lzma
from functools import lru_cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.errors import PgolfError
from pgolf.export.bitpack import pack_codes, unpack_codes
from pgolf.export.codecs import available_codecs
from pgolf.export.container import HEADER_BYTES, decode_artifact, encode_artifact, encode_payload, pack_container
from pgolf.quant.int8 import dequantize
from pgolf.quant.policy import quantize_state_dict_policy


@lru_cache(maxsize=None)
def blob(codec: str) -> bytes:
    g = torch.Generator().manual_seed(0)
    sd = {"blocks.0.mlp.fc.weight": torch.randn(16, 32, generator=g), "tok_emb.weight": torch.randn(8, 32, generator=g), "s": torch.ones(4)}
    return encode_artifact(quantize_state_dict_policy(sd, "mlp=int5g16,int3,small=0"), {"k": 1}, codec, shuffle=True, pack=True)


CODECS = available_codecs()


@settings(max_examples=60, deadline=None)
@given(codec=st.sampled_from(CODECS), data=st.data())
def test_any_truncation_is_rejected(codec, data):
    b = blob(codec)
    cut = data.draw(st.integers(0, len(b) - 1))
    with pytest.raises(PgolfError) as info:
        decode_artifact(b[:cut], "f")
    assert "\n" not in str(info.value)


@settings(max_examples=120, deadline=None)
@given(codec=st.sampled_from(CODECS), data=st.data())
def test_no_bit_flip_loads_different_weights(codec, data):
    """A flipped bit is refused, or decodes to exactly the original payload (the payload CRC makes sure).

    The second case is real: compressed streams carry bits their decoders ignore. Of every single-bit
    flip of this blob, 4/8168 (zlib), 14/8128 (zstd), 7/7488 (brotli), 3/7840 (lzma) and about 3% (lrzip)
    decode to the very same payload; none decodes to anything else.
    """
    b = bytearray(blob(codec))
    i = data.draw(st.integers(0, len(b) - 1))
    b[i] ^= 1 << data.draw(st.integers(0, 7))
    try:
        q, meta = decode_artifact(bytes(b), "f")
    except PgolfError:
        return
    original, original_meta = decode_artifact(blob(codec), "f")
    assert meta == original_meta
    assert dequantize(q).keys() == dequantize(original).keys()
    assert all(torch.equal(dequantize(q)[k], v) for k, v in dequantize(original).items())


@settings(max_examples=40, deadline=None)
@given(old=st.sampled_from([b'"shape":[16,32]', b'"bits":5', b'"layout":"bits"', b'"group_size":16', b'"layout":"shuffle"']),
       new=st.sampled_from([b'"shape":[16,31]', b'"shape":[99999999,9999]', b'"bits":9', b'"bits":1', b'"layout":"raw"',
                           b'"group_size":7', b'"shape":[-1,32]', b'"layout":"zzz"', b'"bits":"5"']))
def test_lying_metadata_behind_a_valid_crc_is_rejected(old, new):
    g = torch.Generator().manual_seed(0)
    q = quantize_state_dict_policy({"blocks.0.mlp.fc.weight": torch.randn(16, 32, generator=g)}, "int5g16,small=0")
    payload = encode_payload(q, {}, shuffle=True, pack=True)
    if old not in payload:
        return
    # Keep the safetensors header length right by padding/trimming with spaces in the JSON.
    forged = payload.replace(old, new.ljust(len(old)) if len(new) <= len(old) else new, 1)
    if len(new) > len(old):
        return
    with pytest.raises(PgolfError):
        decode_artifact(pack_container(forged, "zlib"), "f")


@pytest.mark.parametrize("bits", range(2, 9))
def test_bit_packing_round_trips_and_uses_n_bits(bits):
    qmax = 2 ** (bits - 1) - 1
    codes = torch.randint(-qmax, qmax + 1, (37, 11), generator=torch.Generator().manual_seed(bits), dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == (37 * 11 * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, (37, 11), "t"), codes)
    with pytest.raises(PgolfError):
        unpack_codes(packed[:-1], bits, (37, 11), "t")


# --- a reader/writer that knows its own layout (the training loop, and the bundle built from it) ----


def _intn_state():
    g = torch.Generator().manual_seed(3)
    return quantize_state_dict_policy({"blocks.0.mlp.fc.weight": torch.randn(16, 32, generator=g)}, "int5g16,small=0")


def test_v1_only_refuses_to_write_or_read_a_v2_state():
    with pytest.raises(PgolfError, match="needs the v2 artifact layout"):
        encode_artifact(_intn_state(), {}, v1_only=True)
    blob = encode_artifact(_intn_state(), {})
    with pytest.raises(PgolfError, match="^art: a v2 artifact where a v1 one was expected$"):
        decode_artifact(blob, "art", v1_only=True)
    assert len(decode_artifact(blob, "art")[0]) == 1  # without v1_only it reads as before


@pytest.mark.parametrize("written,expected", [("pgolf", "qgv3"), ("qgv3", "pgolf"), ("qgv3", "pergroup"), ("pgolf", "pergroup")])
def test_a_reader_naming_its_serializer_reads_no_other_layout(written, expected):
    # The training loop's round trip names the serializer it wrote, and a bundle folds that name: so
    # each bundle ships its own layout's reader alone (a QGv3 or pgolf-layout reader it never runs cost
    # 700 to 1,300 code bytes). Every layout is still read where no serializer is named.
    q = quantize_state_dict_policy({"w": torch.randn(8, 8)}, "int8")
    blob = encode_artifact(q, {"k": 1}, "zlib", serializer=written)
    assert decode_artifact(blob, "art")[1]["k"] == 1 and decode_artifact(blob, "art", serializer=written)[1]["k"] == 1
    layout = {"pgolf": "pgolf-layout", "qgv3": "QGv3"}[written]
    with pytest.raises(PgolfError, match=f"^art: a {layout} artifact where a {expected} one was expected$"):
        decode_artifact(blob, "art", serializer=expected)


def test_expected_codec_must_match_the_header():
    q = quantize_state_dict_policy({"w": torch.randn(8, 8)}, "int8")
    blob = encode_artifact(q, {"k": 1}, "lzma")
    assert decode_artifact(blob, "art", expect_codec="lzma", v1_only=True)[1] == {"k": 1}
    with pytest.raises(PgolfError, match="^art: compressor id 2, expected 1 \\(zlib\\)$"):
        decode_artifact(blob, "art", expect_codec="zlib")


def _pair_state(seed: int, policy: str):
    g = torch.Generator().manual_seed(seed)
    w = {"blocks.0.mlp.fc.weight": torch.randn(256, 128, generator=g),
         "blocks.0.attn.c_q.weight": torch.randn(256, 128, generator=g).cumsum(1)}
    return quantize_state_dict_policy(w, policy)


def test_lzma_keeps_the_smallest_of_its_settings_and_reads_older_xz_artifacts():
    # Compared with the standard library's own encodings: the body is the smallest .lzma stream of
    # presets 9 and 9 extreme under xz's default literal settings (lc 3, pb 2) and two others, and
    # the standard decoder reads it with no pgolf-side hint. Across these states more than one
    # preset and more than one setting win, so none of the tries is dead weight.
    settings = [(p, lc, pb) for p in (9, 9 | lzma.PRESET_EXTREME) for lc, pb in ((3, 2), (4, 0), (0, 0))]
    winners = set()
    for q in (_pair_state(0, "int6,small=0"), _pair_state(1, "int5g16,small=0"), _pair_state(2, "int8,small=0")):
        payload, blob = encode_payload(q, {"k": 1}), encode_artifact(q, {"k": 1}, "lzma")
        body = blob[HEADER_BYTES:]
        tries = [lzma.compress(payload, format=lzma.FORMAT_ALONE, filters=[
            {"id": lzma.FILTER_LZMA1, "preset": p, "lc": lc, "lp": 0, "pb": pb}]) for p, lc, pb in settings]
        assert len(body) == min(map(len, tries)) and lzma.decompress(body) == payload
        winners.add(settings[[len(t) for t in tries].index(len(body))])
    assert len({p for p, _, _ in winners}) > 1 and len({(lc, pb) for _, lc, pb in winners}) > 1, winners
    older = lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=9 | lzma.PRESET_EXTREME)
    assert decode_artifact(blob[:HEADER_BYTES] + older, "old", expect_codec="lzma")[1] == {"k": 1}
    forged = body[:1] + (2**32 - 1).to_bytes(4, "little") + body[5:]  # a 4 GiB dictionary
    with pytest.raises(PgolfError, match="^art: corrupt lzma data \\(Memory usage limit"):
        decode_artifact(blob[:HEADER_BYTES] + forged, "art")


def test_the_int8_policy_is_the_reference_quantizer_exactly():
    from pgolf.quant.int8 import quantize_state_dict

    g = torch.Generator().manual_seed(4)
    sd = {"a.weight": torch.randn(70, 1000, generator=g), "b": torch.randn(5, generator=g), "n": torch.arange(3)}
    by_policy, reference = quantize_state_dict_policy(sd, "int8"), quantize_state_dict(sd)
    assert by_policy.names() == reference.names()
    for x, y in zip(by_policy, reference):
        assert (x.kind, x.restore_dtype) == (y.kind, y.restore_dtype) and torch.equal(x.values, y.values)
        assert (x.scale is None and y.scale is None) or torch.equal(x.scale, y.scale)
    # a Policy object spelling the same rule goes the general way and agrees too
    from pgolf.quant.policy import parse_policy

    general = quantize_state_dict_policy(sd, parse_policy("int8"))
    assert all(torch.equal(x.values, y.values) for x, y in zip(general, reference))
