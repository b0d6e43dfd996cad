"""The records' own scripts as test oracles (../shared/oracles, or PGOLF_ORACLES), on CPU.

``import_oracle(path)`` imports a record script once per session with a stand-in
``flash_attn_interface`` whose functions call SDPA. ``RECORDS`` says, per record preset, which
script it is and how to build that script's ``GPT`` with the preset's hyperparameters;
``record_logits`` gets the logits the record's evaluation computes; ``randomise_`` gives any model
random non-trivial weights.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]


def oracles_dir() -> Path:
    """PGOLF_ORACLES, defaulting to ../shared/oracles beside the checkout."""
    return Path(os.environ.get("PGOLF_ORACLES", REPO_ROOT.parent / "shared" / "oracles"))


def _sdpa_flash_attn_func(q, k, v, causal=True, **_):
    """FlashAttention 3's ``flash_attn_func`` on (B, T, H, D) tensors with GQA, by SDPA."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=causal, enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)


def _sdpa_flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=0, max_seqlen_k=0,
                                 causal=True, **_):
    """``flash_attn_varlen_func`` on packed (total, H, D) tensors: each cu_seqlens segment on its own."""
    bounds = cu_seqlens_q.tolist()
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            out[start:end] = _sdpa_flash_attn_func(q[None, start:end], k[None, start:end], v[None, start:end], causal)[0]
    return out


_ORACLE_MODULES: dict[str, object] = {}
_CONTINUATIONS = (")", "]", "}", "else", "elif", "except", "finally")


def _top_level_statements(source: str) -> list[str]:
    """The script's top-level statements, each with its indented body and decorators."""
    chunks: list[list[str]] = []
    for line in source.splitlines(keepends=True):
        starts = line[:1] not in ("", " ", "\t", "\n", "#") and not line.startswith(_CONTINUATIONS)
        after_decorator = bool(chunks) and len(chunks[-1]) == 1 and chunks[-1][0].startswith("@")
        if not chunks or (starts and not after_decorator):
            chunks.append([line])
        else:
            chunks[-1].append(line)
    return ["".join(c) for c in chunks]


def _exec_script(source: str, module) -> None:
    """Run the script in ``module``. A script written for a newer Python than this one (R35's
    Python 3.12 f-strings) runs statement by statement, skipping those this Python cannot
    compile; their first lines are kept in ``module._pgolf_skipped`` for the tests to check."""
    try:
        code = compile(source, module.__file__, "exec")
    except SyntaxError:
        module._pgolf_skipped = []
        for statement in _top_level_statements(source):
            try:
                code = compile(statement, module.__file__, "exec")
            except SyntaxError:
                module._pgolf_skipped.append(statement.splitlines()[0][:80])
                continue
            exec(code, module.__dict__)
        return
    exec(code, module.__dict__)


def import_oracle(relative: str):
    """The record script ``relative`` (under the oracles folder) as a module, imported once per
    session with a stand-in ``flash_attn_interface`` (SDPA) that is removed again afterwards.
    Skips the test with one line when the oracles are absent."""
    import sys
    import types

    path = oracles_dir() / relative
    if not path.is_file():
        pytest.skip(f"record oracle {relative} not found under {oracles_dir()} (set PGOLF_ORACLES to its folder)")
    if relative not in _ORACLE_MODULES:
        stand_in = types.ModuleType("flash_attn_interface")
        stand_in.flash_attn_func = _sdpa_flash_attn_func
        stand_in.flash_attn_varlen_func = _sdpa_flash_attn_varlen_func
        saved = sys.modules.get("flash_attn_interface")
        sys.modules["flash_attn_interface"] = stand_in
        # the reference reads these at import time: the defaults, whatever the caller's environment holds
        saved_env = {k: os.environ.pop(k) for k in ("CONTROL_TENSOR_NAME_PATTERNS", "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS")
                     if k in os.environ}
        try:
            name = "pgolf_oracle_" + "".join(c if c.isalnum() else "_" for c in relative)
            module = types.ModuleType(name)
            module.__file__ = str(path)
            sys.modules[name] = module  # dataclasses and torch.library look their module up by name
            _exec_script(path.read_text(encoding="utf-8"), module)
        finally:
            os.environ.update(saved_env)
            if saved is None:
                sys.modules.pop("flash_attn_interface", None)
            else:
                sys.modules["flash_attn_interface"] = saved
        _ORACLE_MODULES[relative] = module
    return _ORACLE_MODULES[relative]




def oracle_path(relative: str) -> Path:
    """A file under the oracles folder; skips the test with one line where it is absent."""
    path = oracles_dir() / relative
    if not path.is_file():
        pytest.skip(f"oracle {relative} not found under {oracles_dir()} (set PGOLF_ORACLES to its folder)")
    return path


# -- R44's prepare_caseops_data.py calls SentencePiece's encode_as_immutable_proto, which
# sentencepiece 0.2.3 no longer has: ProtoSurfaces provides it from the serialized proto.

class _Piece:
    def __init__(self, surface: str):
        self.surface = surface


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    if data[pos] < 0x80:  # most keys and lengths: one byte
        return data[pos], pos + 1
    value, shift = 0, 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip(data: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(data, pos)[1]
    if wire == 2:
        size, pos = _varint(data, pos)
        return pos + size
    if wire in (1, 5):
        return pos + (8 if wire == 1 else 4)
    raise ValueError(f"unsupported protobuf wire type {wire}")


def _surface_pieces(sp, text: str) -> list[_Piece]:
    """Each piece's surface, read from SentencePiece's serialized SentencePieceText
    (field 2: the pieces; in each, field 3: its surface, absent when empty)."""
    data = sp.encode(text, out_type="serialized_proto")
    pieces, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        if key != 0x12:  # not a piece (field 2, length-delimited)
            pos = _skip(data, pos, key & 7)
            continue
        size, pos = _varint(data, pos)
        end, surface = pos + size, b""
        while pos < end:
            key, pos = _varint(data, pos)
            if key == 0x1A:  # field 3, length-delimited: the surface
                length, pos = _varint(data, pos)
                surface, pos = data[pos : pos + length], pos + length
            else:
                pos = _skip(data, pos, key & 7)
        pieces.append(_Piece(surface.decode("utf-8")))
    return pieces


def _sentencepiece_processor():
    import sentencepiece as spm

    return spm.SentencePieceProcessor


class ProtoSurfaces(_sentencepiece_processor()):
    """SentencePieceProcessor with the ``encode_as_immutable_proto(text).pieces[i].surface`` of older versions."""

    def encode_as_immutable_proto(self, text: str):
        import types

        return types.SimpleNamespace(pieces=_surface_pieces(self, text))


def reference_kwargs(m) -> dict:
    """The arguments every record's GPT shares with the reference's."""
    return dict(vocab_size=m.vocab_size, num_layers=m.num_layers, model_dim=m.model_dim, num_heads=m.num_heads,
                num_kv_heads=m.num_kv_heads, mlp_mult=m.mlp_mult, tie_embeddings=m.tie_embeddings,
                tied_embed_init_std=m.tied_embed_init_std, logit_softcap=m.logit_softcap, rope_base=m.rope_base,
                qk_gain_init=m.qk_gain_init)


def reference_gpt(mod, cfg):
    return mod.GPT(**reference_kwargs(cfg.model))


def pr160_gpt(mod, cfg):
    return mod.GPT(**reference_kwargs(cfg.model), mlp_hidden=cfg.model.mlp_hidden, train_seq_len=cfg.train.train_seq_len)


def r15_gpt(mod, cfg):
    m = cfg.model
    return mod.GPT(**reference_kwargs(m), bigram_hash_buckets=m.bigram_vocab_size, bigram_hash_dim=m.bigram_dim,
                   use_smeargate=m.use_smeargate)


def r22_gpt(mod, cfg):
    m = cfg.model
    return mod.GPT(**reference_kwargs(m), bigram_vocab_size=m.bigram_vocab_size, bigram_dim=m.bigram_dim,
                   xsa_last_n=m.xsa_last_n, rope_dims=m.rope_dims, ln_scale=m.ln_scale, ve_enabled=m.ve_enabled,
                   ve_dim=m.ve_dim, ve_layers=m.ve_layers, value_residual=m.value_residual)


def pr1090_gpt(mod, cfg):
    # its SwiGLU width comes from MLP_MULT (3: 2/3 of 3x, rounded to 64); pgolf states it as MLP_HIDDEN
    return mod.GPT(**{**reference_kwargs(cfg.model), "mlp_mult": mod.Hyperparameters.mlp_mult})


def hyperparameters(mod, cfg, **record_only):
    """The Hyperparameters object of an R35-style script, with the preset's model settings."""
    m, h = cfg.model, mod.Hyperparameters()
    for name in ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "tie_embeddings",
                 "tied_embed_init_std", "logit_softcap", "rope_base", "qk_gain_init", "xsa_last_n", "rope_dims",
                 "ln_scale", "skip_gates_enabled", "num_loops", "loop_start", "loop_end"):
        setattr(h, name, getattr(m, name))
    h.train_seq_len = cfg.train.train_seq_len
    for name, value in record_only.items():
        setattr(h, name, value)
    return h


def r35_gpt(mod, cfg):
    m = cfg.model
    model = mod.GPT(hyperparameters(mod, cfg, embedding_dim=m.model_dim, parallel_residual_start=m.parallel_residual_start))
    model.looping_active = True  # as it is evaluated
    return model


def r44_gpt(mod, cfg):
    m = cfg.model
    mod.BOS_ID = m.bos_id  # its evaluation sets the global before the first forward
    model = mod.GPT(hyperparameters(
        mod, cfg, parallel_start_layer=m.parallel_start_layer, parallel_final_lane=m.parallel_final_lane,
        smear_gate_enabled=m.smear_gate_enabled, gate_window=m.gate_window, rope_yarn=m.rope_yarn,
        sparse_attn_gate_enabled=m.sparse_attn_gate_enabled, sparse_attn_gate_scale=m.sparse_attn_gate_scale,
        attn_out_gate_enabled=m.attn_out_gate_enabled, gated_attn_enabled=m.gated_attn_enabled, fused_ce_enabled=False))
    model.looping_active = True
    return model


@dataclass(frozen=True)
class Record:
    script: str
    build: Callable
    varlen: bool = False  # evaluated with varlen attention over the BOS-delimited documents


RECORDS = {
    "baseline": Record("reference/train_gpt.py", reference_gpt),
    "mlp3x_int8emb_seq2048": Record("PR160_mlp3x_int8emb_seq2048/train_gpt.py", pr160_gpt),
    "smeargate_orthoinit_muonwd": Record("R15_smeargate_orthoinit_muonwd/train_gpt_v5.py", r15_gpt),
    "leakyrelu_ttt_parallel_muon": Record("R22_leakyrelu_ttt_parallel_muon/train_gpt.py", r22_gpt),
    "xsa_swiglu_lora_ttt_1xh100": Record("PR1090_xsa_swiglu_lora_ttt_1xh100/train_gpt.py", pr1090_gpt),
    "sp8192_recur_parres_ttt": Record("R35_sp8192_recur_parres_ttt/train_gpt.decompressed.py", r35_gpt),
    "sp8192_lqer_sparsegate_bossmear": Record("R44_sp8192_lqer_sparsegate_bossmear/train_gpt.py", r44_gpt, varlen=True),
}


@contextlib.contextmanager
def no_orthogonal_init():
    """Build models without the QR work of orthogonal init (slow on a loaded CPU), for tests that
    overwrite every weight right after (randomise_, a checkpoint)."""
    with mock.patch.object(torch.nn.init, "orthogonal_", lambda tensor, gain=1.0: tensor):
        yield


def randomise_(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights: matrices and tables ~ N(0, 1/fan_in) (zero-initialised projections
    too), gains, gates and lambdas their init value plus N(0, 0.5^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2 and min(p.shape[-2:]) >= 16:
                p.copy_(noise / math.sqrt(p.shape[-1]))
            else:
                p.add_(0.5 * noise)


class CapturingF:
    """torch.nn.functional with ``cross_entropy`` recording its logits: for the scripts whose GPT
    returns only the loss (the reference, PR #1090)."""

    def __init__(self, real):
        self.real, self.logits = real, None

    def __getattr__(self, name):
        return getattr(self.real, name)

    def cross_entropy(self, logits, *args, **kwargs):
        self.logits = logits
        return self.real.cross_entropy(logits, *args, **kwargs)


def record_logits(mod, record: Record, model, ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The record's own logits [B, T, V] for ``ids``, as its evaluation computes them."""
    if record.varlen:  # one sequence, cut at every BOS as its eval_val does
        bos = (ids[0] == mod.BOS_ID).nonzero(as_tuple=True)[0].tolist()
        cu, max_len = mod._build_cu_seqlens(bos, ids.numel(), ids.device, seq_len, 64)
        return model.forward_logits(ids, cu_seqlens=cu, max_seqlen=max_len)
    if hasattr(model, "forward_logits"):
        return model.forward_logits(ids)
    if hasattr(model, "get_logits"):
        return model.get_logits(ids)
    capture, real = CapturingF(mod.F), mod.F
    mod.F = capture
    try:
        model(ids, ids)
    finally:
        mod.F = real
    return capture.logits.reshape(*ids.shape, -1)




def record_and_pgolf_via_checkpoint(mod, preset: str, cfg, seed: int, folder: Path):
    """(the record's GPT with random non-trivial weights, pgolf's GPT reading them) as a user does it:
    the record's state dict saved as its ``main()`` saves ``final_model.pt``, then read by pgolf's
    ``load_weights`` and mapped onto pgolf's layout. Both in eval mode, fp32."""
    import io

    from pgolf.export.loading import load_weights
    from pgolf.export.record_layout import in_pgolf_layout
    from pgolf.model.gpt import build_model

    with no_orthogonal_init():  # every weight is overwritten right after
        theirs = RECORDS[preset].build(mod, cfg).float().eval()
        ours = build_model(cfg.model).eval()
    randomise_(theirs, seed=seed)
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)
    path = Path(folder) / "final_model.pt"
    path.write_bytes(buf.getvalue())
    state, _ = load_weights(path)
    ours.load_state_dict(in_pgolf_layout(state, ours.state_dict(), preset), strict=True)
    return theirs, ours
