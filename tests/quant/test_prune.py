"""Selective +-1 pruning (pgolf.quant.prune) against R24's own code: same quantized tensors and the
same size measure give the same zeroed set; through the export, the artifact fits with the fewest
codes zeroed, and what is on disk is the pruned state."""

from __future__ import annotations

import io
import lzma

import pytest
import torch

from pgolf.config import validate
from pgolf.errors import PgolfError
from pgolf.export.artifact import prune_to_fit_artifact
from pgolf.export.container import encode_artifact, read_artifact, write_artifact
from pgolf.presets import build_config
from pgolf.quant.int8 import KIND_INTN, QuantizedState
from pgolf.quant.policy import quantize_state_dict_policy
from pgolf.quant.prune import plus_minus_one_candidates, prune_to_fit, zero_first

POLICY = "embed=int8:sd20,attn=int6:sd12.85,mlp=int6:sd12.85,small=0"


def r24_selective_prune(quant_result: dict, quant_meta: dict, target_mb: float, code_bytes_est: int) -> dict:
    """R24's selective +-1 pruning, transcribed line for line (R24 is not among the oracles, whose
    folder is read-only here) from openai/parameter-golf @ 4908dc46f2, records/track_10min_16mb/
    2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072/train_gpt.py (blob 72c213f638), main(), lines
    1995-2041; only its log0 calls are dropped and the function returns ``quant_result``."""
    ones_info = []  # (tensor_key, flat_idx, error)
    for name, info in quant_meta.items():
        if not (isinstance(info, dict) and info.get("type") == "int6"): continue
        qk, sk = name + ".q", name + ".scale"
        if qk not in quant_result or sk not in quant_result: continue
        q, s = quant_result[qk], quant_result[sk]
        if s.ndim > 0:
            ones_mask = (q.abs() == 1)
            if ones_mask.any():
                row_idx = torch.arange(q.shape[0]).unsqueeze(1).expand_as(q)[ones_mask]
                flat_idx = torch.arange(q.numel()).reshape(q.shape)[ones_mask]
                errors = s.float()[row_idx].pow(2)
                for fi, err in zip(flat_idx.tolist(), errors.tolist()):
                    ones_info.append((qk, fi, err))
    if ones_info:
        ones_info.sort(key=lambda x: x[2])
        def _try_prune(n):
            tmp = {k: v.clone() for k, v in quant_result.items()}
            for i in range(min(n, len(ones_info))):
                tmp[ones_info[i][0]].view(-1)[ones_info[i][1]] = 0
            buf = io.BytesIO(); torch.save({"w": tmp, "m": quant_meta}, buf)
            return len(lzma.compress(buf.getvalue(), preset=9)) + code_bytes_est, tmp
        no_sz, _ = _try_prune(0)
        target_bytes = int(target_mb * 1024 * 1024)
        if no_sz <= target_bytes:
            pass
        else:
            full_sz, _ = _try_prune(len(ones_info))
            if full_sz > target_bytes:
                _, quant_result = _try_prune(len(ones_info))
            else:
                lo, hi = 0, len(ones_info)
                while lo < hi:
                    mid = (lo + hi) // 2
                    sz, _ = _try_prune(mid)
                    if sz <= target_bytes: hi = mid
                    else: lo = mid + 1
                _, quant_result = _try_prune(lo)
    return quant_result


def r24_layout(q: QuantizedState) -> tuple[dict, dict]:
    """``q`` in R24's ``mixed_quantize_int6`` layout: its attn/MLP int6 tensors as ``{"type": "int6"}``
    (R24's pruning candidates), everything else under another type."""
    result, meta = {}, {}
    for e in q:
        result[e.name + ".q"], result[e.name + ".scale"] = e.values.clone(), e.scale.clone()
        meta[e.name] = {"type": "int6" if e.bits == 6 else "int8"}
    return result, meta


def r24_size(q: QuantizedState, code_bytes: int) -> int:
    """What R24's ``_try_prune`` measures, for a pgolf state."""
    result, meta = r24_layout(q)
    buf = io.BytesIO()
    torch.save({"w": result, "m": meta}, buf)
    return len(lzma.compress(buf.getvalue(), preset=9)) + code_bytes


@pytest.fixture(scope="module")
def quantized() -> QuantizedState:
    """Small int6 attention/MLP matrices and an int8 embedding; rows of varied spread, so costs differ
    across rows, and one row repeated in two tensors, so equal costs occur across tensors too."""
    g = torch.Generator().manual_seed(24)

    def matrix(rows, cols):
        return torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g).add(0.2) * 0.05

    state = {
        "tok_emb.weight": matrix(64, 32),
        "blocks.0.attn.c_q.weight": matrix(64, 48),
        "blocks.0.mlp.fc.weight": matrix(128, 32),
        "blocks.1.mlp.proj.weight": matrix(32, 64),
    }
    state["blocks.1.mlp.proj.weight"][5, :32] = state["blocks.0.attn.c_q.weight"][3, :32]
    state["blocks.1.mlp.proj.weight"][5, 32:] = state["blocks.0.attn.c_q.weight"][3, :32].flip(0)
    q = quantize_state_dict_policy(state, POLICY)
    assert all(e.kind == KIND_INTN for e in q)
    return q


def zeroed(before: QuantizedState, after_codes) -> set[tuple[str, int]]:
    """(tensor, flat index) of every code that went from nonzero to zero."""
    out = set()
    for e in before:
        changed = (e.values.reshape(-1) != 0) & (after_codes(e.name).reshape(-1) == 0)
        out |= {(e.name, int(i)) for i in torch.nonzero(changed).flatten()}
    return out


def test_candidates_are_r24s_in_r24s_order(quantized):
    cand = plus_minus_one_candidates(quantized)
    names = quantized.names()
    listed = [(names[int(i)], int(f)) for i, f in zip(cand.entry, cand.flat)]
    # R24's list: every |q| == 1 code of its int6 tensors, cost scale^2, stable sort by cost.
    expected = []
    for e in quantized:
        if e.bits == 6:
            q = e.values
            for f in torch.nonzero(q.reshape(-1).abs() == 1).flatten().tolist():
                expected.append((e.name, f, e.scale.float()[f // q.shape[1]].pow(2).item()))
    expected.sort(key=lambda x: x[2])
    assert listed == [(n, f) for n, f, _ in expected]
    assert len({c for c in cand.cost.tolist()}) < len(cand)  # ties exist, so their order was checked


@pytest.mark.parametrize("where", ["between", "already_fits", "never_fits"])
def test_pruned_set_is_r24s(quantized, where):
    code_bytes = 1000
    none = r24_size(quantized, code_bytes)
    full = r24_size(zero_first(quantized, plus_minus_one_candidates(quantized), 10**9), code_bytes)
    assert full < none - 500  # zeros compress: there is room to search in
    target = {"between": (none + full) // 2, "already_fits": none + 10, "never_fits": full - 10}[where]
    target_mb = target / (1024 * 1024)
    target_bytes = int(target_mb * 1024 * 1024)  # R24's own rounding of its MiB target
    ours = prune_to_fit(quantized, lambda q: r24_size(q, code_bytes), target_bytes)
    result, meta = r24_layout(quantized)
    theirs = r24_selective_prune(result, meta, target_mb, code_bytes)
    ours_zeroed = zeroed(quantized, lambda n: ours.state.entry(n).values)
    theirs_zeroed = zeroed(quantized, lambda n: theirs[n + ".q"])
    assert ours_zeroed == theirs_zeroed
    assert len(ours_zeroed) == ours.pruned
    assert ours.fits == (where != "never_fits")
    if where == "between":
        assert 0 < ours.pruned < ours.candidates
    for e in quantized:  # nothing but codes changed
        assert torch.equal(ours.state.entry(e.name).scale, e.scale)


def test_through_the_export_the_artifact_fits_with_the_fewest_codes(quantized, tmp_path):
    code = tmp_path / "code.py"
    code.write_text("x = 1\n" * 300, encoding="utf-8")
    meta = {"policy": POLICY}

    def size(q: QuantizedState) -> int:
        return len(encode_artifact(q, meta, "lzma")) + code.stat().st_size

    cand = plus_minus_one_candidates(quantized)
    target = (size(quantized) + size(zero_first(quantized, cand, len(cand)))) // 2
    result = prune_to_fit_artifact(quantized, meta, target, "attn,mlp", files=[code], codec="lzma")
    assert result.fits and result.bytes_after == size(result.state) <= target < size(quantized)
    assert size(zero_first(quantized, cand, result.pruned - 1)) > target  # one fewer does not fit
    for e in quantized:
        after = result.state.entry(e.name).values
        changed = after != e.values
        assert torch.all(e.values[changed].abs() == 1) and torch.all(after[changed] == 0)
        if e.name == "tok_emb.weight":
            assert not changed.any()  # out of scope
    path = tmp_path / "pruned.pgolf"
    write_artifact(path, result.state, meta, "lzma")
    assert path.stat().st_size + code.stat().st_size == result.bytes_after
    on_disk, _ = read_artifact(path)
    for e in result.state:
        assert torch.equal(on_disk.entry(e.name).values, e.values)


def test_scope_globs_and_roles(quantized):
    emb = plus_minus_one_candidates(quantized, ("embed",))
    assert set(emb.entry.tolist()) == {0}
    fc = plus_minus_one_candidates(quantized, ("blocks.0.*",))
    assert set(fc.entry.tolist()) == {1, 2}


def test_config_refuses_pruning_without_intn_codes():
    with pytest.raises(PgolfError, match="PGOLF_PRUNE_ONES"):
        build_config("tiny_cpu", ["PGOLF_PRUNE_ONES=1"], environ={})
    with pytest.raises(PgolfError, match="scope is empty"):
        build_config("tiny_cpu", ["PGOLF_PRUNE_ONES=1", "PGOLF_QUANT_SCHEME=int6", "PGOLF_PRUNE_SCOPE= , "], environ={})
    validate(build_config("tiny_cpu", ["PGOLF_PRUNE_ONES=1", "PGOLF_QUANT_SCHEME=int6"], environ={}))


def test_a_training_run_with_prune_ones_writes_the_pruned_artifact(shared_data, tmp_path):
    from pgolf.train.loop import ARTIFACT_NAME, compile_warmup, export_and_score, run_training, setup

    data = shared_data / "datasets"
    cfg = build_config("tiny_cpu", [
        f"DATA_PATH={data / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={data / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
        "ITERATIONS=2", "VAL_MAX_TOKENS=2048", "TRAIN_LOG_EVERY=0", "RUN_ID=p",
        "PGOLF_QUANT_SCHEME=embed=int6,*=int4,small=4096", "PGOLF_COMPRESSOR=zlib",
        "PGOLF_PRUNE_ONES=1", "PGOLF_PRUNE_TARGET_BYTES=1", "PGOLF_PRUNE_SCOPE=mlp",
    ], environ={})
    s = setup(cfg, tmp_path, echo=False)
    compile_warmup(s)
    run_training(s)
    float_state = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
    export_and_score(s)
    on_disk, _ = read_artifact(tmp_path / "p" / ARTIFACT_NAME)
    rtn = quantize_state_dict_policy(float_state, cfg.quant.scheme)
    mlp = [e.name for e in rtn if e.kind == KIND_INTN and ".mlp." in e.name]
    assert mlp and all((rtn.entry(n).values.abs() == 1).any() for n in mlp)
    for e in rtn:  # an unreachable target: every in-scope +-1 code zeroed, nothing else touched
        expected = e.values.clone()
        if e.name in mlp:
            expected[expected.abs() == 1] = 0
        assert torch.equal(on_disk.entry(e.name).values, expected), e.name
    log = (tmp_path / "p" / "train.log").read_text()
    assert "selective_prune:" in log and "does NOT fit" in log
