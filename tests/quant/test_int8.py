"""The int8 scheme against a straightforward numpy restatement of the reference formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.quant import int8
from pgolf.quant.int8 import (
    KIND_PASSTHROUGH,
    KIND_PER_ROW,
    KIND_PER_TENSOR,
    QuantEntry,
    QuantizedState,
    dequantize,
    dequantize_reference_object,
    from_reference_object,
    payload_bytes,
    quantize_state_dict,
    to_reference_object,
)

Q = 99.99984 / 100.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def edge_state_dict() -> dict[str, torch.Tensor]:
    """Every routing case of the reference export, with awkward values."""
    g = _gen(0)
    zero_rows = torch.randn(256, 300, generator=g)
    zero_rows[[0, 5, 255]] = 0.0
    outlier = torch.randn(300, 257, generator=g)
    outlier[3, 7] = 1e4  # far past the 99.99984th percentile of its row: gets clipped
    return {
        "w2d": torch.randn(300, 257, generator=g),
        "zero_rows": zero_rows,
        "tiny_rows": torch.randn(260, 260, generator=g) * 1e-5,  # scale floor 1/127 rounds all to 0
        "outlier": outlier,
        "wide_rows": torch.randn(2, 40_000, generator=g) * 3.0,
        "bf16_2d": torch.randn(512, 200, generator=g).bfloat16(),
        "fp16_2d": torch.randn(200, 400, generator=g).half(),
        "vec": torch.randn(70_000, generator=g),
        "vec_bf16": torch.randn(70_000, generator=g).bfloat16(),
        "vec_zero": torch.zeros(65_537),
        "cube": torch.randn(3, 150, 160, generator=g),
        "blocks.0.attn_scale": torch.randn(512, generator=g),
        "blocks.0.q_gain": torch.randn(8, generator=g).bfloat16(),
        "blocks.1.mlp_scale": torch.randn(300, 300, generator=g),  # control name but too big: int8
        "small_bf16": torch.randn(10, 10, generator=g).bfloat16(),
        "small_fp32": torch.randn(65_536, generator=g),  # exactly at the keep-float limit
        "small_fp16": torch.randn(7, generator=g).half(),
        "small_f64": torch.randn(5, generator=g).double(),
        "ints": torch.randint(-5, 5, (100_000,), generator=g),
        "mask": torch.rand(70_000, generator=g) > 0.5,
        "empty": torch.empty(0, 5),
        "scalar": torch.tensor(3.0),
    }


# (kind, stored dtype, restore dtype) per name, as the reference routes them.
EXPECTED_ROUTING = {
    "w2d": (KIND_PER_ROW, torch.int8, torch.float32),
    "zero_rows": (KIND_PER_ROW, torch.int8, torch.float32),
    "tiny_rows": (KIND_PER_ROW, torch.int8, torch.float32),
    "outlier": (KIND_PER_ROW, torch.int8, torch.float32),
    "wide_rows": (KIND_PER_ROW, torch.int8, torch.float32),
    "bf16_2d": (KIND_PER_ROW, torch.int8, torch.bfloat16),
    "fp16_2d": (KIND_PER_ROW, torch.int8, torch.float16),
    "vec": (KIND_PER_TENSOR, torch.int8, torch.float32),
    "vec_bf16": (KIND_PER_TENSOR, torch.int8, torch.bfloat16),
    "vec_zero": (KIND_PER_TENSOR, torch.int8, torch.float32),
    "cube": (KIND_PER_TENSOR, torch.int8, torch.float32),
    "blocks.0.attn_scale": (KIND_PASSTHROUGH, torch.float32, torch.float32),
    "blocks.0.q_gain": (KIND_PASSTHROUGH, torch.float32, torch.float32),  # widened, as the reference
    "blocks.1.mlp_scale": (KIND_PER_ROW, torch.int8, torch.float32),
    "small_bf16": (KIND_PASSTHROUGH, torch.float16, torch.bfloat16),
    "small_fp32": (KIND_PASSTHROUGH, torch.float16, torch.float32),
    "small_fp16": (KIND_PASSTHROUGH, torch.float16, torch.float16),
    "small_f64": (KIND_PASSTHROUGH, torch.float64, torch.float64),
    "ints": (KIND_PASSTHROUGH, torch.int64, torch.int64),
    "mask": (KIND_PASSTHROUGH, torch.bool, torch.bool),
    "empty": (KIND_PASSTHROUGH, torch.float16, torch.float32),
    "scalar": (KIND_PASSTHROUGH, torch.float16, torch.float32),
}


@pytest.fixture(scope="module")
def edge_sd() -> dict[str, torch.Tensor]:
    return edge_state_dict()


@pytest.fixture(scope="module")
def edge_q(edge_sd) -> QuantizedState:
    return quantize_state_dict(edge_sd)


# --- the reference formulas, restated one row at a time in numpy ----------------------------


def numpy_per_row(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    w32 = w.float().numpy()
    codes, scales = [], []
    for row_t, row in zip(w.float(), w32):
        clip = np.float32(torch.quantile(row_t.abs(), Q).item())
        scale = np.float32(max(clip / np.float32(127.0), np.float32(1.0 / 127.0)))
        clipped = np.minimum(np.maximum(row, -clip), clip)
        codes.append(np.clip(np.round(clipped / scale), -127, 127).astype(np.int8))
        scales.append(np.float16(scale))
    return np.stack(codes), np.array(scales, dtype=np.float16)


def numpy_per_tensor(w: torch.Tensor) -> tuple[np.ndarray, np.float32]:
    w32 = w.float().numpy()
    clip = float(torch.quantile(w.float().abs().flatten(), Q).item())
    scale = np.float32(clip / 127.0 if clip > 0 else 1.0)  # divided in double, stored fp32
    clipped = np.clip(w32, np.float32(-clip), np.float32(clip))
    return np.clip(np.round(clipped / scale), -127, 127).astype(np.int8), scale


def test_routing_matches_reference_table(edge_q):
    assert edge_q.names() == list(EXPECTED_ROUTING)
    for e in edge_q:
        kind, stored, restore = EXPECTED_ROUTING[e.name]
        assert (e.kind, e.values.dtype, e.restore_dtype) == (kind, stored, restore), e.name
        if kind == KIND_PER_ROW:
            assert e.scale.dtype == torch.float16 and e.scale.shape == (e.values.shape[0],)
        elif kind == KIND_PER_TENSOR:
            assert e.scale.dtype == torch.float32 and e.scale.ndim == 0
        else:
            assert e.scale is None


def test_per_row_codes_and_scales_equal_numpy(edge_sd, edge_q):
    for e in edge_q:
        if e.kind != KIND_PER_ROW:
            continue
        codes, scales = numpy_per_row(edge_sd[e.name])
        np.testing.assert_array_equal(e.values.numpy(), codes, err_msg=e.name)
        np.testing.assert_array_equal(e.scale.numpy(), scales, err_msg=e.name)


def test_per_tensor_codes_and_scale_equal_numpy(edge_sd, edge_q):
    for e in edge_q:
        if e.kind != KIND_PER_TENSOR:
            continue
        codes, scale = numpy_per_tensor(edge_sd[e.name])
        np.testing.assert_array_equal(e.values.numpy(), codes, err_msg=e.name)
        assert e.scale.numpy() == scale, e.name


def test_edge_values(edge_sd, edge_q):
    zero = edge_q.entry("zero_rows")
    assert not zero.values[[0, 5, 255]].any()
    assert torch.all(zero.scale[[0, 5, 255]] == torch.tensor(1 / 127, dtype=torch.float16))
    tiny = edge_q.entry("tiny_rows")
    assert not tiny.values.any()  # the 1/127 scale floor zeroes weights this small (reference quirk)
    outlier = edge_q.entry("outlier")
    assert outlier.values[3, 7] == 127 and outlier.scale[3].item() * 127 < 1e4
    vec_zero = edge_q.entry("vec_zero")
    assert vec_zero.scale.item() == 1.0 and not vec_zero.values.any()
    for e in edge_q:
        if e.kind != KIND_PASSTHROUGH:
            assert int(e.values.abs().max()) <= 127


def test_clip_is_the_linear_percentile(edge_sd, edge_q):
    # Semantics check of the clip, independent of torch.quantile: float64 interpolation.
    w = edge_sd["w2d"].numpy().astype(np.float64)
    clip = np.quantile(np.abs(w), Q, axis=1)
    scale = edge_q.entry("w2d").scale.float().numpy()
    np.testing.assert_allclose(scale, np.maximum(clip / 127.0, 1 / 127.0), rtol=1e-3)


def test_dequantize_equals_numpy(edge_sd, edge_q):
    out = dequantize(edge_q)
    assert list(out) == list(edge_sd)
    for e in edge_q:
        kind, _, restore = EXPECTED_ROUTING[e.name]
        got = out[e.name]
        assert got.dtype == restore and got.shape == edge_sd[e.name].shape, e.name
        if kind == KIND_PASSTHROUGH:
            assert torch.equal(got, e.values.to(restore)), e.name
            continue
        codes = e.values.numpy().astype(np.float32)
        if kind == KIND_PER_ROW:
            expect = codes * e.scale.numpy().astype(np.float32).reshape(-1, *([1] * (codes.ndim - 1)))
        else:
            expect = codes * e.scale.numpy()
        assert torch.equal(got, torch.from_numpy(np.array(expect, dtype=np.float32)).to(restore)), e.name


def test_dequantize_error_is_bounded(edge_sd, edge_q):
    out = dequantize(edge_q)
    w = edge_sd["w2d"]
    step = edge_q.entry("w2d").scale.float()[:, None]
    assert torch.all((out["w2d"] - w).abs() <= step * 0.5 + 1e-3 * w.abs())
    assert torch.equal(out["ints"], edge_sd["ints"]) and torch.equal(out["mask"], edge_sd["mask"])
    assert torch.equal(out["blocks.0.attn_scale"], edge_sd["blocks.0.attn_scale"])


def test_quantize_does_not_alias_inputs(edge_sd):
    sd = {"ints": edge_sd["ints"].clone(), "blocks.0.attn_scale": edge_sd["blocks.0.attn_scale"].clone()}
    q = quantize_state_dict(sd)
    sd["ints"].add_(1)
    sd["blocks.0.attn_scale"].add_(1)
    assert torch.equal(q.entry("ints").values, edge_sd["ints"])
    assert torch.equal(q.entry("blocks.0.attn_scale").values, edge_sd["blocks.0.attn_scale"])
    out = dequantize(q)
    out["ints"].add_(1)
    assert torch.equal(q.entry("ints").values, edge_sd["ints"])


def test_payload_bytes_counts_codes_scales_and_passthrough():
    sd = {
        "w": torch.zeros(300, 300),
        "v": torch.zeros(70_000),
        "k": torch.zeros(10),
        "i": torch.zeros(3, dtype=torch.int64),
    }
    assert payload_bytes(quantize_state_dict(sd)) == 90_000 + 300 * 2 + 70_000 + 4 + 10 * 2 + 3 * 8


# --- environment patterns, read at call time --------------------------------------------------


def _kind_and_dtype(name: str) -> tuple[torch.dtype, torch.dtype]:
    e = quantize_state_dict({name: torch.randn(4, 4)}).entry(name)
    return e.values.dtype, e.restore_dtype


def test_default_control_patterns(monkeypatch):
    monkeypatch.delenv("CONTROL_TENSOR_NAME_PATTERNS", raising=False)
    monkeypatch.delenv("INT8_KEEP_FLOAT_FP32_NAME_PATTERNS", raising=False)
    expected = tuple(int8.DEFAULT_CONTROL_PATTERNS.split(","))
    assert "skip_weights" in expected and "resid_mix" in expected and "q_gain" in expected
    assert int8.control_tensor_patterns() == expected
    assert int8.keep_float_fp32_patterns() == expected
    assert _kind_and_dtype("blocks.3.resid_mix") == (torch.float32, torch.float32)
    assert _kind_and_dtype("blocks.3.other") == (torch.float16, torch.float32)


def test_control_patterns_env_changes_keep_float(monkeypatch):
    monkeypatch.delenv("INT8_KEEP_FLOAT_FP32_NAME_PATTERNS", raising=False)
    monkeypatch.setenv("CONTROL_TENSOR_NAME_PATTERNS", ",foo,,bar_gain,")
    assert int8.control_tensor_patterns() == ("foo", "bar_gain")
    assert _kind_and_dtype("x.foo.y") == (torch.float32, torch.float32)
    assert _kind_and_dtype("blocks.0.attn_scale") == (torch.float16, torch.float32)


def test_keep_float_env_overrides_control(monkeypatch):
    monkeypatch.setenv("CONTROL_TENSOR_NAME_PATTERNS", "foo")
    monkeypatch.setenv("INT8_KEEP_FLOAT_FP32_NAME_PATTERNS", "baz")
    assert _kind_and_dtype("x.foo") == (torch.float16, torch.float32)
    assert _kind_and_dtype("x.baz") == (torch.float32, torch.float32)
    monkeypatch.setenv("INT8_KEEP_FLOAT_FP32_NAME_PATTERNS", "")  # set but empty: no patterns at all
    assert int8.keep_float_fp32_patterns() == ()
    assert _kind_and_dtype("x.baz") == (torch.float16, torch.float32)


# --- quantile beyond torch's 2**24 limit ---------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 12_345, 300_001])
def test_sort_quantile_twin_matches_torch(monkeypatch, n):
    g = _gen(n)
    x = torch.randn(3, n, generator=g).abs()
    if n > 3:
        x[1, 2] = float("nan")
    expect = torch.quantile(x, Q, dim=-1)
    monkeypatch.setattr(int8, "_TORCH_QUANTILE_MAX_LEN", 0)
    got = int8.quantile_linear(x, Q)
    assert torch.equal(got.isnan(), expect.isnan())
    assert torch.equal(got.nan_to_num(), expect.nan_to_num())


def test_per_tensor_past_torch_quantile_limit(monkeypatch):
    # The reference crashes here ("quantile() input tensor is too large"); the twin takes over.
    monkeypatch.setattr(int8, "_TORCH_QUANTILE_MAX_LEN", 100_000)
    w = torch.randn(200_000, generator=_gen(5))
    e = quantize_state_dict({"big": w}).entry("big")
    monkeypatch.undo()
    codes, scale = numpy_per_tensor(w)
    np.testing.assert_array_equal(e.values.numpy(), codes)
    assert e.scale.numpy() == scale


# --- the reference's dict layout -----------------------------------------------------------------


def test_reference_object_layout(edge_q):
    obj = to_reference_object(edge_q)
    assert obj["__quant_format__"] == "int8_clean_per_row_v1"
    int8_names = [n for n, (k, _, _) in EXPECTED_ROUTING.items() if k != KIND_PASSTHROUGH]
    assert list(obj["quantized"]) == int8_names and list(obj["scales"]) == int8_names
    assert obj["dtypes"]["bf16_2d"] == "bfloat16" and obj["dtypes"]["fp16_2d"] == "float16"
    per_row = [n for n in int8_names if EXPECTED_ROUTING[n][0] == KIND_PER_ROW]
    assert obj["qmeta"] == {n: {"scheme": "per_row", "axis": 0} for n in per_row}
    assert obj["passthrough_orig_dtypes"] == {
        "small_bf16": "bfloat16", "small_fp32": "float32", "empty": "float32", "scalar": "float32"
    }
    assert "qmeta" not in to_reference_object(quantize_state_dict({"k": torch.zeros(3)}))


def test_reference_object_round_trip(edge_q):
    back = dequantize_reference_object(to_reference_object(edge_q))
    mine = dequantize(edge_q)
    assert set(back) == set(mine)
    for name, t in mine.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name


def test_reference_scalar_scale_with_per_row_qmeta_is_per_row():
    obj = {
        "__quant_format__": "int8_clean_per_row_v1",
        "quantized": {"w": torch.tensor([[2, -4]], dtype=torch.int8)},
        "scales": {"w": torch.tensor(0.5, dtype=torch.float16)},
        "dtypes": {"w": "float32"},
        "passthrough": {},
        "qmeta": {"w": {"scheme": "per_row", "axis": 0}},
    }
    assert from_reference_object(obj).entry("w").kind == KIND_PER_ROW
    assert torch.equal(dequantize_reference_object(obj)["w"], torch.tensor([[1.0, -2.0]]))


def _good_ref() -> dict:
    return to_reference_object(quantize_state_dict({"w": torch.randn(300, 300), "k": torch.randn(4)}))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o.update(__quant_format__="int4"), "__quant_format__"),
        (lambda o: o.pop("scales"), "'scales'"),
        (lambda o: o["scales"].pop("w"), "lacks its values or scale"),
        (lambda o: o["dtypes"].update(w="notadtype"), "original dtype"),
        (lambda o: o["dtypes"].update(w="__class__"), "original dtype"),
        (lambda o: o["passthrough"].update(w=torch.zeros(1)), "both quantized and passthrough"),
        (lambda o: o["passthrough"].update(k=[1, 2]), "not a tensor"),
        (lambda o: o["scales"].update(w=torch.ones(299, dtype=torch.float16)), "299 elements for 300 rows"),
        (lambda o: o["quantized"].update(w=o["quantized"]["w"].short()), "expected int8"),
        (lambda o: o.update(passthrough_orig_dtypes={"k": "nope"}), "unknown original dtype"),
        (lambda o: o.update(passthrough_orig_dtypes={"k": "int64"}), "cannot restore"),
    ],
)
def test_malformed_reference_objects_raise(mutate, message):
    obj = _good_ref()
    mutate(obj)
    with pytest.raises(PgolfError, match=message) as info:
        dequantize_reference_object(obj, "x.ptz")
    assert str(info.value).startswith("x.ptz: ") and "\n" not in str(info.value)


def test_non_dict_reference_object_raises():
    with pytest.raises(PgolfError, match="expected a dict"):
        from_reference_object([1, 2], "x.ptz")


# --- invariants of the data classes ----------------------------------------------------------------


def test_entry_invariants():
    i8 = torch.zeros(4, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="expected int8"):
        QuantEntry("w", KIND_PER_ROW, i8.float(), torch.ones(4), torch.float32)
    with pytest.raises(ValueError, match="per-tensor scale"):
        QuantEntry("w", KIND_PER_TENSOR, i8, torch.ones(2), torch.float32)
    with pytest.raises(ValueError, match="non-float"):
        QuantEntry("w", KIND_PER_ROW, i8, torch.ones(4), torch.int64)
    with pytest.raises(ValueError, match="unknown kind"):
        QuantEntry("w", "int4", i8, torch.ones(4), torch.float32)
    with pytest.raises(ValueError, match="no scale"):
        QuantEntry("w", KIND_PASSTHROUGH, i8, torch.ones(4), torch.int8)
    e = QuantEntry("w", KIND_PER_ROW, i8, torch.ones(4), torch.float32)
    with pytest.raises(ValueError, match="appears twice"):
        QuantizedState((e, e))


def test_bad_state_dict_values_raise():
    with pytest.raises(PgolfError, match="'w' is a list"):
        quantize_state_dict({"w": [1.0]})
    with pytest.raises(PgolfError, match="not a non-empty string"):
        quantize_state_dict({"": torch.zeros(1)})
