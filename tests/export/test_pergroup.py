"""``PGOLF_SERIALIZER=pergroup``: R44's per-group serializer, against R44's own ``_serialize_pergroup``.

On the same int8 codes, pgolf's similarity order is R44's ``_similarity_sort_l1``, and its seven
group streams (``lrzip -z -L 9`` each) and its compressed row orders are R44's byte for byte; the
artifact reads back bit for bit (``pgolf eval --artifact`` reads it like any pgolf artifact). The
size against R44's whole file, on R44's own quantizer's output, is in
tests/export/test_record_export_parity.py (R44's preset writes this serializer).
"""

from __future__ import annotations

import json
import tempfile

import brotli
import numpy as np
import pytest
import torch

from pgolf.config import Config, validate
from pgolf.errors import PgolfError
from pgolf.export.codecs import codec_named, lrzip_available
from pgolf.export.container import decode_artifact, encode_artifact, unpack_container
from pgolf.export.loading import load_weights
from pgolf.export.pergroup import ROLE_GROUPS, SORTED_GROUPS, group_of, similarity_order, unpack_streams
from pgolf.presets import build_config
from pgolf.quant.int8 import KIND_INTN, KIND_PASSTHROUGH, QuantEntry, QuantizedState, dequantize

needs_lrzip = pytest.mark.skipif(not lrzip_available(), reason="the lrzip binary is not installed (apt-get install lrzip)")
LAYERS, DIM, KV, HIDDEN, VOCAB = 2, 48, 24, 96, 80
ROLES = {"attn.c_q.weight": (DIM, DIM), "attn.c_k.weight": (KV, DIM), "attn.c_v.weight": (KV, DIM),
         "attn.proj.weight": (DIM, DIM), "mlp.fc.weight": (HIDDEN, DIM), "mlp.proj.weight": (DIM, HIDDEN)}


def _codes(g: torch.Generator, rows: int, cols: int, alike: bool) -> torch.Tensor:
    """int6 codes. ``alike``: rows drawn from a few prototypes plus sparse noise, shuffled (rows that
    look alike but lie apart, as the similarity sort expects, and ties in its distances), which ZPAQ
    compresses; else uniform codes, which lrzip's LZ4 pre-test finds incompressible and stores as
    they are (still R44's bytes, in R44's order, without ZPAQ's ~1.6 s a stream at level 9)."""
    if not alike:
        return torch.randint(-31, 32, (rows, cols), generator=g, dtype=torch.int8)
    protos = torch.randint(-31, 32, (4, cols), generator=g)
    pick = torch.randint(0, 4, (rows,), generator=g)
    noise = torch.randint(-2, 3, (rows, cols), generator=g) * (torch.rand(rows, cols, generator=g) < 0.2)
    return (protos[pick] + noise).clamp(-31, 31).to(torch.int8)


ALIKE = "mlp.fc.weight"  # the one group ZPAQ really compresses here


def _entry(g, name, rows, cols, bits=6):
    scale = (torch.rand(rows, generator=g) * 0.01 + 1e-3).half()
    return QuantEntry(name, KIND_INTN, _codes(g, rows, cols, ALIKE in name), scale, torch.float32, bits, 0)


@pytest.fixture(scope="module")
def state() -> QuantizedState:
    """Every group's tensors at small widths, an int8 attention gate (not a group's: it stays in the
    remainder, as in R44) and a passthrough control tensor."""
    g = torch.Generator().manual_seed(0)
    entries = [_entry(g, "tok_emb.weight", VOCAB, DIM, bits=7)]
    for i in range(LAYERS):
        entries += [_entry(g, f"blocks.{i}.{role}", *shape) for role, shape in ROLES.items()]
        entries.append(_entry(g, f"blocks.{i}.attn.attn_gate_w", 4, 12, bits=8))
        entries.append(QuantEntry(f"blocks.{i}.attn_scale", KIND_PASSTHROUGH, torch.rand(DIM), None, torch.float32))
    return QuantizedState(tuple(entries))


def r44_codes(q: QuantizedState) -> dict[str, torch.Tensor]:
    """The same codes as R44's ``gptq_mixed_quantize`` names them (``<name>.q``, ``.scale``; gates ``.gq``)."""
    out = {}
    for e in q:
        if e.kind == KIND_PASSTHROUGH:
            out[e.name] = e.values
        elif "attn_gate_w" in e.name:
            out[e.name + ".gq"], out[e.name + ".gs"] = e.values, e.scale
        else:
            out[e.name + ".q"], out[e.name + ".scale"] = e.values, e.scale
    return out


# -- (1) the similarity order ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["spread", "few values", "repeated rows", "one row", "one column"])
def test_similarity_order_is_r44s(r44_script, case):
    rng = np.random.default_rng(7)
    m = {"spread": lambda: rng.integers(-128, 128, (60, 40)),
         "few values": lambda: rng.integers(-1, 2, (90, 5)),  # many equal distances: the tie rule decides
         "repeated rows": lambda: np.repeat(rng.integers(-31, 32, (6, 16)), 7, axis=0)[rng.permutation(42)],
         "one row": lambda: rng.integers(-31, 32, (1, 9)),
         "one column": lambda: rng.integers(-3, 4, (50, 1))}[case]().astype(np.int8)
    ours, theirs = similarity_order(m), r44_script._similarity_sort_l1(m)
    assert ours.dtype == theirs.dtype == np.uint16
    assert np.array_equal(ours, theirs)


def test_the_groups_are_r44s(r44_script):
    assert ROLE_GROUPS == tuple(r44_script._GROUP_ORDER) and SORTED_GROUPS == set(r44_script._SIMSORT_KEYS)
    assert group_of("blocks.3.mlp.fc.weight") == ("mlp.fc.weight.q", 3) and group_of("tok_emb.weight") == ("_tok_emb.weight.q", 0)
    assert group_of("blocks.0.attn.attn_gate_w") is None and group_of("lm_head.weight") is None


# -- (2) the streams R44 writes, and the round trip ----------------------------------------------------


@pytest.fixture(scope="module")
def both(state, r44_script):
    """(pgolf's artifact, its per-group streams, R44's streams) of the same codes."""
    if not lrzip_available():
        pytest.skip("the lrzip binary is not installed (apt-get install lrzip)")
    blob = encode_artifact(state, {"run": "test"}, "lrzip-zpaq", serializer="pergroup")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = r44_script._serialize_pergroup(r44_codes(state), {"m": "any"}, LAYERS, tmp)
    return blob, unpack_streams(unpack_container(blob, "pgolf"), "pgolf"), r44_script._unpack_streams(theirs)


def test_group_streams_and_row_orders_are_r44s_byte_for_byte(both, state):
    _, ours, theirs = both
    assert len(ours) == len(theirs) == len(ROLE_GROUPS) + 2
    for group, a, b in zip(ROLE_GROUPS, ours, theirs):
        assert a == b, f"group {group}: pgolf {len(a)} bytes, R44 {len(b)} bytes"
    assert ours[-1] == theirs[-1] and brotli.decompress(ours[-1]) == brotli.decompress(theirs[-1])
    # ZPAQ compressed the group of alike rows (lrzip stores what its LZ4 pre-test finds incompressible)
    alike = sum(e.values.numel() for e in state if ALIKE in e.name)
    assert len(ours[ROLE_GROUPS.index(ALIKE + ".q")]) < alike / 2


def test_the_artifact_reads_back_bit_for_bit_and_loads_as_a_pgolf_artifact(both, state, tmp_path):
    blob = both[0]
    back, meta = decode_artifact(blob, "pergroup artifact")
    assert meta == {"run": "test"} and back.names() == state.names()
    for a, b in zip(state, back):
        assert (a.kind, a.bits, a.group_size, a.restore_dtype) == (b.kind, b.bits, b.group_size, b.restore_dtype), a.name
        assert torch.equal(a.values, b.values) and (a.scale is None or torch.equal(a.scale, b.scale)), a.name
    path = tmp_path / "model.pgolf"  # what pgolf eval --artifact reads
    path.write_bytes(blob)
    weights, info = load_weights(path)
    assert info.format == "pgolf-artifact" and info.meta == {"run": "test"}
    expected = dequantize(state)
    assert set(weights) == set(expected) and all(torch.equal(weights[k], expected[k]) for k in expected)


@pytest.mark.parametrize("codec", ["zlib", "auto"])
def test_any_compressor_compresses_the_groups(state, codec):
    blob = encode_artifact(state, {}, codec, serializer="pergroup")
    back, _ = decode_artifact(blob, "x", expect_codec="stored", serializer="pergroup")
    assert all(torch.equal(a.values, b.values) for a, b in zip(state, back))


def test_a_reader_naming_the_group_compressor_reads_that_one_alone(state):
    # The training run's round trip names its groups' compressor (a bundle folds it, and ships that
    # decompressor alone): a payload whose groups name another is refused, not decoded by it.
    blob = encode_artifact(state, {}, "zlib", serializer="pergroup")
    back, _ = decode_artifact(blob, "x", expect_codec="stored", serializer="pergroup", group_codec="zlib")
    assert all(torch.equal(a.values, b.values) for a, b in zip(state, back))
    with pytest.raises(PgolfError, match="^x: per-group metadata lacks a known compressor for each of its"):
        decode_artifact(blob, "x", expect_codec="stored", serializer="pergroup", group_codec="brotli")
    assert decode_artifact(blob, "x", serializer="pergroup")[0] is not None  # unnamed: any known compressor


def test_a_reader_of_another_serializer_refuses_it(state):
    blob = encode_artifact(state, {}, "zlib", serializer="pergroup")
    with pytest.raises(PgolfError, match="per-group artifact where a pgolf one"):
        decode_artifact(blob, "x", serializer="pgolf")


@pytest.mark.parametrize("damage", ["stream count", "lengths", "codec ids", "row order"])
def test_damaged_payloads_are_one_line_errors(state, damage):
    from pgolf.export.pergroup import decode_pergroup, pack_streams

    payload = unpack_container(encode_artifact(state, {}, "zlib", serializer="pergroup"), "x")
    streams = unpack_streams(payload, "x")
    if damage == "stream count":
        bad = pack_streams(streams[:-1])
    elif damage == "lengths":
        bad = payload[:-3]
    elif damage == "codec ids":
        rest = brotli.decompress(streams[len(ROLE_GROUPS)]).replace(b'\\"codecs\\":[1,', b'\\"codecs\\":[9,')
        bad = pack_streams([*streams[: len(ROLE_GROUPS)], brotli.compress(rest), streams[-1]])
    else:
        perms = bytearray(brotli.decompress(streams[-1]))
        perms[0:2] = perms[2:4]  # one row twice: no permutation
        bad = pack_streams([*streams[:-1], brotli.compress(bytes(perms))])
    with pytest.raises(PgolfError) as err:
        decode_pergroup(bad, "bad.pgolf")
    assert str(err.value).startswith("bad.pgolf: ") and "\n" not in str(err.value)


# -- the configuration ------------------------------------------------------------------------------


def test_r44s_preset_writes_it_and_other_presets_do_not():
    q = build_config("sp8192_lqer_sparsegate_bossmear", environ={}).quant
    assert (q.serializer, q.compressor) == ("pergroup", "lrzip-zpaq") and codec_named("lrzip-zpaq").codec_id == 6
    assert build_config("baseline", environ={}).quant.serializer == "pgolf"
    assert build_config("baseline", environ={"PGOLF_SERIALIZER": "pergroup"}).quant.serializer == "pergroup"


def test_a_stream_shuffle_of_per_group_streams_is_refused():
    cfg = Config()
    cfg.quant.serializer, cfg.quant.stream_shuffle = "pergroup", 2
    with pytest.raises(PgolfError, match="PGOLF_STREAM_SHUFFLE"):
        validate(cfg)


def test_doctor_fails_early_when_the_preset_needs_lrzip_and_it_is_absent(run_pgolf, monkeypatch):
    import pgolf.export.codecs as codecs

    real = codecs.shutil.which
    monkeypatch.setattr(codecs.shutil, "which", lambda name, *a, **k: None if name == "lrzip" else real(name, *a, **k))
    code, out, _ = run_pgolf(["doctor", "--preset", "sp8192_lqer_sparsegate_bossmear", "--json"])
    found = {f["check"]: f for f in json.loads(out)}
    assert code == 1 and found["compressor"]["status"] == "fail"
    assert "lrzip-zpaq" in found["compressor"]["detail"] and "install" in found["compressor"]["detail"]
