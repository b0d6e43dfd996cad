"""Parity with the reference train_gpt.py itself: its quantizer, dequantizer and .ptz, imported
from the oracles (PGOLF_ORACLES, default ../shared/oracles; skipped where they are absent)."""

from __future__ import annotations

import io
import zlib

import pytest
import torch

from pgolf.export.loading import FORMAT_REFERENCE_INT8, load_weights
from pgolf.quant.int8 import dequantize, payload_bytes, quantize_state_dict, to_reference_object


@pytest.fixture(scope="module")
def ref(oracle):
    return oracle("reference/train_gpt.py")


@pytest.fixture(autouse=True)
def default_patterns(monkeypatch):
    monkeypatch.delenv("CONTROL_TENSOR_NAME_PATTERNS", raising=False)
    monkeypatch.delenv("INT8_KEEP_FLOAT_FP32_NAME_PATTERNS", raising=False)


def gpt_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Names, shapes and dtypes like the reference GPT (smaller), plus awkward extras."""
    g = torch.Generator().manual_seed(seed)
    d, vocab = 256, 1024
    sd = {"tok_emb.weight": torch.randn(vocab, d, generator=g) * 0.005}
    for i in range(3):
        p = f"blocks.{i}."
        sd[p + "attn.c_q.weight"] = torch.randn(d, d, generator=g)  # 65,536: kept as fp16
        sd[p + "attn.c_k.weight"] = torch.randn(128, d, generator=g)
        sd[p + "attn.proj.weight"] = torch.zeros(d, d + 1)  # zero-init projections: int8 zeros
        sd[p + "attn.q_gain"] = torch.full((4,), 1.5)
        sd[p + "attn_scale"] = torch.ones(d)
        sd[p + "mlp_scale"] = torch.ones(d).bfloat16()
        sd[p + "resid_mix"] = torch.stack((torch.ones(d), torch.zeros(d)))
        sd[p + "mlp.fc.weight"] = torch.randn(2 * d, d, generator=g).bfloat16()
        sd[p + "mlp.proj.weight"] = torch.randn(d, 2 * d, generator=g) * 1e-4
    sd["skip_weights"] = torch.ones(1, d)
    sd["final_norm.eps_buffer"] = torch.tensor(1e-6)
    sd["vec_long"] = torch.randn(70_001, generator=g)
    sd["cube"] = torch.randn(2, 200, 200, generator=g).half()
    sd["position"] = torch.arange(10)
    return sd


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_quantized_object_is_bit_identical(ref):
    sd = gpt_state_dict()
    ref_obj, ref_stats = ref.quantize_state_dict_int8(sd)
    q = quantize_state_dict(sd)
    mine = to_reference_object(q)
    assert set(mine) == set(ref_obj)
    for key in ("quantized", "scales", "passthrough"):
        assert list(mine[key]) == list(ref_obj[key]), key
        assert_same(mine[key], ref_obj[key])
    for key in ("dtypes", "qmeta", "passthrough_orig_dtypes", "__quant_format__"):
        assert mine[key] == ref_obj[key], key
    assert payload_bytes(q) == ref_stats["int8_payload_bytes"]


def test_dequantized_state_is_bit_identical(ref):
    sd = gpt_state_dict(1)
    ref_obj, _ = ref.quantize_state_dict_int8(sd)
    assert_same(dequantize(quantize_state_dict(sd)), ref.dequantize_state_dict_int8(ref_obj))


def test_loader_reads_a_ptz_made_by_the_reference_code_path(ref, tmp_path):
    sd = gpt_state_dict(2)
    ref_obj, _ = ref.quantize_state_dict_int8(sd)
    buf = io.BytesIO()
    torch.save(ref_obj, buf)
    path = tmp_path / "final_model.int8.ptz"
    path.write_bytes(zlib.compress(buf.getvalue(), level=9))
    state, info = load_weights(path)
    assert info.format == FORMAT_REFERENCE_INT8
    # What the reference's own round trip feeds load_state_dict.
    reloaded = torch.load(io.BytesIO(zlib.decompress(path.read_bytes())), map_location="cpu")
    expect = ref.dequantize_state_dict_int8(reloaded)
    assert_same(state, expect)
