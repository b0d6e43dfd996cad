"""Selective +-1 pruning (pgolf.quant.prune) against R24's rule restated here: same quantized tensors
and the same size measure give the same zeroed set; through the export, the artifact fits with the fewest
codes zeroed, and what is on disk is the pruned state."""

from __future__ import annotations

import bisect
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


def r24_pruned_count(fits, candidates: int) -> int:
    """How many of the cheapest +-1 codes R24's selective pruning zeroes (2026-03-25 ValCalib GPTQ
    record, ``main()``; R24 is not among the oracles), restated from its rule: none when the artifact
    already fits, all when even zeroing all does not fit, else a bisection over the prefix length in
    [0, candidates) for the first that fits; ``fits(n)`` measures the artifact with n zeroed."""
    if fits(0):
        return 0
    if not fits(candidates):
        return candidates
    return bisect.bisect_left(range(candidates + 1), True, lo=0, hi=candidates, key=fits)


def r24_candidates(q: QuantizedState) -> list[tuple[str, int]]:
    """R24's pruning candidates in its order: every |q| == 1 code of its int6 tensors, cost the row's
    scale squared, stably sorted by cost (ties keep tensor order, then position)."""
    listed = []
    for e in q:
        if e.bits == 6:
            flat = e.values.reshape(-1)
            for f in torch.nonzero(flat.abs() == 1).flatten().tolist():
                listed.append((e.name, f, e.scale.float()[f // e.values.shape[1]].pow(2).item()))
    listed.sort(key=lambda x: x[2])
    return [(n, f) for n, f, _ in listed]


def r24_prune(q: QuantizedState, first: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
    """The codes of ``q`` with the listed codes zeroed."""
    codes = {e.name: e.values.clone() for e in q}
    for name, f in first:
        codes[name].view(-1)[f] = 0
    return codes


def r24_layout(q: QuantizedState) -> tuple[dict, dict]:
    """``q`` in R24's ``mixed_quantize_int6`` layout: its attn/MLP int6 tensors as ``{"type": "int6"}``
    (R24's pruning candidates), everything else under another type."""
    result, meta = {}, {}
    for e in q:
        result[e.name + ".q"], result[e.name + ".scale"] = e.values.clone(), e.scale.clone()
        meta[e.name] = {"type": "int6" if e.bits == 6 else "int8"}
    return result, meta


def r24_size(q: QuantizedState, code_bytes: int, codes: dict[str, torch.Tensor] | None = None) -> int:
    """What R24 measures for each try: lzma preset 9 of ``torch.save`` of its layout, plus code bytes."""
    result, meta = r24_layout(q)
    for name, values in (codes or {}).items():
        result[name + ".q"] = values
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
    assert listed == r24_candidates(quantized)
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
    listed = r24_candidates(quantized)

    def fits(n: int) -> bool:
        return r24_size(quantized, code_bytes, r24_prune(quantized, listed[:n])) <= target_bytes

    theirs = r24_prune(quantized, listed[: r24_pruned_count(fits, len(listed))])
    ours_zeroed = zeroed(quantized, lambda n: ours.state.entry(n).values)
    theirs_zeroed = zeroed(quantized, lambda n: theirs[n])
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
