"""load_weights: format sniffing, the reference's .pt/.ptz files, and refusing code-running pickles."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
import zlib

import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.export.container import write_artifact
from pgolf.export.loading import (
    FORMAT_ARTIFACT,
    FORMAT_REFERENCE_INT8,
    FORMAT_TORCH,
    load_weights,
    sniff_format,
)
from pgolf.quant.int8 import dequantize, quantize_state_dict, to_reference_object


def gpt_like_sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {
        "tok_emb.weight": torch.randn(512, 160, generator=g),
        "blocks.0.attn.c_q.weight": torch.randn(160, 160, generator=g).bfloat16(),
        "blocks.0.attn_scale": torch.randn(160, generator=g),
        "blocks.0.mlp.fc.weight": torch.randn(320, 240, generator=g),
        "skip_weights": torch.randn(2, 160, generator=g),
        "vec": torch.randn(70_000, generator=g),
    }


def write_ptz(path, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(zlib.compress(buf.getvalue(), level=9))


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_pgolf_artifact(tmp_path):
    q = quantize_state_dict(gpt_like_sd())
    write_artifact(tmp_path / "m.pgolf", q, {"step": 3})
    state, info = load_weights(tmp_path / "m.pgolf")
    assert (info.format, info.meta, info.path) == (FORMAT_ARTIFACT, {"step": 3}, str(tmp_path / "m.pgolf"))
    assert list(state) == list(gpt_like_sd())
    assert_same(state, dequantize(q))


def test_reference_final_model_pt(tmp_path):
    sd = gpt_like_sd()
    torch.save(sd, tmp_path / "final_model.pt")
    assert sniff_format(tmp_path / "final_model.pt") == FORMAT_TORCH
    state, info = load_weights(tmp_path / "final_model.pt")
    assert info.format == FORMAT_TORCH
    assert_same(state, sd)


def test_compiled_prefix_is_stripped(tmp_path):
    sd = gpt_like_sd()
    torch.save({"_orig_mod." + k: v for k, v in sd.items()}, tmp_path / "c.pt")
    assert_same(load_weights(tmp_path / "c.pt")[0], sd)
    torch.save({"_orig_mod.a": torch.zeros(1), "a": torch.ones(1)}, tmp_path / "clash.pt")
    with pytest.raises(PgolfError, match="collides"):
        load_weights(tmp_path / "clash.pt")


@pytest.mark.parametrize(
    "obj, message", [([torch.zeros(1)], "expected a state dict"), ({"a": 1}, "not a name -> tensor")]
)
def test_pt_that_is_not_a_state_dict(tmp_path, obj, message):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(PgolfError, match=message):
        load_weights(tmp_path / "x.pt")


def test_reference_int8_ptz(tmp_path):
    q = quantize_state_dict(gpt_like_sd())
    write_ptz(tmp_path / "final_model.int8.ptz", to_reference_object(q))
    assert sniff_format(tmp_path / "final_model.int8.ptz") == FORMAT_REFERENCE_INT8
    state, info = load_weights(tmp_path / "final_model.int8.ptz")
    assert info.format == FORMAT_REFERENCE_INT8 and info.meta == {"quant_format": "int8_clean_per_row_v1"}
    assert_same(state, dequantize(q))
    assert state["blocks.0.attn.c_q.weight"].dtype == torch.bfloat16


def test_ptz_with_wrong_format_tag(tmp_path):
    obj = to_reference_object(quantize_state_dict(gpt_like_sd()))
    obj["__quant_format__"] = "int6_v2"
    write_ptz(tmp_path / "x.ptz", obj)
    with pytest.raises(PgolfError, match="__quant_format__ is 'int6_v2'"):
        load_weights(tmp_path / "x.ptz")


def test_corrupt_ptz(tmp_path):
    q = quantize_state_dict(gpt_like_sd())
    write_ptz(tmp_path / "x.ptz", to_reference_object(q))
    blob = (tmp_path / "x.ptz").read_bytes()
    (tmp_path / "t.ptz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PgolfError, match="truncated zlib data"):
        load_weights(tmp_path / "t.ptz")
    (tmp_path / "g.ptz").write_bytes(zlib.compress(b"not a torch file at all"))
    with pytest.raises(PgolfError, match="does not hold a torch zip"):
        load_weights(tmp_path / "g.ptz")
    with pytest.raises(PgolfError, match="inflates to more than"):
        load_weights(tmp_path / "x.ptz", max_bytes=len(blob) + 10)


def test_zip_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", bytes(5_000_000))
    with pytest.raises(PgolfError, match="declare 5000000 bytes"):
        load_weights(path)
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(PgolfError, match="corrupt torch zip"):
        load_weights(tmp_path / "broken.pt")
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as zf:
        zf.writestr("readme.txt", "not a torch archive")
    with pytest.raises(PgolfError, match="unreadable torch file"):
        load_weights(tmp_path / "other.pt")


@pytest.mark.parametrize("content", [b"", b"hello world", b"\x80\x04K\x01.", b"\x89PNG\r\n\x1a\n"])
def test_unknown_formats(tmp_path, content):
    (tmp_path / "w.bin").write_bytes(content)
    with pytest.raises(PgolfError) as info:
        load_weights(tmp_path / "w.bin")
    assert str(info.value).startswith(f"{tmp_path / 'w.bin'}: not a pgolf artifact")


def test_missing_file(tmp_path):
    with pytest.raises(PgolfError, match="weights file not found"):
        load_weights(tmp_path / "none.pt")


# --- pickles that would run code ---------------------------------------------------------------


class TouchMarker:
    """Unpickling this runs ``touch <marker>`` through os.system."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class OpenMarker:
    """Unpickling this creates the marker file through builtins.open."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_files(marker: str, evil_cls) -> dict[str, bytes]:
    evil = evil_cls(marker)
    raw = pickle.dumps({"w": evil})
    buf = io.BytesIO()
    torch.save({"w": evil}, buf)
    tzip = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"__quant_format__": "int8_clean_per_row_v1", "quantized": {}, "scales": {}, "dtypes": {},
                "passthrough": {"w": evil}}, buf)
    return {
        "raw.pkl": raw,
        "raw.pkl.z": zlib.compress(raw, 9),
        "torch.pt": tzip,
        "torch.ptz": zlib.compress(buf.getvalue(), 9),
    }


@pytest.mark.parametrize("evil_cls", [TouchMarker, OpenMarker])
def test_malicious_pickles_are_refused_and_run_nothing(tmp_path, evil_cls):
    marker = tmp_path / "marker"
    files = _evil_files(str(marker), evil_cls)
    # Control: the payload really does create the marker when unpickled the unsafe way.
    pickle.loads(files["raw.pkl"])
    assert marker.exists()
    marker.unlink()
    for name, blob in files.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(PgolfError) as info:
            load_weights(path)
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
        if name.startswith("torch"):
            assert "unsafe unpickling" in str(info.value)
        assert not marker.exists(), f"{name} ran code while loading"
