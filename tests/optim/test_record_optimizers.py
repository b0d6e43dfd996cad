"""Every preset's training step against its record's own code: three steps from the same weights give the same weights.

For each preset the record's script (``PGOLF_ORACLES``, see its README) is imported on CPU with the
environment of its run command, and the record builds its model and optimizers and takes its
training steps with the statements of its own ``main()`` / ``train_model()`` / ``step_fn``,
executed as written (:func:`record_statements` cuts them out of the script by their first words).
pgolf builds its model and optimizers from the preset and steps with ``pgolf.train.loop.train_step``.
pgolf's initial weights are copied into the record's layout (:class:`Link`: names, R22/R44's
parameter banks, PR #1090's separate SwiGLU gate and up), then each step feeds both sides the same
gradients through a :class:`GradientProbe` in place of the model (a loss whose gradients are
given), so what is compared is the optimizer math and the step around it: Muon and its variants
(momentum warm-up, Nesterov, weight decay, MuonEq-R, Polar Express, banks), the Adam groups (LR,
betas, eps, weight decay), the LR scale, the gradient clip, zeroed gradients and the EMA.
``test_full_step_matches_the_record`` runs the real forward and backward on both sides instead, for
the presets whose forward is the record's (baseline, PR #160, R35).

``test_three_steps_match_the_record`` runs Newton-Schulz in fp32 on both sides (the record's
function is redefined with its bf16 cast turned into fp32, as is the reference Muon's bf16 update
buffer; pgolf's ``ns_dtype``), so the bf16 rounding of the real runs cannot hide a difference, and
R22 / R44's bf16 gradient cast is made fp32 on both sides (see :func:`run_both`).
``test_unpatched_records_match_in_bf16`` then runs the records' code unchanged, in bf16 as on the
GPU, with gradients the clip leaves alone: pgolf rounds where and as the record does.

Widths are cut to MODEL_DIM=128 (``PGOLF_RECORD_TEST_WIDTH`` sets another) and the layer count to
2-3, every parameter kind kept and the layer-indexed options moved onto those layers: full-width
fp32 Newton-Schulz takes about a second per matrix on a busy 2-core CPU.
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import set_value, validate
from pgolf.model.gpt import build_model
from pgolf.optim.averaging import build_averager
from pgolf.optim.groups import build_optimizers
from pgolf.optim.schedule import lr_scale
from pgolf.presets import PRESETS
from pgolf.train.loop import train_step

pytestmark = pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda':UserWarning",
                                        "ignore:CUDA is not available:UserWarning")  # the records' CUDA autocast
ORACLES = Path(os.environ.get("PGOLF_ORACLES", Path(__file__).resolve().parents[3] / "shared" / "oracles"))
STEPS = 3
TOLERANCE = 1e-5
LR_SCALES = (1.0, 0.6, 0.35)  # as in a warm-down: every group's base_lr times the same scale
FRACS = (0.0, 0.2, 0.4)  # training fractions: R35 / R44 switch depth recurrence on (0.35) before the third step
GRAD_STDS = (1e-3, 1e-5, 1e-3)  # global norms ~1, ~0.01, ~1: a 0.3 clip binds at steps 0 and 2 only
UNCLIPPED_STDS = (1e-5, 1e-5, 1e-5)  # norms ~0.01: no clip binds, so both sides see bit-identical gradients
WIDTH = int(os.environ.get("PGOLF_RECORD_TEST_WIDTH", 128))

FP32_COPY = "G.to(torch.float32, copy=True)"  # a copy, as .bfloat16() made one: the reference divides X in place
NS_FP32_REFERENCE = (  # the reference's Newton-Schulz and Muon (flat bf16 update buffer), in fp32
    ("zeropower_via_newtonschulz5", (("X = G.bfloat16()", f"X = {FP32_COPY}"),)),
    ("Muon", (("dtype=torch.bfloat16", "dtype=torch.float32"),)),
)
NS_FP32_R35 = (("zeropower_via_newtonschulz5", (("X=G.bfloat16()", f"X={FP32_COPY}"),)),
               ("Muon", (("dtype=torch.bfloat16", "dtype=torch.float32"),)))
NS_FP32_BANKED = (("zeropower_via_newtonschulz5", (("X = G.bfloat16()", f"X = {FP32_COPY}"),)),)  # R22, R44
FP32_GRADS_BANKED = (("Muon", (("g = p.grad.bfloat16()", "g = p.grad.float()"),)),)  # R22, R44's momentum

# The statements each record runs: (function, first words, words of the statement to stop before).
REFERENCE_SETUP = (("main", "base_model = GPT(", "n_params = sum("), ("main", "def zero_grad_all", None))
REFERENCE_STEP = ("main", "scale = lr_mul(step, elapsed_ms)", "step += 1")  # the loop body: forward to update
R35_FIX_312 = (('{", ".join(', "{', '.join("), ('glob("fineweb_train_*.bin")', "glob('fineweb_train_*.bin')"))


@dataclass(frozen=True)
class Record:
    """How to run one record's training step, and how its parameters sit relative to pgolf's."""

    preset: str
    script: str  # under ORACLES
    env: dict  # the record's run command (its README), then the smaller shape
    pgolf_shape: dict  # the same smaller shape, by pgolf's env names
    setup: tuple  # statements that build the model and its optimizers
    step: tuple  # statements of one step of the training loop (forward, backward, update, EMA)
    fp32: tuple  # (function or class, ((old, new), ...)) redefined to run Newton-Schulz in fp32
    step_fn: tuple | None = None  # R35 / R44: the body of step_fn, which ``step`` calls
    ema_setup: tuple | None = None  # statements that start the EMA (run after the weights are copied)
    fp32_grads: tuple = ()  # R22 / R44: redefinitions that keep Muon's gradients and momentum in fp32
    banks: bool = False  # R22 / R44: qo/kv/mlp banks instead of per-layer matrices
    renames: dict = field(default_factory=dict)  # pgolf name -> record name
    source_fixes: tuple = ()
    loader_extras: int = 0  # R44's loader also returns cu_seqlens and max_seqlen
    forward_is_the_records: bool = False  # test_full_step_matches_the_record runs it


SMALL = {"MODEL_DIM": WIDTH, "NUM_LAYERS": 2}
R22_SMALL = {**SMALL, "VE_LAYERS": "0,1", "BIGRAM_DIM": min(128, WIDTH // 2)}  # R22 has no bigram projection at BIGRAM_DIM = MODEL_DIM
LOOPED_SMALL = {"MODEL_DIM": WIDTH, "NUM_LAYERS": 3, "LOOP_START": 1, "LOOP_END": 1}  # R35 / R44: layers 3-5 of 11
RECORDS = {
    r.preset: r
    for r in (
        Record("baseline", "reference/train_gpt.py", SMALL, SMALL, REFERENCE_SETUP, REFERENCE_STEP, NS_FP32_REFERENCE,
               forward_is_the_records=True),
        Record("mlp3x_int8emb_seq2048", "PR160_mlp3x_int8emb_seq2048/train_gpt.py",
               {"TRAIN_BATCH_TOKENS": 786432, "TRAIN_SEQ_LEN": 2048, "ITERATIONS": 20000, "WARMDOWN_ITERS": 3000,
                "TIED_EMBED_LR": 0.03, "MATRIX_LR": 0.02, "SCALAR_LR": 0.02, "MUON_MOMENTUM": 0.99, **SMALL},
               SMALL, REFERENCE_SETUP, REFERENCE_STEP, NS_FP32_REFERENCE, forward_is_the_records=True),
        Record("smeargate_orthoinit_muonwd", "R15_smeargate_orthoinit_muonwd/train_gpt_v5.py", SMALL, SMALL,
               REFERENCE_SETUP, REFERENCE_STEP, NS_FP32_REFERENCE,
               renames={"bigram.table.weight": "bigram_hash.table.weight", "bigram.proj.weight": "bigram_hash.proj.weight",
                        "smear.gate": "smeargate.gate"}),
        Record("xsa_swiglu_lora_ttt_1xh100", "PR1090_xsa_swiglu_lora_ttt_1xh100/train_gpt.py",
               {"MAX_WALLCLOCK_SECONDS": 4850, "TRAIN_BATCH_TOKENS": 524288, "WARMDOWN_ITERS": 3000, "MUON_WD": 0.04,
                "TRAIN_SEQ_LEN": 2048, "MLP_MULT": 3, "MATRIX_LR": 0.04, "SCALAR_LR": 0.04, **SMALL},
               {**SMALL, "MLP_HIDDEN": (2 * WIDTH + 63) // 64 * 64},  # the record's int(2 * 3 * d / 3), rounded up to 64
               REFERENCE_SETUP, REFERENCE_STEP, NS_FP32_REFERENCE),
        Record("leakyrelu_ttt_parallel_muon", "R22_leakyrelu_ttt_parallel_muon/train_gpt.py",
               {"NUM_LAYERS": 11, "BIGRAM_VOCAB_SIZE": 1536, "XSA_LAST_N": 4, "EMA_ENABLED": 1, "EMA_DECAY": 0.997,
                "SWA_ENABLED": 1, "SWA_EVERY": 50, "ROPE_DIMS": 16, "LN_SCALE": 1, "LATE_QAT": 1,
                "LATE_QAT_THRESHOLD": 0.15, "VE_ENABLED": 1, "VE_DIM": 128, "VE_LAYERS": "9,10", "TTT_ENABLED": 1,
                "MUON_WD": 0.04, "ADAM_WD": 0.04, "MATRIX_LR": 0.025, "SCALAR_LR": 0.025, "TIED_EMBED_LR": 0.035,
                "MUON_MOMENTUM": 0.99, "MUON_MOMENTUM_WARMUP_START": 0.92, "MUON_MOMENTUM_WARMUP_STEPS": 1500,
                "WARMDOWN_ITERS": 3500, "ITERATIONS": 9000, "MAX_WALLCLOCK_SECONDS": 600, "EVAL_STRIDE": 64,
                **R22_SMALL},
               R22_SMALL,
               (("main", "CastedLinear._qat_enabled = args.qat_enabled", "n_params = sum("),
                ("main", "def zero_grad_all", None)),
               REFERENCE_STEP, NS_FP32_BANKED, ema_setup=("main", "ema_state = {", "training_time_ms = 0.0"),
               fp32_grads=FP32_GRADS_BANKED, banks=True,
               renames={"bigram.table.weight": "bigram.embed.weight", "ve_shared.table.weight": "ve_shared.embed.weight"}),
        Record("sp8192_recur_parres_ttt", "R35_sp8192_recur_parres_ttt/train_gpt.decompressed.py",
               {"QK_GAIN_INIT": 5.25, "TTT_ENABLED": 1, "TTT_LR": 0.005, "TTT_EPOCHS": 3, **LOOPED_SMALL,
                "EMBEDDING_DIM": WIDTH, "PARALLEL_RESIDUAL_START": 2},
               {**LOOPED_SMALL, "PARALLEL_RESIDUAL_START": 2},
               (("train_model", "base_model=GPT(h)", "compiled_model="),
                ("train_model", "optimizers=Optimizers(h,base_model)", "train_loader=")),
               ("train_model", "if h.num_loops>0 and not base_model.looping_active", "step+=1"), NS_FP32_R35,
               step_fn=("step_fn", "optimizers.zero_grad_all()", "return train_loss"),
               ema_setup=("train_model", "ema_state=", "training_time_ms="), source_fixes=R35_FIX_312,
               forward_is_the_records=True),
        Record("sp8192_lqer_sparsegate_bossmear", "R44_sp8192_lqer_sparsegate_bossmear/train_gpt.py",
               {"VOCAB_SIZE": 8192, "CASEOPS_ENABLED": 1, "ITERATIONS": 20000, "MAX_WALLCLOCK_SECONDS": 600,
                "PHASED_TTT_ENABLED": 1, "PHASED_TTT_PREFIX_DOCS": 2500, "PHASED_TTT_NUM_PHASES": 3, "EMBED_BITS": 7,
                "MATRIX_LR": 0.026, "MIN_LR": 0.1, "GRAD_CLIP_NORM": 0.3, "TTT_CHUNK_SIZE": 48, "WARMUP_STEPS": 20,
                "MUON_BACKEND_STEPS": 5, "GLOBAL_TTT_MOMENTUM": 0.9, "WARMDOWN_FRAC": 0.85, "BETA2": 0.99,
                "TTT_BETA2": 0.99, "TTT_WEIGHT_DECAY": 0.5, "TTT_LORA_RANK": 80, "SPARSE_ATTN_GATE_SCALE": 0.5,
                "GPTQ_RESERVE_SECONDS": 0.5, "GPTQ_CALIBRATION_BATCHES": 16, "VAL_LOSS_EVERY": 0,
                "GATED_ATTN_QUANT_GATE": 1, "SPARSE_ATTN_GATE_ENABLED": 1, "GATE_WINDOW": 12, "SMEAR_GATE_ENABLED": 1,
                "LQER_ENABLED": 1, "LQER_ASYM_ENABLED": 1, "LQER_RANK": 4, "LQER_FACTOR_BITS": 4, "LQER_ASYM_GROUP": 64,
                "LQER_TOP_K": 3, "FUSED_CE_ENABLED": 1, **LOOPED_SMALL, "PARALLEL_START_LAYER": 2},
               {**LOOPED_SMALL, "PARALLEL_START_LAYER": 2},
               (("train_model", "base_model = GPT(h)", "compiled_model ="),
                ("train_model", "optimizers = Optimizers(h, base_model)", "train_loader ="),
                ("train_model", "_clip_params =", "def step_fn")),
               ("train_model", "if (h.num_loops > 0", "step += 1"), NS_FP32_BANKED,
               step_fn=("step_fn", "train_loss = torch.zeros(", "return train_loss"),
               ema_setup=("train_model", "_live_state =", "training_time_ms ="), fp32_grads=FP32_GRADS_BANKED,
               banks=True, renames={"smear.gate": "smear_gate.weight", "smear.lam": "smear_lambda"}, loader_extras=2),
    )
}


# -- reading a record's script --------------------------------------------------------------

class Source:
    """A script's text and syntax tree, with fast statement text (ast.get_source_segment re-splits
    the whole file on every call)."""

    def __init__(self, text: str):
        self.text, self.tree = text, ast.parse(text)
        self.lines = [line.encode("utf-8") for line in text.splitlines(keepends=True)]

    def segment(self, node: ast.AST, padded: bool = False) -> str:
        """The node's source; ``padded``: its first line indented as its line (tabs in R35), to dedent."""
        first, last = node.lineno - 1, node.end_lineno - 1
        if first == last:
            raw = self.lines[first][node.col_offset:node.end_col_offset]
        else:
            raw = b"".join([self.lines[first][node.col_offset:], *self.lines[first + 1:last],
                            self.lines[last][:node.end_col_offset]])
        line = self.lines[first].decode("utf-8")
        return (line[: len(line) - len(line.lstrip())] if padded else "") + raw.decode("utf-8")


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _statement_lists(node: ast.AST):
    """Every statement list inside ``node``, not entering nested functions (their statements are theirs)."""
    for name in ("body", "orelse", "finalbody", "handlers"):
        body = getattr(node, name, None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            yield body
        for child in body if isinstance(body, list) else ():
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield from _statement_lists(child)


def record_statements(module: types.ModuleType, function: str, first: str, stop: str | None) -> str:
    """The statements of ``function`` (at any depth) from the one that starts with ``first`` up to the
    one that starts with ``stop`` (just that one statement when ``stop`` is None), as source to exec.
    Words are compared without whitespace; ``first`` must start exactly one statement."""
    source = module.__source__
    fn = next(n for n in ast.walk(source.tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    found = []
    for body in _statement_lists(fn):
        texts = [_squeezed(source.segment(s)) for s in body]
        found += [(body, texts, i) for i, t in enumerate(texts) if t.startswith(_squeezed(first))]
    assert len(found) == 1, f"{function}: {len(found)} statements start with {first!r}"
    body, texts, i = found[0]
    j = i + 1 if stop is None else next(k for k in range(i + 1, len(texts)) if texts[k].startswith(_squeezed(stop)))
    return "\n".join(textwrap.dedent(source.segment(s, padded=True)) for s in body[i:j])


def redefine(module: types.ModuleType, name: str, substitutions) -> None:
    """Re-execute a top-level function or class of the script with text substitutions (no decorators)."""
    source = module.__source__
    node = next(n for n in source.tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
    text = source.segment(node)
    for old, new in substitutions:
        assert old in text, f"{name}: {old!r} not found"
        text = text.replace(old, new)
    exec(compile(text, module.__file__, "exec"), module.__dict__)


def flash_attn_stand_in() -> types.ModuleType:
    """``flash_attn_interface`` for CPU: FA3's (B, T, H, D) layout through SDPA, GQA included."""
    module = types.ModuleType("flash_attn_interface")

    def flash_attn_func(q, k, v, causal=True, **_):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k.size(1) != q.size(1))
        return y.transpose(1, 2)

    module.flash_attn_func = module.flash_attn_varlen_func = flash_attn_func
    return module


@contextlib.contextmanager
def environment(values: dict):
    """The record's env vars set, and the name-pattern overrides and ranks it would read cleared."""
    keys = set(values) | {"CONTROL_TENSOR_NAME_PATTERNS", "INT8_KEEP_FLOAT_FP32_NAME_PATTERNS", "RANK", "WORLD_SIZE"}
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys - set(values):
        os.environ.pop(k, None)
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def import_record(rec: Record, fp32_ns: bool = True, fp32_grads: bool = False) -> types.ModuleType:
    """The record's script as a fresh module (its Hyperparameters read the env at import); ``fp32_ns``:
    its Newton-Schulz in fp32; ``fp32_grads``: its Muon's bf16 gradient cast made fp32."""
    path = ORACLES / rec.script
    if not path.is_file():
        pytest.skip(f"record script {rec.script} not found under {ORACLES} (set PGOLF_ORACLES)")
    text = path.read_text(encoding="utf-8")
    for old, new in rec.source_fixes:  # R35 uses Python 3.12 f-strings (nested quotes)
        assert old in text, f"{rec.script}: {old!r} not found"
        text = text.replace(old, new)
    module = types.ModuleType(f"record_{rec.preset}")
    module.__file__, module.__source__ = str(path), Source(text)
    saved = sys.modules.get("flash_attn_interface")
    sys.modules["flash_attn_interface"] = flash_attn_stand_in()
    try:
        with environment(rec.env):
            exec(compile(text, str(path), "exec"), module.__dict__)
    finally:
        if saved is None:
            sys.modules.pop("flash_attn_interface", None)
        else:
            sys.modules["flash_attn_interface"] = saved
    for name, substitutions in (rec.fp32 if fp32_ns else ()) + (rec.fp32_grads if fp32_grads else ()):
        redefine(module, name, substitutions)
    return module


# -- the two sides --------------------------------------------------------------------------

class GradientProbe:
    """Stands in for the model: its loss ``sum(p * g)`` has exactly the gradients ``g``, so both sides'
    own step (zeroing, backward, clip, schedules, update) runs on the same gradients without a forward."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]):
        self.pairs = pairs

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return sum((p * g).sum() for p, g in self.pairs)


class RecordRun:
    """The record's model, optimizers and EMA, stepped by its own statements."""

    def __init__(self, rec: Record, module: types.ModuleType):
        self.rec = rec
        h = module.Hyperparameters()
        h.grad_accum_steps = 1  # one micro-batch (the records' 8 // WORLD_SIZE is a class attribute)
        self.ns = {**module.__dict__, "args": h, "h": h, "device": torch.device("cpu"), "distributed": False,
                   "local_rank": 0, "rank": 0, "world_size": 1, "grad_accum_steps": 1, "grad_scale": 1.0,
                   "log0": lambda *a, **k: None, "log": lambda *a, **k: None}
        parts = [*rec.setup, rec.step, *(p for p in (rec.step_fn, rec.ema_setup) if p)]
        self.code = {part: record_statements(module, *part) for part in parts}
        for part in rec.setup:
            # the model in fp32, as pgolf's on CPU: the records' .bfloat16() (their CUDA dtype policy,
            # pgolf's too) would also round RoPE's inv_freq buffer, which the .float() cannot undo
            exec(self.code[part].replace(".bfloat16()", ".float()"), self.ns)
        self.model = self.ns["base_model"].float()
        if rec.step_fn:
            self.ns["step_fn"] = self._step_fn

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    def start_ema(self) -> None:
        if self.rec.ema_setup:
            exec(self.code[self.rec.ema_setup], self.ns)

    def ema(self) -> dict[str, torch.Tensor] | None:
        return self.ns.get("ema_state") if self.rec.ema_setup else None

    def step(self, step: int, scale: float, frac: float, model, batch) -> None:
        """The loop body from the LR scale on (R35 / R44: from the recurrence switch), one micro-batch."""
        batch = (*batch, *[None] * self.rec.loader_extras)
        self.ns.update(step=step, scale=scale, frac=frac, lr_mul=lambda *_: scale, elapsed_ms=0.0, model=model,
                       train_loader=SimpleNamespace(next_batch=lambda *_: batch))
        exec(self.code[self.rec.step], self.ns)

    def _step_fn(self, step, lr_scale):
        self.ns.update(step=step, lr_scale=lr_scale)
        exec(self.code[self.rec.step_fn], self.ns)
        return self.ns["train_loss"]


class PgolfRun:
    """The preset's model and optimizers, stepped by the training loop's own ``train_step``."""

    def __init__(self, rec: Record, ns_dtype: torch.dtype, grad_dtype_fp32: bool = False, overrides: dict | None = None):
        cfg = PRESETS[rec.preset]()
        for key, value in {**rec.pgolf_shape, **(overrides or {})}.items():
            set_value(cfg, key, str(value))
        cfg.train.device, cfg.train.grad_accum_steps = "cpu", 1
        validate(cfg)
        self.cfg = cfg
        self.model = build_model(cfg.model, "cpu")
        self.opts = build_optimizers(self.model, cfg.optim, cfg.model.tie_embeddings)
        self.opts.muon.ns_dtype = ns_dtype  # the reference's bf16, or the test's fp32
        if grad_dtype_fp32:
            self.opts.muon.grad_dtype = None
        self.averager = None
        self.session = SimpleNamespace(cfg=cfg, opts=self.opts, model=self.model, grad_sync=None, grad_accum_steps=1,
                                       rt=SimpleNamespace(distributed=False, device=torch.device("cpu"), world_size=1),
                                       run=SimpleNamespace(log=lambda *a, **k: None))

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    def start_ema(self) -> None:
        self.initial = {n: p.detach().clone() for n, p in self.params().items()}
        t = self.cfg.train
        self.averager = build_averager(t.ema_decay, t.swa_enabled, t.swa_every, t.swa_start_frac, self.model)

    def ema(self) -> dict[str, torch.Tensor] | None:
        return getattr(self.averager, "shadow", None)

    def step(self, step: int, scale: float, frac: float, model, batch) -> None:
        """train_step on one micro-batch, then the averager, as run_training does."""
        self.session.step_model = model
        self.session.loader = SimpleNamespace(next_batch=lambda *_: batch)
        train_step(self.session, scale, step, frac)
        if self.averager is not None:
            self.averager.update(self.model, step + 1, scale)


# -- where each pgolf tensor lives in the record --------------------------------------------

@dataclass(frozen=True)
class Link:
    """``record[rec_name][rec_index]`` holds ``pgolf[pg_name][pg_index]``."""

    pg_name: str
    pg_index: object
    rec_name: str
    rec_index: object

    def pg(self, tensors: dict) -> torch.Tensor:
        return tensors[self.pg_name][self.pg_index]

    def rec(self, tensors: dict) -> torch.Tensor:
        return tensors[self.rec_name][self.rec_index]


BANKS = {  # pgolf per-layer name -> (bank, offset in units of num_layers), as R22/R44 bank them
    "attn.c_q.weight": ("qo_bank", 0), "attn.proj.weight": ("qo_bank", 1),
    "attn.c_k.weight": ("kv_bank", 0), "attn.c_v.weight": ("kv_bank", 1),
    "mlp.fc.weight": ("mlp_up_bank", 0), "mlp.proj.weight": ("mlp_down_bank", 0),
}


def links_for(rec: Record, pg_params: dict, rec_params: dict, num_layers: int) -> list[Link]:
    links = []
    for name, p in pg_params.items():
        layer, _, rest = name.removeprefix("blocks.").partition(".")
        if rec.banks and name.startswith("blocks.") and rest in BANKS:
            bank, offset = BANKS[rest]
            links.append(Link(name, ..., bank, offset * num_layers + int(layer)))
        elif name.startswith("blocks.") and rest == "mlp.fc.weight" and f"blocks.{layer}.mlp.gate.weight" in rec_params:
            half = p.shape[0] // 2  # pgolf's fused SwiGLU fc: gate rows, then up rows
            links.append(Link(name, slice(0, half), f"blocks.{layer}.mlp.gate.weight", ...))
            links.append(Link(name, slice(half, None), f"blocks.{layer}.mlp.up.weight", ...))
        elif name == "ve_layer_scales" and "ve_layer_scales.0" in rec_params:  # R22: one (1,) tensor per layer
            links += [Link(name, slice(i, i + 1), f"ve_layer_scales.{i}", ...) for i in range(p.numel())]
        else:
            links.append(Link(name, ..., rec.renames.get(name, name), ...))
    return links


def check_links_cover(links: list[Link], pg_params: dict, rec_params: dict) -> None:
    """Every element of both models is linked exactly once, with matching shapes."""
    for link in links:
        assert link.rec_name in rec_params, f"{link.pg_name}: the record has no {link.rec_name}"
        assert link.pg(pg_params).shape == link.rec(rec_params).shape, link
    for params, side in ((pg_params, "pg"), (rec_params, "rec")):
        counted: dict[str, int] = {}
        for link in links:
            name = link.pg_name if side == "pg" else link.rec_name
            counted[name] = counted.get(name, 0) + getattr(link, side)(params).numel()
        assert counted == {n: p.numel() for n, p in params.items()}, f"{side}: parameters not linked exactly once"


@torch.no_grad()
def copy_weights(links, pg_params, rec_params) -> None:
    for link in links:
        link.rec(rec_params).copy_(link.pg(pg_params))


def probes(links, pg_params, rec_params, step: int, stds) -> tuple[GradientProbe, GradientProbe]:
    """The same random gradients for pgolf and, part by part, for the record."""
    gen = torch.Generator().manual_seed(1000 + step)
    grads = {n: torch.randn(p.shape, generator=gen) * stds[step] for n, p in pg_params.items()}
    pgolf = GradientProbe([(p, grads[n]) for n, p in pg_params.items()])
    record = GradientProbe([(link.rec(rec_params), link.pg(grads)) for link in links])
    return pgolf, record


def relative_differences(links, pg: dict, rec: dict, norm: str = "max") -> dict[str, float]:
    """Per pgolf tensor, over its linked parts: max |pgolf - record| / max |record| (``max``), or
    ||pgolf - record|| / ||record|| (``frobenius``)."""
    out: dict[str, float] = {}
    for link in links:
        a, b = link.pg(pg).detach().double(), link.rec(rec).detach().double()
        if norm == "max":
            diff, scale = (a - b).abs().max().item(), max(b.abs().max().item(), a.abs().max().item())
        else:
            diff, scale = (a - b).norm().item(), max(b.norm().item(), a.norm().item())
        out[link.pg_name] = max(out.get(link.pg_name, 0.0), diff / max(scale, 1e-30))
    return out


class _NoStream:
    """R44 steps Adam on a side CUDA stream; on CPU there is none."""

    def wait_stream(self, other):
        pass


def _no_compile(model=None, **_):
    """``torch.compile`` as the identity: the records compile their model and Newton-Schulz (both
    unused or redefined here), and importing the compiler alone takes seconds."""
    return model if model is not None else (lambda fn: fn)


@pytest.fixture()
def cpu_only(monkeypatch):
    """No compiler, no CUDA streams, one thread: these matrices are small, and two threads on a
    busy 2-core machine spend most of each matmul waiting for each other (100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(torch, "compile", _no_compile)
    monkeypatch.setattr(torch.cuda, "Stream", _NoStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _NoStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    yield
    torch.set_num_threads(threads)


def start_both(preset: str, fp32_ns: bool, fp32_grads: bool, overrides: dict | None = None):
    """pgolf's preset (with ``overrides``) and the record, the record holding pgolf's initial weights, EMAs started."""
    rec = RECORDS[preset]
    module = import_record(rec, fp32_ns=fp32_ns, fp32_grads=fp32_grads)
    torch.manual_seed(0)
    pgolf = PgolfRun(rec, torch.float32 if fp32_ns else torch.bfloat16, grad_dtype_fp32=fp32_grads, overrides=overrides)
    record = RecordRun(rec, module)
    pg_params, rec_params = pgolf.params(), record.params()
    links = links_for(rec, pg_params, rec_params, pgolf.cfg.model.num_layers)
    check_links_cover(links, pg_params, rec_params)
    copy_weights(links, pg_params, rec_params)
    pgolf.start_ema()
    record.start_ema()
    return links, pgolf, record


def run_both(preset: str, stds=GRAD_STDS, fp32_ns: bool = True, fp32_grads: bool = True, overrides: dict | None = None):
    """STEPS steps of the same gradients on both sides. ``fp32_grads`` makes R22 / R44's bf16 gradient
    cast fp32 on both sides: with a binding clip the two sides' clip factors differ in the last bit
    (their norms add up in another order), and a bf16 cast turns that into another rounding of some
    elements."""
    links, pgolf, record = start_both(preset, fp32_ns, fp32_grads, overrides)
    pg_params, rec_params = pgolf.params(), record.params()
    dummy = (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
    for step in range(STEPS):
        pg_probe, rec_probe = probes(links, pg_params, rec_params, step, stds)
        pgolf.step(step, LR_SCALES[step], FRACS[step], pg_probe, dummy)
        record.step(step, LR_SCALES[step], FRACS[step], rec_probe, dummy)
    return links, pgolf, record


def assert_same_weights_and_ema(preset: str, links, pgolf: PgolfRun, record: RecordRun, norm: str = "max") -> None:
    trained = {id(p) for opt in pgolf.opts.all for g in opt.param_groups for p in g["params"]}
    still = [n for n, p in pgolf.params().items() if id(p) in trained and torch.equal(p, pgolf.initial[n])]
    assert not still, f"{preset}: the steps left {still} as they started (the gradients did not arrive)"
    diffs = relative_differences(links, pgolf.params(), record.params(), norm)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < TOLERANCE, f"{preset}: {worst} differs by {diffs[worst]:.2e} relative after {STEPS} steps"
    assert (pgolf.ema() is None) == (record.ema() is None), f"{preset}: EMA on one side only"
    if record.ema() is not None:
        ema_diffs = relative_differences(links, pgolf.ema(), record.ema(), norm)
        worst = max(ema_diffs, key=ema_diffs.get)
        assert ema_diffs[worst] < TOLERANCE, f"{preset}: EMA of {worst} differs by {ema_diffs[worst]:.2e}"


@pytest.mark.parametrize("preset", list(RECORDS))
def test_three_steps_match_the_record(preset, cpu_only):
    """fp32 Newton-Schulz, a clip that binds at two of the three steps (see run_both for R22 / R44)."""
    assert_same_weights_and_ema(preset, *run_both(preset, GRAD_STDS, fp32_ns=True, fp32_grads=True))


@pytest.mark.parametrize("preset", list(RECORDS))
def test_unpatched_records_match_in_bf16(preset, cpu_only):
    """The records' code exactly as it runs (bf16 Newton-Schulz and update buffers, R22 / R44's bf16
    gradients and momentum), gradients the clip leaves alone: pgolf rounds where and as the record
    does (R22 / R44: the momentum, ``c * (A @ A)``, the Muon scale folded into the step size)."""
    assert_same_weights_and_ema(preset, *run_both(preset, UNCLIPPED_STDS, fp32_ns=False, fp32_grads=False))


def test_plain_muon_with_bf16_momentum_matches_r44(cpu_only):
    """PGOLF_MUON_MOMENTUM_BF16 without Parallel Muon: plain Muon's bf16 momentum is R44's too (fp32
    Newton-Schulz; plain Muon rounds ``(c * A) @ A`` where R44 rounds ``c * (A @ A)``, ~3e-6 apart)."""
    preset = "sp8192_lqer_sparsegate_bossmear"
    links, pgolf, record = run_both(preset, UNCLIPPED_STDS, fp32_ns=True, fp32_grads=False,
                                    overrides={"PGOLF_PARALLEL_MUON": 0, "PGOLF_GRAD_CLIP_LOCAL": 0,  # its torchrun-only
                                               "PGOLF_MUON_KEEP_WARMUP_MOMENTUM": 0})  # switches need Parallel Muon
    assert type(pgolf.opts.muon).__name__ == "Muon" and pgolf.opts.muon.grad_dtype == torch.bfloat16
    assert_same_weights_and_ema(preset, links, pgolf, record)


def batch(vocab_size: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + step)
    tokens = torch.randint(0, vocab_size, (2, 65), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("preset", [p for p, r in RECORDS.items() if r.forward_is_the_records])
def test_full_step_matches_the_record(preset, cpu_only):
    """Forward, backward and update on both sides from the same weights and tokens: the step's own
    order of schedule switches (R35's recurrence), loss and update. Compared by Frobenius norm: the
    two forwards round differently in the last bit (RoPE's terms, for one), which Adam's
    per-element normalisation lifts to ~1e-5 of the largest entry where gradients are tiny."""
    links, pgolf, record = start_both(preset, fp32_ns=True, fp32_grads=True)
    for step in range(STEPS):
        tokens = batch(pgolf.cfg.model.vocab_size, step)
        pgolf.step(step, LR_SCALES[step], FRACS[step], pgolf.model, tokens)
        record.step(step, LR_SCALES[step], FRACS[step], record.model, tokens)
    assert_same_weights_and_ema(preset, links, pgolf, record, norm="frobenius")


def test_swa_snapshots_and_average_are_pr1090s(cpu_only):
    """PR #1090's SWA (its main(): every 200 steps from the estimated warm-down start, after step 100,
    applied with more than one snapshot) against the preset's (every SWA_EVERY steps while the LR scale
    is below SWA_START_FRAC) over its 4,850 s run at 600 ms a step, the weights set to the step number.
    The two rules can part by one snapshot when the warm-down starts exactly on a multiple of 200 (the
    record tests ``step >= start``, the LR scale turns below 1 one step later); 600 ms is not such a case."""
    rec = RECORDS["xsa_swiglu_lora_ttt_1xh100"]
    module = import_record(rec)
    cfg = PRESETS[rec.preset]()
    t = cfg.train
    step_ms, cap_ms = 600.0, 1000.0 * t.max_wallclock_seconds
    record_model, pgolf_model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ns = {**module.__dict__, "args": module.Hyperparameters(), "base_model": record_model, "max_wallclock_ms": cap_ms,
          "log0": lambda *a, **k: None}
    collect = record_statements(module, "main", "_swa_every = 200", "reached_cap =")
    apply = record_statements(module, "main", "if hasattr(base_model, '_swa_state')", None)
    averager = build_averager(t.ema_decay, t.swa_enabled, t.swa_every, t.swa_start_frac, pgolf_model)
    step = 0
    while step * step_ms < cap_ms:  # both stop after the step that reaches the cap
        scale = lr_scale(step, step * step_ms, t.iterations, t.warmdown_iters, cap_ms, t.warmdown_frac, t.min_lr)
        step += 1
        with torch.no_grad():
            for model in (record_model, pgolf_model):
                for p in model.parameters():
                    p.fill_(float(step))
        ns.update(step=step, approx_training_time_ms=step * step_ms)
        exec(collect, ns)
        averager.update(pgolf_model, step, scale)
    assert record_model._swa_count == averager.count > 1
    exec(apply, ns)
    averaged = averager.averaged_state(pgolf_model)
    for name, value in record_model.state_dict().items():
        assert torch.equal(averaged[name], value), name
