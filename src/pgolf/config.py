"""The one configuration schema: typed sections, the reference's environment variable names, overrides.

Every field of every section carries the environment variable name the reference ``train_gpt.py``
(and the records built on it) reads, so a record's command line such as
``NUM_LAYERS=11 TRAIN_SEQ_LEN=2048 pgolf train --preset baseline`` means what it meant there.
Resolution order, later wins: preset defaults, then environment variables, then ``--set`` overrides
(``--set model.num_layers=11`` or ``--set NUM_LAYERS=11``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from pgolf.errors import PgolfError


def _f(default: Any, env: str | None, help: str, check: tuple[str, ...] | str | None = None) -> Any:
    """A field: its default, reference env name, help, and ``check`` (the values it may take on its
    own: a tuple of choices or a rule of :data:`RULES`; checks across fields live in :func:`validate`)."""
    return field(default=default, metadata={"env": env, "help": help, "check": check})


# The rules a numeric field's ``check`` may name; the key is also the error message's wording.
RULES = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in 1..65536": lambda v: 1 <= v <= 65536,
    "in 2..8": lambda v: 2 <= v <= 8,
    "in 0..65535": lambda v: 0 <= v <= 65535,
    "in 0..2**32-1": lambda v: 0 <= v < 2**32,  # what numpy's seed accepts
    ">= -1": lambda v: v >= -1,
    "finite": math.isfinite,
}
POS, NONNEG, UNIT, MOMENTUM, FINITE = "> 0", ">= 0", "in [0, 1]", "in [0, 1)", "finite"
TOKEN_ID, SEED_RANGE = "in 0..65535", "in 0..2**32-1"


@dataclass
class DataConfig:
    data_path: str = _f("./data/datasets/fineweb10B_sp1024", "DATA_PATH", "folder with fineweb_{train,val}_*.bin shards")
    tokenizer_path: str = _f("./data/tokenizers/fineweb_1024_bpe.model", "TOKENIZER_PATH", "SentencePiece .model file")
    train_files: str = _f("", "TRAIN_FILES", "train shard glob; empty means DATA_PATH/fineweb_train_*.bin")
    val_files: str = _f("", "VAL_FILES", "val shard glob; empty means DATA_PATH/fineweb_val_*.bin")

    def train_glob(self) -> str:
        return self.train_files or os.path.join(self.data_path, "fineweb_train_*.bin")

    def val_glob(self) -> str:
        return self.val_files or os.path.join(self.data_path, "fineweb_val_*.bin")


@dataclass
class ModelConfig:
    vocab_size: int = _f(1024, "VOCAB_SIZE", "vocabulary size; must equal the tokenizer's", "in 1..65536")
    num_layers: int = _f(9, "NUM_LAYERS", "transformer blocks (first half encoder, second half decoder with U-Net skips)", POS)
    model_dim: int = _f(512, "MODEL_DIM", "residual width", POS)
    num_heads: int = _f(8, "NUM_HEADS", "query heads", POS)
    num_kv_heads: int = _f(4, "NUM_KV_HEADS", "key/value heads (GQA)", POS)
    mlp_mult: int = _f(2, "MLP_MULT", "MLP hidden size as a multiple of model_dim", NONNEG)
    tie_embeddings: bool = _f(True, "TIE_EMBEDDINGS", "share the token embedding with the output head")
    tied_embed_init_std: float = _f(0.005, "TIED_EMBED_INIT_STD", "init std of the tied embedding", NONNEG)
    logit_softcap: float = _f(30.0, "LOGIT_SOFTCAP", "logits = c * tanh(logits / c)", POS)
    rope_base: float = _f(10000.0, "ROPE_BASE", "RoPE base frequency", POS)
    qk_gain_init: float = _f(1.5, "QK_GAIN_INIT", "initial per-head gain on normalized queries", FINITE)
    # Record techniques (architecture). Every default is off: the reference model, bit for bit.
    # The sources (record ids and PRs of /work/shared/docs/challenge.md sec. 2.1) are in the
    # docstrings of the modules that implement them, under pgolf/model/.
    mlp_hidden: int = _f(0, "MLP_HIDDEN", "explicit MLP hidden size; 0 means mlp_mult * model_dim", NONNEG)
    mlp_activation: str = _f("relu2", "MLP_ACTIVATION", "relu2 (reference), leaky_relu2 (R22) or swiglu", ("relu2", "leaky_relu2", "swiglu"))
    negative_slope: float = _f(0.5, "NEGATIVE_SLOPE", "LeakyReLU slope of the leaky_relu2 activation", NONNEG)
    xsa_last_n: int = _f(0, "XSA_LAST_N", "exclusive self-attention on the last N layers (R17); >= NUM_LAYERS means all", NONNEG)
    rope_dims: int = _f(0, "ROPE_DIMS", "rotate only the first k dims of each head (partial RoPE, R20); 0 means all", NONNEG)
    rope_yarn: bool = _f(False, "ROPE_YARN", "NTK base rescale base*s^(d/(d-2)) when seq > ROPE_TRAIN_SEQ_LEN")
    rope_train_seq_len: int = _f(1024, "ROPE_TRAIN_SEQ_LEN", "sequence length RoPE was trained at (for ROPE_YARN)", POS)
    ln_scale: bool = _f(False, "LN_SCALE", "scale the normed block inputs by 1/sqrt(layer+1) (R20)")
    use_smeargate: bool = _f(False, "USE_SMEARGATE", "SmearGate v1: per-dim blend with the previous embedding (R15)")
    smear_gate_enabled: bool = _f(False, "SMEAR_GATE_ENABLED", "SmearGate v2: x_t += lam*sig(W x_t[:w]) x_{t-1} (R39)")
    smear_bos_fix: bool = _f(False, "SMEAR_BOS_FIX", "no smearing into a BOS token (R45): documents stay separate")
    gate_window: int = _f(12, "GATE_WINDOW", "input width of the x[:w] gates (SmearGate v2, attention gates)", NONNEG)
    bos_id: int = _f(1, "BOS_ID", "token id that starts a document (BOS fixes, document-isolated attention)", TOKEN_ID)
    bigram_vocab_size: int = _f(0, "BIGRAM_VOCAB_SIZE", "BigramHash buckets (R15/R19); 0 disables", NONNEG)
    bigram_dim: int = _f(128, "BIGRAM_DIM", "BigramHash table width, projected to model_dim", POS)
    bigram_hash: str = _f("xor", "BIGRAM_HASH", "xor: (36313 cur ^ 27191 prev) mod (B-1) (R19+); mul: (92821 prev + cur) mod B (R15)", ("xor", "mul"))
    bigram_scale: float = _f(0.05, "BIGRAM_SCALE", "initial value of the learned BigramHash output scale", FINITE)
    bigram_init_std: float = _f(0.0, "BIGRAM_INIT_STD", "BigramHash table init std; 0 means zeros", NONNEG)
    bigram_bos_fix: bool = _f(False, "BIGRAM_BOS_FIX", "hash a BOS token as a first position (no pair across documents)")
    ve_enabled: bool = _f(False, "VE_ENABLED", "value embeddings added to V on VE_LAYERS (R21)")
    ve_dim: int = _f(128, "VE_DIM", "value-embedding table width", POS)
    ve_layers: str = _f("", "VE_LAYERS", "comma-separated layer indices for value embeddings; empty means the last two")
    value_residual: bool = _f(False, "VALUE_RESIDUAL", "v = l0*v_first_layer + l1*v, lambdas init 0.5 (R22)")
    doc_isolated_attention: bool = _f(False, "DOC_ISOLATED_ATTENTION", "no attention across BOS boundaries (block-diagonal causal mask)")
    max_doc_len: int = _f(0, "PGOLF_MAX_DOC_LEN", "with DOC_ISOLATED_ATTENTION, also cut attention every N tokens from a document's start (R44's packed rows, PGOLF_LOADER=doc_packed: TRAIN_SEQ_LEN); 0: only at BOS", NONNEG)
    num_loops: int = _f(0, "NUM_LOOPS", "depth recurrence: extra passes over layers LOOP_START..LOOP_END (R26/R35)", NONNEG)
    loop_start: int = _f(3, "LOOP_START", "first layer of the looped range", NONNEG)
    loop_end: int = _f(5, "LOOP_END", "last layer of the looped range (inclusive)", NONNEG)
    parallel_start_layer: int = _f(0, "PARALLEL_START_LAYER", "two-lane parallel residuals from this layer (R26/R44); 0 disables", NONNEG)
    parallel_final_lane: str = _f("mean", "PARALLEL_FINAL_LANE", "final hidden of the two lanes: mean, attn (lane 0) or mlp (lane 1)", ("mean", "attn", "mlp"))
    gptj_parallel: bool = _f(False, "GPTJ_PARALLEL", "GPT-J block: x + attn(n(x)) + mlp(n(x)) (R31)")
    parallel_residual_start: int = _f(-1, "PARALLEL_RESIDUAL_START", "GPT-J blocks from this layer on (R35: 7); -1 disables (GPTJ_PARALLEL=1: every layer)", ">= -1")
    smear_gate_weighs: str = _f("current", "PGOLF_SMEAR_GATE_WEIGHS", "the token SmearGate v1's sig(g) weighs: current "
                                "(R15: sig(g) x_t + (1-sig(g)) x_{t-1}) or previous (R22, PR #1090: (1-sig(g)) x_t + sig(g) x_{t-1})",
                                ("current", "previous"))
    smear_gate_init: float = _f(3.0, "PGOLF_SMEAR_GATE_INIT", "SmearGate v1 initial gate logit g: 3.0 (R15) or 0.0 (R22, an even blend at start)", FINITE)
    smear_after_norm: bool = _f(False, "PGOLF_SMEAR_AFTER_NORM", "SmearGate on the normed embedding (R22, PR #1090) instead of before the norm (R15, R44)")
    attn_out_gate_enabled: bool = _f(False, "ATTN_OUT_GATE_ENABLED", "per-head y *= 2 sig(W x[:w]), W zero-init (R39)")
    gated_attn_enabled: bool = _f(False, "GATED_ATTN_ENABLED", "per-head y *= sig(W_g x) (R41, Qwen G1)")
    gated_attn_init_std: float = _f(0.01, "GATED_ATTN_INIT_STD", "init std of the gated-attention W_g", NONNEG)
    sparse_attn_gate_enabled: bool = _f(False, "SPARSE_ATTN_GATE_ENABLED", "per-head y *= sig(s W x[:w]), W zero-init (R43)")
    sparse_attn_gate_scale: float = _f(1.0, "SPARSE_ATTN_GATE_SCALE", "the scale s of the sparse attention gate", FINITE)
    skip_gates_enabled: bool = _f(False, "SKIP_GATES_ENABLED", "sigmoid-gated U-Net skips x = lerp(w*skip, x, sig(g)) (R27)")
    logit_softcap_kind: str = _f("tanh", "SOFTCAP_TYPE", "tanh (reference) or poly (odd degree-5 polynomial cap, R23)", ("tanh", "poly"))
    z_loss: float = _f(0.0, "Z_LOSS", "weight of the z-loss mean(logsumexp^2) added to the training loss (R23)", NONNEG)
    ortho_init: bool = _f(False, "ORTHO_INIT", "orthogonal init of matrices, output projections scaled 1/sqrt(2L) (R15/R19)")
    overtone_init: bool = _f(False, "OVERTONE_INIT", "token embedding with a k^-0.5 singular-value spectrum (R11)")
    embed_dim: int = _f(0, "EMBED_DIM", "factored tied embedding (R23: 254): vocab x k table and a k -> MODEL_DIM projection; 0 or MODEL_DIM: unfactored", NONNEG)
    embed_proj_shared: bool = _f(
        False, "PGOLF_EMBED_PROJ_SHARED",
        "with EMBED_DIM: the tied head reads through the input projection transposed (V*k + k*d) instead of R23's own d -> k projection",
    )

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def hidden_size(self) -> int:
        """MLP hidden width: MLP_HIDDEN when set, else MLP_MULT * MODEL_DIM."""
        return self.mlp_hidden or self.mlp_mult * self.model_dim


@dataclass
class OptimConfig:
    embed_lr: float = _f(0.6, "EMBED_LR", "Adam LR of an untied token embedding", NONNEG)
    head_lr: float = _f(0.008, "HEAD_LR", "Adam LR of an untied lm_head", NONNEG)
    tied_embed_lr: float = _f(0.05, "TIED_EMBED_LR", "Adam LR of the tied embedding", NONNEG)
    matrix_lr: float = _f(0.04, "MATRIX_LR", "Muon LR of block matrices", NONNEG)
    scalar_lr: float = _f(0.04, "SCALAR_LR", "Adam LR of vectors, scalars and control tensors", NONNEG)
    muon_momentum: float = _f(0.95, "MUON_MOMENTUM", "Muon momentum after warm-up", MOMENTUM)
    muon_backend_steps: int = _f(5, "MUON_BACKEND_STEPS", "Newton-Schulz iterations", POS)
    muon_momentum_warmup_start: float = _f(0.85, "MUON_MOMENTUM_WARMUP_START", "Muon momentum at step 0", MOMENTUM)
    muon_momentum_warmup_steps: int = _f(500, "MUON_MOMENTUM_WARMUP_STEPS", "steps of linear momentum warm-up", NONNEG)
    beta1: float = _f(0.9, "BETA1", "Adam beta1", MOMENTUM)
    beta2: float = _f(0.95, "BETA2", "Adam beta2", MOMENTUM)
    adam_eps: float = _f(1e-8, "ADAM_EPS", "Adam epsilon", POS)
    grad_clip_norm: float = _f(0.0, "GRAD_CLIP_NORM", "global grad-norm clip; 0 disables (records: 0.3, R09)", NONNEG)
    grad_clip_local: bool = _f(False, "PGOLF_GRAD_CLIP_LOCAL", "several ranks with PGOLF_PARALLEL_MUON: each rank clips its own gradient to GRAD_CLIP_NORM, then the ranks average them, as R22/R44 (the step depends on the number of ranks); off: the average is clipped; one process: the same")
    muon_wd: float = _f(0.0, "MUON_WD", "Muon decoupled weight decay, p *= 1 - lr*wd before the update (R11/R15; 0.095 in R35+)", NONNEG)
    wd_taper_start_frac: float = _f(1.0, "WD_TAPER_START_FRAC", "full MUON_WD until this training fraction, then linear taper (R40: 0.70); 1 disables", UNIT)
    wd_taper_final_mult: float = _f(1.0, "WD_TAPER_FINAL_MULT", "MUON_WD multiplier reached at the end of training (R40: 0.50)", NONNEG)
    muon_row_normalize: bool = _f(False, "MUON_ROW_NORMALIZE", "MuonEq-R: divide each row of the update by its L2 norm before Newton-Schulz (R28)")
    muon_ns_schedule: str = _f("quintic", "PGOLF_MUON_NS_SCHEDULE", "Newton-Schulz coefficients: quintic (reference) or polar_express (R43)", ("quintic", "polar_express"))
    muon_parallel: bool = _f(False, "PGOLF_PARALLEL_MUON", "Parallel Muon (R22): same-shaped matrices banked in the optimizer; multi-rank: no DDP, bank grads reduce-scattered, sharded Newton-Schulz, all-gather; same update")
    muon_keep_warmup_momentum: bool = _f(False, "PGOLF_MUON_KEEP_WARMUP_MOMENTUM", "several ranks with PGOLF_PARALLEL_MUON: the compile warm-up's restore keeps Muon's momentum as its steps left it, as R44 (its sharded momentum lives outside the optimizer state); one process: restored to zero, as R44's")
    muon_momentum_bf16: bool = _f(False, "PGOLF_MUON_MOMENTUM_BF16", "Muon casts each gradient to bf16 and keeps its momentum in bf16, as R22/R44's Parallel Muon (p.grad.bfloat16())")
    table_proj_adam: bool = _f(False, "PGOLF_TABLE_PROJ_ADAM", "BigramHash and value-embedding projections trained by the scalar Adam (SCALAR_LR, ADAM_WD) instead of Muon (R22)")
    smear_frozen: bool = _f(False, "PGOLF_SMEAR_FROZEN", "the SmearGate in no optimizer: it keeps its initial value (PR #1090's script never hands its gate to one)")
    embed_wd: float = _f(0.0, "EMBED_WD", "AdamW decoupled weight decay of the token embedding (R27: 0.085); 0 keeps Adam", NONNEG)
    adam_wd: float = _f(0.0, "ADAM_WD", "AdamW decoupled weight decay of scalars and an untied head (R21: 0.04); 0 keeps Adam", NONNEG)


@dataclass
class TrainConfig:
    seed: int = _f(1337, "SEED", "seed for torch, numpy and random", SEED_RANGE)
    run_id: str = _f("", "RUN_ID", "run directory name; empty means a timestamp plus a short random id")
    iterations: int = _f(20000, "ITERATIONS", "maximum optimizer steps", NONNEG)
    warmdown_iters: int = _f(1200, "WARMDOWN_ITERS", "linear LR warm-down length (in steps, converted to time under a cap)", NONNEG)
    warmdown_frac: float = _f(0.0, "WARMDOWN_FRAC", "warm-down over this last fraction of training (time under a cap), replacing WARMDOWN_ITERS; 0 disables (R24+: 0.72-0.85)", UNIT)
    enable_looping_at: float = _f(0.0, "ENABLE_LOOPING_AT", "training fraction at which depth recurrence (NUM_LOOPS) switches on; 0 = from the start (R35+: 0.35)", UNIT)
    min_lr: float = _f(0.0, "MIN_LR", "floor of the LR scale during the warm-down (R43: 0.10)", UNIT)
    ema_decay: float = _f(0.0, "EMA_DECAY", "EMA of the weights every step, exported and scored (R18: 0.997, R43: 0.9965); 0 disables", "in [0, 1)")
    swa_enabled: bool = _f(False, "SWA_ENABLED", "uniform weight average, exported and scored (R19)")
    swa_every: int = _f(50, "SWA_EVERY", "steps between SWA snapshots", POS)
    swa_start_frac: float = _f(0.5, "SWA_START_FRAC", "snapshot only while the LR scale is below this (R19: 0.5; R21 'tight': 0.2; above 1: from the first step)", NONNEG)
    loader: str = _f("sequential", "PGOLF_LOADER", "training loader: sequential (reference), coprime (R25: coprime walks, 8->64 shards mixed per batch), shuffled (R30) or doc_packed (R44: one packed row per rank micro-step, attention cut at BOS and every PGOLF_MAX_DOC_LEN)", ("sequential", "coprime", "shuffled", "doc_packed"))
    warmup_steps: int = _f(20, "WARMUP_STEPS", "compile warm-up steps, undone afterwards (not an LR warm-up)", NONNEG)
    warmup_skip_batches: int = _f(0, "PGOLF_WARMUP_SKIP_BATCHES", "micro-batches the loader reads and drops before the compile warm-up's steps (R44: 1, the batch its cu_seqlens bucket warm-up runs without stepping); it matters only where the warm-up leaves a trace (PGOLF_MUON_KEEP_WARMUP_MOMENTUM)", NONNEG)
    train_batch_tokens: int = _f(524_288, "TRAIN_BATCH_TOKENS", "tokens per optimizer step, summed over ranks", POS)
    train_seq_len: int = _f(1024, "TRAIN_SEQ_LEN", "training sequence length", POS)
    max_wallclock_seconds: float = _f(600.0, "MAX_WALLCLOCK_SECONDS", "training time cap; 0 disables", NONNEG)
    grad_accum_steps: int = _f(0, "GRAD_ACCUM_STEPS", "micro-steps per step; 0 means 8 // WORLD_SIZE as the reference", NONNEG)
    val_loss_every: int = _f(1000, "VAL_LOSS_EVERY", "validate every N steps; 0 only at the end", NONNEG)
    train_log_every: int = _f(200, "TRAIN_LOG_EVERY", "log train loss every N steps", NONNEG)
    compile: str = _f("auto", "PGOLF_COMPILE", "torch.compile the model: auto (on CUDA only), 1 or 0", ("auto", "0", "1"))
    attn_backend: str = _f("auto", "PGOLF_ATTN_BACKEND", "attention kernel: auto, fa3 or sdpa", ("auto", "fa3", "sdpa"))
    fused_ce: bool = _f(False, "FUSED_CE", "training loss through the fused Triton softcap + cross-entropy kernel (R43; tanh softcap, CUDA)")
    fused_mlp: bool = _f(False, "FUSED_MLP", "training MLP through the fused Triton matmul + relu^2/LeakyReLU^2 kernel (R36; CUDA)")
    device: str = _f("auto", "PGOLF_DEVICE", "auto, cpu or cuda", ("auto", "cpu", "cuda"))


@dataclass
class EvalConfig:
    val_batch_size: int = _f(524_288, "VAL_BATCH_SIZE", "validation tokens per batch, summed over ranks", POS)
    eval_seq_len: int = _f(0, "EVAL_SEQ_LEN", "evaluation window length; 0 means TRAIN_SEQ_LEN", NONNEG)
    val_max_tokens: int = _f(0, "VAL_MAX_TOKENS", "score only the first N val tokens (quick checks); 0 means all", NONNEG)
    eval_stride: int = _f(0, "EVAL_STRIDE", "sliding-window stride for `pgolf eval`; 0 means standard windows only", NONNEG)
    doc_isolated: bool = _f(False, "PGOLF_EVAL_DOC_ISOLATED", "sliding/TTT context restarts at every BOS")
    ttt: str = _f("", "PGOLF_TTT", "score-first test-time training: '' (off), sgd, lora or phased", ("", "sgd", "lora", "phased"))
    ttt_lr: float = _f(0.002, "TTT_LR", "sgd TTT: SGD learning rate (cosine-decayed over chunks)", NONNEG)
    ttt_epochs: int = _f(3, "TTT_EPOCHS", "sgd TTT: epochs over each already-scored chunk", POS)
    ttt_chunk_tokens: int = _f(32_768, "TTT_CHUNK_TOKENS", "sgd TTT: targets per chunk (score chunk, then train on it)", POS)
    ttt_freeze_blocks: int = _f(2, "TTT_FREEZE_BLOCKS", "sgd TTT: the first k blocks stay frozen", NONNEG)
    ttt_momentum: float = _f(0.9, "TTT_MOMENTUM", "sgd TTT: SGD momentum", MOMENTUM)
    ttt_batch_seqs: int = _f(32, "TTT_BATCH_SEQS", "sgd TTT: sequences per training batch", POS)
    ttt_grad_clip: float = _f(1.0, "TTT_GRAD_CLIP", "sgd TTT: grad-norm clip; 0 disables", NONNEG)
    ttt_lora_rank: int = _f(8, "TTT_LORA_RANK", "lora/phased TTT: LoRA rank", POS)
    ttt_lora_lr: float = _f(0.01, "TTT_LORA_LR", "lora/phased TTT: Adam learning rate", NONNEG)
    ttt_lora_targets: str = _f("q,v,head", "PGOLF_TTT_LORA_TARGETS", "lora/phased TTT: adapted modules among q, k, v, o, "
                               "mlp (each reading its block's normed input), head (the final hidden) and logits (the head's "
                               "output, vocab side, R44's)")
    ttt_lora_init: str = _f("identity", "PGOLF_TTT_LORA_INIT", "lora/phased TTT: adapter init: identity (A ~ N(0, 1/fan_in), "
                            "B = 0), pr1090 (A ~ N(0, 0.01^2), B ~ N(0, 0.001^2), output scaled 1/rank, as PR #1090) or "
                            "r44 (A ~ U(+-1/sqrt(fan_in)), B = 0, output scaled TTT_LORA_ALPHA/rank, as R44)",
                            ("identity", "pr1090", "r44"))
    ttt_lora_alpha: float = _f(144.0, "TTT_LORA_ALPHA", "lora/phased TTT with PGOLF_TTT_LORA_INIT=r44: adapters' output "
                               "scaled alpha/rank", POS)
    ttt_lora_per_pass: bool = _f(False, "PGOLF_TTT_LORA_PER_PASS", "lora/phased TTT: one adapter per virtual layer (each "
                                 "pass of a looped block its own, as R44) instead of one per block")
    ttt_beta1: float = _f(0.9, "TTT_BETA1", "lora/phased TTT: Adam beta1", MOMENTUM)
    ttt_beta2: float = _f(0.999, "TTT_BETA2", "lora/phased TTT: Adam beta2", MOMENTUM)
    ttt_adam_eps: float = _f(1e-8, "PGOLF_TTT_ADAM_EPS", "lora/phased TTT: Adam epsilon (R44: 1e-10)", POS)
    ttt_weight_decay: float = _f(0.0, "TTT_WEIGHT_DECAY", "lora/phased TTT: decoupled weight decay; > 0 makes the "
                                 "optimizer AdamW (R44: 0.5)", NONNEG)
    ttt_min_doc_len: int = _f(0, "TTT_MIN_DOC_LEN", "lora/phased TTT: a document's first N-1 targets are scored with its "
                              "initial adapters, before any step (PR #1090's rule for documents under N tokens; 0 or 1: none)", NONNEG)
    ttt_chunk_size: int = _f(256, "TTT_CHUNK_SIZE", "lora/phased TTT: targets per document chunk (score, then one step)", POS)
    ttt_eval_seq_len: int = _f(1024, "TTT_EVAL_SEQ_LEN", "lora/phased TTT: context window inside a document", POS)
    ttt_batch_size: int = _f(64, "TTT_BATCH_SIZE", "lora/phased TTT: documents adapted side by side", POS)
    phased_ttt_prefix_docs: int = _f(2000, "PHASED_TTT_PREFIX_DOCS", "phased TTT: documents scored before the last global SGD pause", NONNEG)
    phased_ttt_num_phases: int = _f(1, "PHASED_TTT_NUM_PHASES", "phased TTT: global SGD pauses spread over the prefix", POS)
    global_ttt_lr: float = _f(0.001, "GLOBAL_TTT_LR", "phased TTT: global SGD learning rate", NONNEG)
    global_ttt_momentum: float = _f(0.9, "GLOBAL_TTT_MOMENTUM", "phased TTT: global SGD momentum", MOMENTUM)
    global_ttt_epochs: int = _f(1, "GLOBAL_TTT_EPOCHS", "phased TTT: epochs over all documents scored so far", NONNEG)
    global_ttt_chunk_tokens: int = _f(32_768, "GLOBAL_TTT_CHUNK_TOKENS", "phased TTT: tokens per global SGD chunk (cosine LR over chunks)", POS)
    global_ttt_batch_seqs: int = _f(32, "GLOBAL_TTT_BATCH_SEQS", "phased TTT: sequences per global SGD batch", POS)
    global_ttt_grad_clip: float = _f(1.0, "GLOBAL_TTT_GRAD_CLIP", "phased TTT: grad-norm clip; 0 disables", NONNEG)
    global_ttt_packed: bool = _f(False, "PGOLF_GLOBAL_TTT_PACKED", "phased TTT: R44's global SGD: per chunk (the last "
                                 "one never), its whole sequences, GLOBAL_TTT_BATCH_SEQS of them packed into one row cut at "
                                 "every BOS and every EVAL_SEQ_LEN from a document's start (the SmearGate reads across other "
                                 "cuts), the epochs inside each chunk; under torchrun each rank its contiguous share of a "
                                 "chunk's sequences, gradients averaged (R44's)")


@dataclass
class QuantConfig:
    scheme: str = _f(
        "int8", "PGOLF_QUANT_SCHEME",
        "export quantization policy (pgolf.quant.policy), e.g. 'embed=int8,attn=int6:mse,mlp=int5'; int8 is the reference's per-row int8",
    )
    compressor: str = _f("zlib", "PGOLF_COMPRESSOR", "artifact compressor: zlib (reference, level 9), lzma, zstd, brotli, lrzip, "
                         "lrzip-zpaq (lrzip -z, R44's), stored or auto (smallest of the first five); with "
                         "PGOLF_SERIALIZER=pergroup it compresses each group")
    byte_shuffle: bool = _f(False, "PGOLF_BYTE_SHUFFLE", "store fp16/fp32 tensors byte-plane by byte-plane in the artifact")
    serializer: str = _f(
        "pgolf", "PGOLF_SERIALIZER", "artifact payload layout: pgolf (safetensors), qgv3 (PR #160's grouped raw bytes) or "
        "pergroup (R44's: int8 codes grouped by role across blocks, similarity-sorted rows, each group compressed alone)",
        ("pgolf", "qgv3", "pergroup"))
    stream_shuffle: int = _f(
        0, "PGOLF_STREAM_SHUFFLE", "byte-shuffle the whole payload with this stride before compressing (R35: 2); 0 off", NONNEG)
    qat_enabled: bool = _f(False, "QAT_ENABLED", "straight-through fake quantization of linear weights by the export policy")
    late_qat_threshold: float = _f(
        0.0, "LATE_QAT_THRESHOLD", "with QAT_ENABLED: switch QAT on once the LR scale drops below this (0: from the first step)", UNIT)
    # GPTQ and LQER (pgolf.quant.gptq, calibration, lqer; README "GPTQ, calibration and LQER").
    gptq_enabled: bool = _f(False, "USE_GPTQ", "GPTQ-round intN tensors (tied embedding too)")
    gptq_reserve_seconds: float = _f(4.0, "GPTQ_RESERVE_SECONDS", "with USE_GPTQ and a cap: stop training this early for calibration", NONNEG)
    gptq_calibration_batches: int = _f(16, "GPTQ_CALIBRATION_BATCHES", "GPTQ calibration: training batches", POS)
    gptq_calibration_loader: str = _f(
        "stream", "PGOLF_GPTQ_CALIBRATION_LOADER", "GPTQ calibration batches: stream (the training loader's next ones) or "
        "shuffled (R44's: a fresh ShuffledSequenceLoader, random TRAIN_SEQ_LEN windows of shards rank::world seeded by the "
        "rank, through plain causal attention, each rank keeping its own Hessians)", ("stream", "shuffled"))
    gptq_ar_selfgen: bool = _f(False, "GPTQ_AR_SELFGEN", "GPTQ calibration: the model's own samples")
    gptq_calib_samples: int = _f(64, "GPTQ_CALIB_SAMPLES", "self calibration: sequences", POS)
    gptq_temperature: float = _f(0.8, "GPTQ_TEMPERATURE", "self calibration: temperature", POS)
    gptq_batch_size: int = _f(8, "GPTQ_BATCH_SIZE", "self calibration: sequences per batch", POS)
    lqer_enabled: bool = _f(False, "LQER_ENABLED", "LQER: low-rank error corrections")
    lqer_rank: int = _f(4, "LQER_RANK", "LQER: rank", POS)
    lqer_top_k: int = _f(3, "LQER_TOP_K", "LQER: corrected tensors (largest error first)", POS)
    lqer_factor_bits: int = _f(4, "LQER_FACTOR_BITS", "LQER sym: factor bits", "in 2..8")
    lqer_asym_enabled: bool = _f(True, "LQER_ASYM_ENABLED", "LQER asym: A int2, B int4 per group")
    lqer_asym_group: int = _f(64, "LQER_ASYM_GROUP", "LQER asym: B group size", POS)
    # Selective +-1 pruning (pgolf.quant.prune; README "GPTQ, calibration and LQER"), R24's.
    prune_ones: bool = _f(False, "PGOLF_PRUNE_ONES", "zero the cheapest +-1 codes (cost scale^2) until the artifact fits the target (R24)")
    prune_target_bytes: int = _f(
        16_000_000, "PGOLF_PRUNE_TARGET_BYTES", "with PGOLF_PRUNE_ONES: model + code bytes to fit (default the cap)", POS)
    prune_scope: str = _f("attn,mlp", "PGOLF_PRUNE_SCOPE", "with PGOLF_PRUNE_ONES: roles or globs whose intN codes may be zeroed")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    preset: str = "custom"

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for section, values in FOLDED_FIELDS.items():  # empty but in a bundle
            out[section] = {**values, **out[section]}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def eval_seq_len(self) -> int:
        return self.eval.eval_seq_len or self.train.train_seq_len


SECTIONS = ("data", "model", "optim", "train", "eval", "quant")
# Empty but in a bundled train_gpt.py, whose bundler writes here the switches it folded into the code
# ({section: {field: value}}; the schema there may leave them out), so that the config a run records
# (config.json, the artifact's meta) is still whole.
FOLDED_FIELDS: dict = {}


def iter_fields(cfg: Config):
    """Yield (section, field) for every configurable field."""
    for section in SECTIONS:
        for f in fields(getattr(cfg, section)):
            yield section, f


def _env_index(cfg: Config) -> dict[str, tuple[str, str]]:
    return {f.metadata["env"]: (section, f.name) for section, f in iter_fields(cfg) if f.metadata.get("env")}


def parse_value(raw: str, kind: type | str, key: str) -> Any:
    """Parse a string override for a field of type ``kind``; bad values name the key."""
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind) if isinstance(kind, str) else kind
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return _parse_int(raw)
        if kind is float:
            return float(raw)
        return str(raw)
    except ValueError:
        raise PgolfError(f"{key}={raw!r}: expected a {kind.__name__}") from None


def _parse_int(raw: str) -> int:
    """Accept ``524288`` as well as ``5.24288e5`` (an integral float), nothing fractional."""
    try:
        return int(raw)
    except ValueError:
        value = float(raw)
        if not value.is_integer():
            raise
        return int(value)


def _field_type(section_obj: Any, name: str):
    for f in fields(section_obj):
        if f.name == name:
            return f.type
    raise KeyError(name)


def _field_of_key(cfg: Config, key: str) -> tuple[str, str]:
    """(section, field name) of ``section.name`` or a reference env name (e.g. ``NUM_LAYERS``)."""
    env = _env_index(cfg)
    if key in env:
        return env[key]
    if "." in key and key.split(".", 1)[0] in SECTIONS:
        section, name = key.split(".", 1)
        return section, name
    raise PgolfError(f"unknown config key {key!r} (use section.field or a reference env name; see `pgolf config show`)")


def set_value(cfg: Config, key: str, raw: str | Any) -> None:
    """Set one field from ``section.name`` or a reference env name (e.g. ``NUM_LAYERS``)."""
    section, name = _field_of_key(cfg, key)
    obj = getattr(cfg, section)
    try:
        kind = _field_type(obj, name)
    except KeyError:
        raise PgolfError(f"unknown config key {key!r}: section {section!r} has no field {name!r}") from None
    value = parse_value(raw if isinstance(raw, str) else _as_text(raw), kind, key)
    setattr(obj, name, value)


def _as_text(value: Any) -> str:
    """Typed values (from JSON or TOML) go through the same parser as strings, so types are checked."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def apply_env(cfg: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Apply every reference env var present in ``environ``; return the names applied."""
    environ = os.environ if environ is None else environ
    applied = []
    for section, f in iter_fields(cfg):
        name = f.metadata["env"]
        if name in environ:
            setattr(getattr(cfg, section), f.name, parse_value(environ[name], f.type, name))
            applied.append(name)
    return applied


def apply_overrides(cfg: Config, overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise PgolfError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        set_value(cfg, key.strip(), raw.strip())


def override_env(overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--set`` items as the reference env vars that mean the same (``train.iterations=3`` ->
    ``ITERATIONS=3``): how overrides reach a bundled ``train_gpt.py``, which reads only its env.
    Each item is checked as :func:`apply_overrides` checks it, so a bad one fails here, not in the run."""
    cfg = Config()
    apply_overrides(cfg, list(overrides))
    env_of = {(section, f.name): f.metadata["env"] for section, f in iter_fields(cfg)}
    out = {}
    for item in overrides:
        key, raw = (part.strip() for part in item.split("=", 1))
        out[env_of[_field_of_key(cfg, key)]] = raw
    return out


def from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (unknown keys are an error, missing keys keep defaults)."""
    cfg = Config()
    for section, values in data.items():
        if section == "preset":
            cfg.preset = str(values)
            continue
        if section not in SECTIONS or not isinstance(values, Mapping):
            raise PgolfError(f"config: unknown section {section!r}")
        for name, value in values.items():
            set_value(cfg, f"{section}.{name}", value)
    return cfg


# Written by the bundler (pgolf.bundle.build) into a bundled train_gpt.py: the package's schema defaults'
# fingerprint, and, where the bundle's own schema defaults are the frozen values (pgolf.bundle.specialise
# compact_schema), the frozen config's difference from the package's defaults, so that its artifact's
# config is the package's (see artifact_meta).
BUNDLE_DELTA: dict = {}
BUNDLE_DEFAULTS = ""


# What scoring an artifact reads of its config, so what the artifact carries (its bytes count under
# the cap): every section but the optimizer's, and of the training section the two fields evaluation
# reads (the window length behind EVAL_SEQ_LEN=0, and the seed of test-time training's draws). The
# training section's run settings (PGOLF_DEVICE, PGOLF_COMPILE, PGOLF_ATTN_BACKEND, FUSED_*) are the
# reader's own; the rest is training only (the run folder's config.json keeps the whole config).
ARTIFACT_SECTIONS = ("data", "model", "train", "eval", "quant")
ARTIFACT_TRAIN_FIELDS = ("seed", "train_seq_len")


def artifact_fields(cfg: Config) -> dict:
    """``cfg``'s fields that an artifact carries (:data:`ARTIFACT_SECTIONS`), by section."""
    out = cfg.to_dict()
    return {s: {k: v for k, v in out[s].items() if s != "train" or k in ARTIFACT_TRAIN_FIELDS} for s in ARTIFACT_SECTIONS}


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def defaults_fingerprint() -> str:
    """The schema defaults' fingerprint: the first 16 hex digits of the sha256 of the fields an artifact
    carries (:func:`artifact_fields`) at their defaults, as sorted JSON: a training-only field added or
    changed leaves every artifact readable."""
    return _fingerprint(json.dumps(artifact_fields(Config()), sort_keys=True))


def artifact_meta(cfg: Config) -> dict:
    """The config an artifact carries: ``cfg``'s fields of :func:`artifact_fields` that differ from the
    package's schema defaults (in value or type: ``repr``), by section, plus its preset; :func:`from_dict`
    rebuilds from it a config equal to ``cfg`` in every field scoring reads. And those defaults'
    fingerprint, which a reader checks against its own (:func:`check_defaults`): with other defaults the
    same difference is another config. In a bundle whose schema defaults are the frozen values, the
    difference from those is laid over the frozen config's own (:data:`BUNDLE_DELTA`)."""
    base, now = artifact_fields(Config()), artifact_fields(cfg)
    out = {s: {**BUNDLE_DELTA.get(s, {}), **{k: v for k, v in now[s].items() if repr(v) != repr(base[s].get(k))}}
           for s in ARTIFACT_SECTIONS}
    return {"config": {**{s: v for s, v in out.items() if v}, "preset": cfg.preset},
            "config_defaults": BUNDLE_DEFAULTS or defaults_fingerprint()}


def whole_defaults_fingerprint() -> str:
    """The fingerprint artifacts carried before they left the training-only fields out: the sha256 of the
    whole ``Config().to_json()``. Their config is then a difference from these same defaults."""
    return _fingerprint(Config().to_json())


def check_defaults(meta: Mapping[str, Any], source: str) -> None:
    """Refuse an artifact whose config is a difference from other schema defaults than this pgolf's: filled
    in with these, it would be another model or evaluation. An artifact without a fingerprint (its config
    whole) passes, and so does one fingerprinted the earlier way over the whole config, when that matches."""
    theirs = meta.get("config_defaults")
    if theirs is not None and theirs not in (defaults_fingerprint(), whole_defaults_fingerprint()):
        raise PgolfError(
            f"{source}: its config was stored as the difference from other schema defaults than this pgolf's "
            f"(fingerprint {theirs}, here {defaults_fingerprint()}); pass --preset/--set to say the config"
        )


def field_problem(value: Any, check: tuple[str, ...] | str) -> str | None:
    """Why ``value`` fails a field's own ``check`` (choices or a :data:`RULES` key), or None."""
    if isinstance(check, tuple):
        return None if value in check else f"expected one of {', '.join(c or repr(c) for c in check)}"
    return None if RULES[check](value) else f"must be {check}"


def check_fields(cfg: Config) -> None:
    """Every field's own check, named by its env variable."""
    for section, f in iter_fields(cfg):
        if f.metadata.get("check") is not None:
            value = getattr(getattr(cfg, section), f.name)
            problem = field_problem(value, f.metadata["check"])
            if problem:
                raise PgolfError(f"{f.metadata['env']}={value!r}: {problem}")


def validate(cfg: Config) -> None:
    """The schema's per-field checks, then the checks across fields that would otherwise fail deep
    inside training. Each cross check is guarded by the switch it belongs to, so that a bundle with
    that switch folded off ships no code for it."""
    check_fields(cfg)
    m = cfg.model
    if m.model_dim % m.num_heads or m.num_heads % m.num_kv_heads or m.head_dim % 2:
        raise PgolfError(f"MODEL_DIM={m.model_dim}, NUM_HEADS={m.num_heads}, NUM_KV_HEADS={m.num_kv_heads}: heads must be "
                         "divisible by kv heads and the model dim by heads into an even head dim (RoPE)")
    validate_model_techniques(m)
    _validate_quant(cfg.quant)
    _validate_optim(cfg.optim)
    if cfg.train.ema_decay > 0 and cfg.train.swa_enabled:
        raise PgolfError("EMA_DECAY and SWA_ENABLED are both set: choose one weight average to export")
    if cfg.train.loader == "doc_packed" and not (m.doc_isolated_attention and m.max_doc_len):
        raise PgolfError("PGOLF_LOADER=doc_packed packs documents into one row per rank: it needs DOC_ISOLATED_ATTENTION=1 "
                         "and PGOLF_MAX_DOC_LEN>0 (R44: TRAIN_SEQ_LEN)")
    if cfg.eval.global_ttt_packed and not m.doc_isolated_attention:
        raise PgolfError("PGOLF_GLOBAL_TTT_PACKED packs sequences into one row cut at every BOS: it needs "
                         "DOC_ISOLATED_ATTENTION=1 (R44's)")
    if cfg.eval.ttt and not set(cfg.eval.ttt_lora_targets.split(",")) <= {"q", "k", "v", "o", "mlp", "head", "logits"}:
        raise PgolfError(f"PGOLF_TTT_LORA_TARGETS={cfg.eval.ttt_lora_targets!r}: expected a comma list of q, k, v, o, mlp, "
                         "head, logits")


def _validate_quant(q: QuantConfig) -> None:
    from pgolf.export.codecs import AUTO, CODEC_IDS, MORE_NAMES
    from pgolf.quant.policy import parse_policy

    if q.scheme != "int8":  # the reference policy needs no parsing (and a bundle for it ships no parser)
        parse_policy(q.scheme)
    if q.compressor not in ("zlib", "auto") and q.compressor not in CODEC_IDS and q.compressor not in MORE_NAMES:  # literals fold in a bundle
        raise PgolfError(f"PGOLF_COMPRESSOR={q.compressor!r}: expected one of {', '.join([*CODEC_IDS, *MORE_NAMES])} or {AUTO}")
    if q.serializer == "pergroup" and q.stream_shuffle:
        raise PgolfError("PGOLF_STREAM_SHUFFLE with PGOLF_SERIALIZER=pergroup: its groups are compressed apart, "
                         "nothing is left to shuffle; set one")
    if q.prune_ones:
        from pgolf.quant.prune import parse_scope

        if q.scheme == "int8":
            raise PgolfError("PGOLF_PRUNE_ONES=1 needs an intN quant policy (PGOLF_QUANT_SCHEME=int8 stores no intN codes)")
        parse_scope(q.prune_scope)


def _validate_optim(o: "OptimConfig") -> None:
    from pgolf.optim.muon import ns_coefficients

    try:
        ns_coefficients(o.muon_ns_schedule, o.muon_backend_steps)
    except ValueError as exc:
        raise PgolfError(f"MUON_BACKEND_STEPS={o.muon_backend_steps}: {exc}") from None
    if o.grad_clip_local and not o.muon_parallel:
        raise PgolfError("PGOLF_GRAD_CLIP_LOCAL=1 needs PGOLF_PARALLEL_MUON=1: under DDP the ranks' gradients are averaged "
                         "during backward, before any clip")
    if o.muon_keep_warmup_momentum and not o.muon_parallel:
        raise PgolfError("PGOLF_MUON_KEEP_WARMUP_MOMENTUM=1 needs PGOLF_PARALLEL_MUON=1 (R44's momentum kept outside its "
                         "optimizer state is Parallel Muon's)")


def validate_model_techniques(m: ModelConfig) -> None:
    """Cross-checks of the record-technique fields of ModelConfig."""
    if m.hidden_size <= 0:
        raise PgolfError(f"MLP_HIDDEN={m.mlp_hidden} / MLP_MULT={m.mlp_mult}: the MLP width must be positive")
    if m.rope_dims and (m.rope_dims % 2 or not 2 < m.rope_dims <= m.head_dim):
        raise PgolfError(f"ROPE_DIMS={m.rope_dims} must be even, above 2 and at most the head dim {m.head_dim}")
    if m.rope_yarn and m.rope_train_seq_len <= 0:
        raise PgolfError(f"ROPE_TRAIN_SEQ_LEN={m.rope_train_seq_len} must be positive with ROPE_YARN=1")
    if m.use_smeargate and m.smear_gate_enabled:
        raise PgolfError("USE_SMEARGATE (v1) and SMEAR_GATE_ENABLED (v2) are exclusive: pick one SmearGate")
    if m.attn_out_gate_enabled + m.gated_attn_enabled + m.sparse_attn_gate_enabled > 1:
        raise PgolfError("ATTN_OUT_GATE_ENABLED, GATED_ATTN_ENABLED and SPARSE_ATTN_GATE_ENABLED are exclusive")
    if (m.smear_gate_enabled or m.attn_out_gate_enabled or m.sparse_attn_gate_enabled) and not 0 < m.gate_window <= m.model_dim:
        raise PgolfError(f"GATE_WINDOW={m.gate_window} must lie in 1..MODEL_DIM")
    if m.bigram_vocab_size == 1:
        raise PgolfError(f"BIGRAM_VOCAB_SIZE={m.bigram_vocab_size} must be 0 (off) or at least 2")
    if m.num_loops and not 0 <= m.loop_start <= m.loop_end < m.num_layers:
        raise PgolfError(f"NUM_LOOPS={m.num_loops} over LOOP_START={m.loop_start}..LOOP_END={m.loop_end}: "
                         f"need 0 <= start <= end < NUM_LAYERS={m.num_layers}")
    if m.parallel_start_layer >= m.num_layers and m.parallel_start_layer:
        raise PgolfError(f"PARALLEL_START_LAYER={m.parallel_start_layer} must lie in 1..NUM_LAYERS-1 (0 disables)")
    if m.parallel_start_layer and (m.gptj_parallel or m.parallel_residual_start >= 0):
        raise PgolfError("PARALLEL_START_LAYER (two lanes) is exclusive with GPTJ_PARALLEL and PARALLEL_RESIDUAL_START (GPT-J)")
    if not -1 <= m.parallel_residual_start < m.num_layers:
        raise PgolfError(f"PARALLEL_RESIDUAL_START={m.parallel_residual_start} must lie in -1..NUM_LAYERS-1 (-1 disables)")
    if m.embed_proj_shared and not (m.tie_embeddings and m.embed_dim not in (0, m.model_dim)):
        raise PgolfError("PGOLF_EMBED_PROJ_SHARED needs TIE_EMBEDDINGS=1 and an EMBED_DIM other than 0 and MODEL_DIM")
    if m.ve_enabled:
        try:
            layers = [int(i) for i in m.ve_layers.split(",") if i.strip()]
        except ValueError:
            raise PgolfError(f"VE_LAYERS={m.ve_layers!r}: expected comma-separated layer indices") from None
        if any(not 0 <= i < m.num_layers for i in layers):
            raise PgolfError(f"VE_LAYERS={m.ve_layers!r}: indices must lie in 0..NUM_LAYERS-1")


def load_toml(path: Path) -> tuple[str | None, dict]:
    """Read a TOML preset: optional top-level ``base = "preset"`` plus sections of overrides."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PgolfError(f"{path}: preset file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PgolfError(f"{path}: invalid TOML ({exc})") from None
    base = data.pop("base", None)
    return base, data
