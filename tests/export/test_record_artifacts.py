"""pgolf reads every record's own shipped artifact exactly as the record reads it back.

For each record preset: the record's own ``GPT`` (its script in the oracles), with random weights
and the dtypes its ``main()`` trains in (bf16, CastedLinear and low-dimensional tensors fp32), is
quantised, serialised and compressed by the record's OWN export code into the bytes its
``final_model.*.ptz`` holds; :mod:`pgolf.export.record_artifact` must then give bit-identical
tensors (same names, dtypes, values) to the record's own read-back and dequantisation. Then
``pgolf eval --artifact`` on R22's and PR #160's files scores what ``pgolf eval --checkpoint`` scores
on the record's own dequantised weights.

Every record is built at model_dim 320 and 2 layers (:data:`SHAPES`): every matrix kind is still
quantised, not passed through. R35 and R44 quantise with GPTQ, whose Hessians come from
calibration batches; here they are X^T X of random activations (GPTQ's arithmetic is the record's
either way); and their vocabulary is 1024.
"""

from __future__ import annotations

import contextlib
import io
import json
import lzma
import tempfile
import time
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import zstandard
from oracles import RECORDS, hyperparameters, no_orthogonal_init, randomise_

from pgolf.errors import PgolfError
from pgolf.export.codecs import lrzip_available
from pgolf.export.loading import FORMAT_RECORD, load_weights
from pgolf.export.record_artifact import byte_unshuffle, decode_record_artifact, record_dtype
from pgolf.presets import build_config

CAP = 1 << 30
WINDOW = 1024
# Small real shapes: at width 320 with 8 key/value heads every matrix kind (c_k too: 320 x 320)
# still has more than the 65,536 values below which the records pass a tensor through unquantised;
# 2 layers, and the layer-indexed options moved into them. R35's and R44's 8192-token table at a
# 1024-token vocabulary: R44 orders the table's rows by a greedy nearest-neighbour search,
# quadratic in them.
SMALL = ["model.model_dim=320", "model.num_layers=2", "model.num_kv_heads=8"]
SP8192_SMALL = SMALL + ["model.vocab_size=1024"]
SHAPES = {
    "leakyrelu_ttt_parallel_muon": SMALL + ["model.ve_layers=1", "model.xsa_last_n=1"],
    "sp8192_recur_parres_ttt": SP8192_SMALL + ["model.loop_start=0", "model.loop_end=1", "model.parallel_residual_start=1",
                                        "model.xsa_last_n=2"],
    "sp8192_lqer_sparsegate_bossmear": SP8192_SMALL + ["model.loop_start=0", "model.loop_end=1", "model.parallel_start_layer=1",
                                                "model.xsa_last_n=2"],
}


def _trained_dtypes(mod, model):
    """The record model in the dtypes its main() trains and exports it in."""
    model = model.bfloat16()
    if hasattr(mod, "restore_fp32_params"):  # R35, R44: CastedLinear, banks, low-dim and control -> fp32
        mod.restore_fp32_params(model)
        return model
    for m in model.modules():
        if isinstance(m, mod.CastedLinear):
            m.float()
    for bank in ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank"):
        if hasattr(model, bank):
            getattr(model, bank).data = getattr(model, bank).data.float()
    mod.restore_low_dim_params_to_fp32(model)
    return model


def _record_model(oracle, preset):
    record = RECORDS[preset]
    mod = oracle(record.script)
    cfg = build_config(preset, SHAPES.get(preset, SMALL), environ={})
    with no_orthogonal_init():  # randomised next
        model = record.build(mod, cfg).float()
    randomise_(model, seed=11)
    model = _trained_dtypes(mod, model).eval()
    return mod, cfg, model


def _cpu_state(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _torch_read(raw: bytes):
    return torch.load(io.BytesIO(raw), map_location="cpu")  # as the records read it back


def _hessians(state, names, seed=3):
    """A positive-definite X^T X per GPTQ'd matrix, from random activations of its input width."""
    g, out = torch.Generator().manual_seed(seed), {}
    for name in names:
        cols = state[name].shape[1]
        x = torch.randn(2 * cols, cols, generator=g)
        out[name] = x.T @ x / x.shape[0]
    return out


def _gptq_names(state):
    return [n for n, t in state.items() if t.is_floating_point() and t.numel() > 65536]


# -- each record: (its artifact bytes, its own dequantised state), by its own code ------------------


def reference_case(oracle):
    mod, _, model = _record_model(oracle, "baseline")
    obj, _ = mod.quantize_state_dict_int8(model.state_dict())
    blob = zlib.compress(_torch_bytes(obj), level=9)
    return {"zlib": (blob, mod.dequantize_state_dict_int8(_torch_read(zlib.decompress(blob))))}


def pr160_case(oracle):
    mod, _, model = _record_model(oracle, "mlp3x_int8emb_seq2048")
    a = mod.Hyperparameters
    obj, _ = mod.quantize_state_dict_lowbit(model.state_dict(), bits=a.quant_bits, fp16_embed=a.fp16_embed,
                                            fp16_late_k_layers=a.fp16_late_k_layers, tok_embed_bits=a.tok_embed_bits)
    raw = mod.serialize_quant_obj_grouped(obj)
    cases = {}
    for compressor in ("lzma", "zlib"):  # it shipped COMPRESSOR=lzma; zlib is its default
        blob = mod.compress_artifact(raw, compressor)
        state = mod.dequantize_state_dict_lowbit(mod.deserialize_quant_obj_grouped(mod.decompress_artifact(blob, compressor)))
        cases[compressor] = (blob, state)
    return cases


def r15_case(oracle):
    mod, _, model = _record_model(oracle, "smeargate_orthoinit_muonwd")
    obj, _ = mod.quantize_state_dict_int8(model.state_dict())
    blob = zstandard.ZstdCompressor(level=22).compress(_torch_bytes(obj))
    state = mod.dequantize_state_dict_int8(_torch_read(zstandard.ZstdDecompressor().decompress(blob)))
    return {"zstd": (blob, state)}


def r22_case(oracle):
    mod, cfg, model = _record_model(oracle, "leakyrelu_ttt_parallel_muon")
    unbanked = mod._unbank_state_dict(_cpu_state(model), cfg.model.num_layers)
    result, meta = mod.mixed_quantize_int6(unbanked, {"mlp", "attn"})
    blob = lzma.compress(_torch_bytes({"w": result, "m": meta}), preset=6)
    back = _torch_read(lzma.decompress(blob))
    return {"lzma": (blob, mod.dequantize_mixed_int6(back["w"], back["m"], unbanked))}


def pr1090_case(oracle):
    mod, _, model = _record_model(oracle, "xsa_swiglu_lora_ttt_1xh100")
    obj, _ = mod.quantize_state_dict_int8(model.state_dict())
    int8_blob = zlib.compress(_torch_bytes(obj), level=9)
    int8_state = mod.dequantize_state_dict_int8(_torch_read(zlib.decompress(int8_blob)))
    mixed_blob = zstandard.ZstdCompressor(level=22).compress(_torch_bytes(mod.quantize_state_dict_mixed(model.state_dict())))
    mixed_state = mod.dequantize_state_dict_mixed(_torch_read(zstandard.ZstdDecompressor().decompress(mixed_blob)))
    return {"int8-zlib": (int8_blob, int8_state), "mixed-zstd": (mixed_blob, mixed_state)}


def r35_gptq_mixed_quantize(mod):
    """R35's ``gptq_mixed_quantize``, which an older Python skips at import (its last line logs with a
    Python 3.12 f-string): the record's own source, that log line spelled without the nested quotes."""
    if hasattr(mod, "gptq_mixed_quantize"):
        return mod.gptq_mixed_quantize
    source = Path(mod.__file__).read_text(encoding="utf-8")
    start = source.index("def gptq_mixed_quantize(")
    func = source[start:source.index("\ndef ", start)]
    log_line = 'log(f"  {cat}: {", ".join(sorted(categories[cat]))}")'
    assert func.count(log_line) == 1
    func = func.replace(log_line, 'log("  " + cat + ": " + ", ".join(sorted(categories[cat])))')
    exec(compile(func, mod.__file__, "exec"), mod.__dict__)
    return mod.gptq_mixed_quantize


def r35_case(oracle):
    mod, cfg, model = _record_model(oracle, "sp8192_recur_parres_ttt")
    h = hyperparameters(mod, cfg, embedding_dim=cfg.model.model_dim)
    sd = _cpu_state(model)
    result, meta = r35_gptq_mixed_quantize(mod)(sd, _hessians(sd, _gptq_names(sd)), h)
    raw = _torch_bytes({"w": result, "m": meta})
    cases = {}
    for compressor in ("brotli", "lzma"):  # byte-shuffled first, both ways
        blob = mod._compress(raw, compressor)
        back = _torch_read(mod._decompress(blob, compressor))
        cases[compressor] = (blob, mod.dequantize_mixed(back["w"], back["m"], sd))
    return cases


def r44_case(oracle):
    mod, cfg, model = _record_model(oracle, "sp8192_lqer_sparsegate_bossmear")
    h = hyperparameters(mod, cfg)
    h.gated_attn_quant_gate = True  # as the record ran (GATED_ATTN_QUANT_GATE=1)
    n = cfg.model.num_layers
    flat = mod._unbank_state_dict(model.state_dict(), n)
    hessians = _hessians(flat, _gptq_names(flat))
    with gptq_once(mod):
        return _r44_cases(mod, h, n, flat, hessians)


@contextlib.contextmanager
def gptq_once(mod):
    """GPTQ is a pure function of (weights, Hessian, clip): R44's second quantisation of the same
    tensors (plain rather than asymmetric LQER) reuses the first's codes instead of recomputing them."""
    real, done = mod.gptq_quantize_weight, {}

    def cached(w, H, clip_sigmas=3.0, clip_range=63, block_size=128):
        key = (w.data_ptr(), H.data_ptr(), clip_sigmas, clip_range, block_size)
        if key not in done:
            done[key] = real(w, H, clip_sigmas=clip_sigmas, clip_range=clip_range, block_size=block_size)
        return tuple(t.clone() for t in done[key])

    with mock.patch.object(mod, "gptq_quantize_weight", cached):
        yield


def _r44_cases(mod, h, n, flat, hessians):
    result, meta = mod.gptq_mixed_quantize(flat, hessians, h)
    assert {"gate_int8_row"} <= set(meta.values()) and any("lqer_asym" in v for v in meta.values())
    cases = {}
    blob = mod._compress(_torch_bytes({"w": result, "m": meta}), "brotli")
    back = _torch_read(mod._decompress(blob, "brotli"))
    cases["brotli"] = (blob, mod.dequantize_mixed(back["w"], back["m"], flat))
    if lrzip_available():
        with tempfile.TemporaryDirectory() as tmp:
            blob = mod._serialize_pergroup(result, meta, n, tmp)
            codes, meta_back = mod._deserialize_pergroup(blob, n, tmp)
        cases["pergroup-lrzip"] = (blob, mod.dequantize_mixed(codes, meta_back, flat))
    # the plain (non-asymmetric) LQER path
    h.lqer_asym_enabled = False
    result, meta = mod.gptq_mixed_quantize(flat, hessians, h)
    assert any(v.endswith("+lqer") for v in meta.values())
    blob = mod._compress(_torch_bytes({"w": result, "m": meta}), "lzma")
    back = _torch_read(mod._decompress(blob, "lzma"))
    cases["lqer-lzma"] = (blob, mod.dequantize_mixed(back["w"], back["m"], flat))
    return cases


_MADE: dict[str, dict] = {}


def record_cases(oracle, preset: str) -> dict:
    """{label: (artifact bytes, the record's own dequantised state)} of one record, made once."""
    if preset not in _MADE:
        t0 = time.perf_counter()
        _MADE[preset] = CASES[preset](oracle)
        print(f"{preset}: the record's own export in {time.perf_counter() - t0:.1f} s")
    return _MADE[preset]


CASES = {
    "baseline": reference_case,
    "mlp3x_int8emb_seq2048": pr160_case,
    "smeargate_orthoinit_muonwd": r15_case,
    "leakyrelu_ttt_parallel_muon": r22_case,
    "xsa_swiglu_lora_ttt_1xh100": pr1090_case,
    "sp8192_recur_parres_ttt": r35_case,
    "sp8192_lqer_sparsegate_bossmear": r44_case,
}


def assert_bit_identical(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, t in theirs.items():
        assert ours[name].dtype == t.dtype, name
        assert ours[name].shape == t.shape, name
        a, b = ours[name].reshape(-1), t.reshape(-1)
        if t.is_floating_point():  # the bits, so that -0.0 == 0.0 or NaN != NaN cannot hide a difference
            a, b = a.view(torch.uint8), b.view(torch.uint8)
        assert torch.equal(a, b), name


@pytest.mark.parametrize("preset", sorted(CASES))
def test_pgolf_reads_each_records_artifact_as_the_record_does(preset, oracle):
    for label, (blob, theirs) in record_cases(oracle, preset).items():
        art = decode_record_artifact(blob, CAP, f"{preset} {label}")
        assert_bit_identical(art.state, theirs)
        print(f"{preset} {label}: {len(blob):,} bytes, {art.format}, {len(theirs)} tensors")
    if preset == "sp8192_lqer_sparsegate_bossmear" and not lrzip_available():
        pytest.skip("lrzip binary not installed: R44's per-group lrzip artifact was not checked")


@pytest.mark.parametrize("preset", ["leakyrelu_ttt_parallel_muon", "sp8192_recur_parres_ttt",
                                    "sp8192_lqer_sparsegate_bossmear"])
def test_the_dtype_rule_is_each_records_own(preset, oracle):
    """record_dtype (which the {"w", "m"} artifacts do not store) is the record's model's dtype."""
    _, _, model = _record_model(oracle, preset)
    for name, t in model.state_dict().items():
        assert record_dtype(name) == t.dtype, name


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_byte_unshuffle_undoes_r35s_own_shuffle(oracle, stride):
    mod = oracle(RECORDS["sp8192_recur_parres_ttt"].script)
    rng = np.random.default_rng(stride)
    for n in (stride, stride + 1, 7, 8, 1000, 1001, 1002, 1003):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        shuffled = mod._byte_shuffle(data, stride)
        assert shuffled[:5] == b"BSHF" + bytes([stride])
        assert byte_unshuffle(shuffled, "x") == data == mod._byte_unshuffle(shuffled), n


# -- bad input: one line naming the file -------------------------------------------------------


def test_bad_record_artifacts_are_refused_in_one_line(oracle, tmp_path, run_pgolf):
    blob, _ = record_cases(oracle, "leakyrelu_ttt_parallel_muon")["lzma"]
    raw = lzma.decompress(blob)
    bad = {
        "truncated.ptz": blob[: len(blob) // 2],
        "noise.ptz": bytes(range(256)) * 8,
        "wrongpayload.ptz": lzma.compress(b"hello, not a torch file"),
        "pickle.ptz": lzma.compress(b"BSHF\x01" + raw[:100]),
        "unsafe.ptz": lzma.compress(_unsafe_zip()),
        "qgv3.ptz": lzma.compress(b"QGv3" + bytes(16)),
        "pgrp.ptz": b"PGRP" + (3).to_bytes(4, "little"),
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        code, out, err = run_pgolf(["eval", "--artifact", str(tmp_path / name), "--preset", "leakyrelu_ttt_parallel_muon",
                                    "--device", "cpu"])
        assert code == 2 and err.startswith("pgolf: error: ") and str(tmp_path / name) in err, (name, err)
        assert len(err.strip().splitlines()) == 1, err


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo never",))


def _unsafe_zip() -> bytes:
    return _torch_bytes({"w": _Boom(), "m": {}})


# -- end to end: pgolf eval --artifact on the record's own file ---------------------------------


@pytest.mark.parametrize("preset", ["leakyrelu_ttt_parallel_muon", "mlp3x_int8emb_seq2048"])
def test_pgolf_eval_scores_a_records_own_artifact(preset, oracle, tmp_path, run_pgolf, sp1024_model, val_prefix_shard):
    blob, theirs = next(iter(record_cases(oracle, preset).values()))
    artifact, checkpoint = tmp_path / "final_model.ptz", tmp_path / "dequantised.pt"
    artifact.write_bytes(blob)
    torch.save(theirs, checkpoint)  # the record's own dequantised weights, record names
    common = ["--preset", preset, "--tokenizer", str(sp1024_model), "--val", str(val_prefix_shard),
              "--max-tokens", str(WINDOW), "--seq-len", str(WINDOW), "--device", "cpu",
              "--set", "EVAL_STRIDE=0", "--set", "PGOLF_TTT=", "--json"]
    for item in SHAPES.get(preset, SMALL):
        common += ["--set", item]
    scores = {}
    for flag, path in (("--artifact", artifact), ("--checkpoint", checkpoint)):
        with no_orthogonal_init():  # the weights replace every value of the model pgolf builds
            code, out, err = run_pgolf(["eval", flag, str(path), *common])
        assert code == 0, err
        scores[flag] = json.loads(out.strip().splitlines()[-1])
    assert scores["--artifact"]["tokens"] == WINDOW
    assert scores["--artifact"]["val_loss"] == scores["--checkpoint"]["val_loss"]
    assert scores["--artifact"]["val_bpb"] == scores["--checkpoint"]["val_bpb"]
    _, info = load_weights(artifact)
    assert info.format == FORMAT_RECORD
    print(f"{preset}: {len(blob):,}-byte artifact ({info.meta['record_format']}) val_loss "
          f"{scores['--artifact']['val_loss']:.8f} val_bpb {scores['--artifact']['val_bpb']:.8f}")


def test_a_pgolf_error_names_the_source_for_in_memory_bytes():
    with pytest.raises(PgolfError, match="^mine: not a record artifact"):
        decode_record_artifact(np.zeros(64, dtype=np.uint8).tobytes(), CAP, "mine")
