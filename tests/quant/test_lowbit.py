"""Low-bit schemes and policies: parsing, ranges, clip rules, and exact export/load round trips."""

from __future__ import annotations

import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.export.codecs import available_codecs
from pgolf.export.container import decode_artifact, encode_artifact
from pgolf.quant.int8 import KIND_INTN, dequantize, to_reference_object
from pgolf.quant.lowbit import fake_quantize, parse_scheme, quantize_weight
from pgolf.quant.policy import parse_policy, quantize_state_dict_policy, tensor_role

SCHEMES = ["int2", "int3", "int4g32", "int5:mse", "int6", "int6:sd12.85", "int6g64:hsd12.85", "int7:max", "int8g128", "ternary", "ternaryg64", "fp16", "fp32", "int8ref"]


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "tok_emb.weight": torch.randn(512, 128, generator=g) * 0.02,
        "blocks.0.attn.c_q.weight": torch.randn(128, 128, generator=g) * 0.05,
        "blocks.0.mlp.fc.weight": torch.randn(256, 128, generator=g) * 0.05,
        "blocks.0.mlp.proj.weight": torch.randn(128, 100, generator=g) * 0.05,  # 100 columns: no group of 64 fits
        "blocks.0.attn_scale": torch.ones(128),
        "steps": torch.tensor(3),
    }


@pytest.mark.parametrize("text", SCHEMES)
def test_scheme_strings_round_trip(text):
    assert parse_scheme(str(parse_scheme(text))) == parse_scheme(text)


@pytest.mark.parametrize("bad", ["int9", "int1", "int6:sd", "int6:mse3", "int6g1", "uint4", "int6:sd0", ""])
def test_bad_schemes_are_refused(bad):
    with pytest.raises(PgolfError, match="quant scheme"):
        parse_scheme(bad)


@pytest.mark.parametrize("bits", range(2, 9))
def test_percentile_codes_and_scales_match_a_brute_force_recomputation(bits):
    # Per group of 64: clip at torch.quantile(|w|, 99.99984%) (the reference's percentile), scale =
    # clip / qmax rounded to fp16, codes = round(w / scale) in the symmetric range.
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(bits))
    codes, scale = quantize_weight(w, parse_scheme(f"int{bits}g64"))
    qmax = 2 ** (bits - 1) - 1
    groups = w.reshape(64, 4, 64)
    expected_scale = (torch.quantile(groups.abs(), 0.9999984, dim=-1) / qmax).half()
    expected_codes = torch.clamp(torch.round(groups / expected_scale.float()[..., None]), -qmax, qmax).to(torch.int8)
    assert torch.equal(scale, expected_scale)
    assert torch.equal(codes, expected_codes.reshape(64, 256))
    assert int(codes.abs().max()) == qmax


def test_more_bits_means_less_error():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    errs = []
    for bits in range(2, 9):
        codes, scale = quantize_weight(w, parse_scheme(f"int{bits}:max"))
        errs.append(float((codes.float() * scale.float()[:, None] - w).square().mean()))
    assert errs == sorted(errs, reverse=True)


def test_mse_clip_is_never_worse_than_the_percentile_clip():
    w = torch.randn(128, 512, generator=torch.Generator().manual_seed(1)) ** 3  # heavy tails
    def err(s):
        codes, scale = quantize_weight(w, parse_scheme(s))
        return (codes.float() * scale.float()[:, None] - w).square().sum(dim=1)
    # Per row: the MSE search includes 100% and picks the min; pct clips at 99.99984% ~ max here.
    assert bool((err("int4:mse") <= err("int4:max") + 1e-6).all())
    assert float(err("int4:mse").sum()) < float(err("int4:max").sum())


def test_sdclip_multiplier_is_a_monotone_clip_knob():
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(2))
    s_small = quantize_weight(w, parse_scheme("int6:sd4"))[1].float()
    s_big = quantize_weight(w, parse_scheme("int6:sd12"))[1].float()
    assert bool((s_big > s_small).all())


def test_ternary_uses_the_absmean_scale():
    w = torch.randn(4, 256, generator=torch.Generator().manual_seed(4))
    codes, scale = quantize_weight(w, parse_scheme("ternary"))
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    expected = w.reshape(4, 2, 128).abs().mean(-1).half()
    assert torch.equal(scale, expected)


def test_fake_quantize_matches_export_and_passes_gradients_straight_through():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(5), requires_grad=True)
    scheme = parse_scheme("int5g32:mse")
    out = fake_quantize(w, scheme)
    codes, scale = quantize_weight(w.detach(), scheme)
    assert torch.equal(out.detach(), (codes.float().reshape(64, 4, 32) * scale.float()[..., None]).reshape(64, 128))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_policy_assigns_by_role_then_glob_with_first_match_winning():
    p = parse_policy("blocks.0.mlp.proj.*=fp16,embed=int8,attn=int6,mlp=int5g64,*=int4,small=1000")
    assert [tensor_role(n) for n in ("tok_emb.weight", "blocks.3.attn.c_k.weight", "blocks.1.mlp.fc.weight", "skip_weights")] == [
        "embed", "attn", "mlp", "other"]
    assert str(p.scheme_for("blocks.0.mlp.proj.weight")) == "fp16"
    assert str(p.scheme_for("blocks.0.mlp.fc.weight")) == "int5g64"
    assert str(p.scheme_for("lm_head.weight")) == "int4"
    assert p.small_numel == 1000 and parse_policy(str(p)) == p


@pytest.mark.parametrize("bad", ["", "attn=int9", "=int6", "small=x", "small=-1"])
def test_bad_policies_are_refused(bad):
    with pytest.raises(PgolfError):
        parse_policy(bad)


@pytest.mark.parametrize("policy", ["int8", "*=int8ref"])
def test_int8_policy_is_the_reference_quantizer_exactly(oracle, monkeypatch, policy):
    # The reference's own quantize_state_dict_int8 / dequantize_state_dict_int8 (its default name patterns).
    monkeypatch.delenv("INT8_KEEP_FLOAT_FP32_NAME_PATTERNS", raising=False)
    monkeypatch.delenv("CONTROL_TENSOR_NAME_PATTERNS", raising=False)
    ref = oracle("reference/train_gpt.py")
    sd = weights()
    g = torch.Generator().manual_seed(7)
    sd["big"] = torch.randn(300, 300, generator=g) * 0.01
    sd["blocks.0.mlp.wide.weight"] = (torch.randn(128, 1024, generator=g) * 3).bfloat16()  # scales above the 1/127 floor
    sd["vec_long"] = torch.randn(70_001, generator=g)  # per-tensor int8
    ref_obj, ref_stats = ref.quantize_state_dict_int8(sd)
    q = quantize_state_dict_policy(sd, policy)
    mine = to_reference_object(q)
    for key in ("quantized", "scales", "passthrough"):
        assert list(mine[key]) == list(ref_obj[key]), key
        for name, t in ref_obj[key].items():
            assert mine[key][name].dtype == t.dtype and torch.equal(mine[key][name], t), (key, name)
    for key in ("dtypes", "qmeta", "passthrough_orig_dtypes"):
        assert mine.get(key) == ref_obj.get(key), key
    ref_state = ref.dequantize_state_dict_int8(ref_obj)
    for name, t in dequantize(q).items():
        assert t.dtype == ref_state[name].dtype and torch.equal(t, ref_state[name]), name


def test_groups_that_do_not_divide_fall_back_to_per_row():
    q = quantize_state_dict_policy(weights(), "int5g64,small=0")
    assert q.entry("blocks.0.mlp.fc.weight").group_size == 64
    assert q.entry("blocks.0.mlp.proj.weight").group_size == 0
    assert q.entry("blocks.0.attn_scale").kind == "passthrough"


# Every scheme through zlib, and every compressor with one low-bit scheme (all pairs are slow).
PAIRS = [(s, "zlib") for s in SCHEMES] + [("int5g32", c) for c in available_codecs() if c != "zlib"]


@pytest.mark.parametrize(("scheme", "codec"), PAIRS)
def test_loaded_artifact_dequantizes_bit_for_bit_like_memory(scheme, codec):
    q = quantize_state_dict_policy(weights(), f"{scheme},small=0")
    for shuffle in (False, True):
        q2, meta = decode_artifact(encode_artifact(q, {"s": scheme}, codec, shuffle=shuffle, pack=shuffle), "t")
        assert meta == {"s": scheme}
        a, b = dequantize(q), dequantize(q2)
        assert list(a) == list(b)
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
        if scheme not in ("fp16", "fp32", "int8ref"):
            assert q2.entry("tok_emb.weight").kind == KIND_INTN


def test_auto_codec_picks_the_smallest():
    from pgolf.export.container import HEADER_BYTES

    q = quantize_state_dict_policy(weights(), "int6,small=0")
    sizes = {c: len(encode_artifact(q, {}, c)) for c in available_codecs()}
    auto = encode_artifact(q, {}, "auto")
    assert len(auto) == min(sizes.values())
    assert len(auto) > HEADER_BYTES


@pytest.mark.parametrize("q", [0.999, 0.9995, 0.9999, 0.99999, 0.9999984, 1.0])
def test_top_order_quantiles_equal_torch_quantile(q):
    from pgolf.quant.lowbit import _TopOrder

    x = torch.randn(7, 1000, generator=torch.Generator().manual_seed(6)).abs()
    assert torch.allclose(_TopOrder(x, q).quantile(q), torch.quantile(x, q, dim=-1), rtol=0, atol=1e-7)


def test_fp16_grid_rounding_equals_a_half_cast():
    from pgolf.quant.lowbit import _round_to_fp16_grid

    x = torch.cat([torch.rand(100_000) * 10.0 ** torch.randint(-4, 4, (100_000,)), torch.tensor([1.0, 2.0**-14, 65504.0, 1 + 2**-11, 1 + 3 * 2**-11])])
    x = x.clamp(2.0**-14, 65504.0)
    assert torch.equal(_round_to_fp16_grid(x), x.half().float())
