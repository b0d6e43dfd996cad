"""The training run, from config to scored artifact, with the reference's timing rules.

* Compile warm-up: ``WARMUP_STEPS`` real steps per graph variant (recurrence / QAT settings the
  schedules will switch to) prime compiled graphs, then the initial weights, optimizer state, flags,
  RNGs and data loader are restored, so they cost no training, no time and no mid-run recompile.
* The clock runs only while training: it pauses for validation, and the run stops at the first
  step whose cumulative training time reaches ``MAX_WALLCLOCK_SECONDS`` (all ranks agree via MAX).
* The LR warm-down is time-based under a cap (see :mod:`pgolf.optim.schedule`).
* Per step, :func:`apply_schedules` sets every scheduled quantity (LR, Muon momentum, WD taper)
  from the step and the training fraction: the one hook for schedule-driven switches.
* A configured weight average (EMA or SWA) replaces the trained weights before the final
  validation, so the checkpoint, the artifact and the score all hold the averaged weights.
* With ``USE_GPTQ`` and a cap, training stops ``GPTQ_RESERVE_SECONDS`` early
  (:func:`training_cap_ms`) and the calibration Hessians are collected right after the loop,
  inside the budget (pgolf.quant.calibration); the export GPTQ-rounds with them. Training + calibration
  over the cap is logged (``time_budget:``) and recorded in results.json, an error in record mode
  (pgolf.train.budget).
* After training: checkpoint, export the artifact, reload it from disk and score it on standard
  windows, then run the evaluation phases the config names (sliding windows, score-first TTT:
  pgolf.eval.phases) on the same reloaded weights, on every rank. The last phase's score is the
  run's score, as in the records; eval_time covers all of it.
* Code bytes are counted again once everything has run (:func:`final_size`): in package mode the
  evaluation phases import modules after the export, and they are code the run executed. That
  count is the one results.json, the last size line of the log and the cap verdict use. (A bundle's
  one file cannot change after the export: there the recount is telemetry, see pgolf.runtime.TELEMETRY.)
* A bundle's run logs the configuration the bundle was built with (``bundle_config`` in the header),
  so ``pgolf submit`` and ``pgolf check record`` see what the environment changed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pgolf.config import Config, artifact_meta
from pgolf.data.loader import DistributedTokenLoader, build_loader
from pgolf.data.identity import check_tokenizer
from pgolf.data.shards import resolve_shards
from pgolf.errors import PgolfError
from pgolf.eval.bpb import Score
from pgolf.eval.evaluate import autocast_for, batch_rows, evaluate, prime_eval_graphs
from pgolf.eval.phases import sliding_configured, ttt_configured
from pgolf.eval.valdata import load_validation
from pgolf.model.attn_backend import active_backend, select_backend
from pgolf.model.fused import check_fused_kernels, use_fused_kernels
from pgolf.model.gpt import GPT, build_model, count_parameters
from pgolf.optim.averaging import build_averager
from pgolf.optim.grad_sync import BankedGradSync, average_and_clip, broadcast_parameters, make_grad_sync
from pgolf.optim.groups import Optimizers, build_optimizers
from pgolf.optim.schedule import lr_scale, muon_momentum, training_frac, wd_taper_scale
from pgolf.quant.qat import disable_qat, update_qat
from pgolf.runtime import (TELEMETRY, Runtime, compile_enabled, device_name, git_commit, init_runtime, seed_everything,
                           shutdown_runtime, source_hash, versions)
from pgolf.tokenizer.luts import TorchByteTable
from pgolf.train.warmup import GraphVariant, capture, graph_variants, restore, set_variant
from pgolf.files import atomic_write
from pgolf.train.rundir import RunDir, new_run_id

CHECKPOINT_NAME = "checkpoint.safetensors"
ARTIFACT_NAME = "model.pgolf"


@dataclass
class Session:
    cfg: Config
    rt: Runtime
    run: RunDir
    model: GPT  # the plain module: state_dict, export
    step_model: nn.Module  # compiled and/or DDP-wrapped: forward/backward
    opts: Optimizers
    loader: DistributedTokenLoader  # or a record loader with the same interface (PGOLF_LOADER)
    val_tokens: object
    table: TorchByteTable
    grad_accum_steps: int
    compile: bool
    history: list[dict] = field(default_factory=list)
    averager: object | None = None  # EMA or SWA (pgolf.optim.averaging), built when training starts
    grad_sync: BankedGradSync | None = None  # multi-rank Parallel Muon: gradients reduced by hand, not by DDP
    bos_id: int = 1  # the tokenizer's BOS: document boundaries for doc-isolated sliding eval and TTT
    sliding_hidden: object | None = None  # compiled model.hidden for the sliding phase, primed in the warm-up
    watch: object | None = None  # the CLI's display of long phases (pgolf.progress.RunPhases); a bundle runs without


# Each call's arguments are names and constants: with no display (a bundle) the calls fold out of the shipped code.
def watch(s: Session, name: str, stream=None):
    """Show phase ``name`` (ending the one before; ``""``: just end it) through the CLI's display, which
    counts the targets of the scored ``stream``; returns the bar to advance, or None (a bundle, rank > 0)."""
    if s.watch is not None:
        return s.watch(name, stream)


def _sync(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def setup(cfg: Config, runs_dir: Path, echo: bool = True, frozen: dict | None = None) -> Session:
    """``frozen``: a bundle's built-in configuration, before the environment overrode it."""
    rt = init_runtime(cfg.train.device)
    if cfg.train.fused_ce or cfg.train.fused_mlp:  # refused before anything is written
        check_fused_kernels(cfg.model, cfg.train.fused_ce, cfg.train.fused_mlp, rt.device)
    seed_everything(cfg.train.seed)
    val = load_validation(cfg.data.tokenizer_path, cfg.data.val_glob(), cfg.model.vocab_size, cfg.eval_seq_len,
                          cfg.eval.val_max_tokens, rt.device)
    sp, val_tokens, table = val.sp, val.tokens, val.table
    check_tokenizer(resolve_shards(cfg.data.train_glob(), "train"), cfg.data.tokenizer_path)
    loader = _build_loader(cfg, rt)

    run_id = cfg.train.run_id or _broadcast_run_id(rt)
    run = RunDir(Path(runs_dir) / run_id, enabled=rt.is_master, echo=echo)
    select_backend(cfg.train.attn_backend, rt.device)
    model = build_model(cfg.model, rt.device)
    if cfg.train.fused_ce or cfg.train.fused_mlp:
        use_fused_kernels(model, cfg.train.fused_ce, cfg.train.fused_mlp, rt.device)
    use_compile = compile_enabled(cfg.train.compile, rt.device)
    step_model: nn.Module = torch.compile(model, dynamic=False, fullgraph=True) if use_compile else model
    banks_outside_ddp = cfg.optim.muon_parallel and rt.distributed
    opts = build_optimizers(model, cfg.optim, cfg.model.tie_embeddings, per_rank_grads=banks_outside_ddp)
    grad_sync = None
    if banks_outside_ddp:  # R22: no DDP; Parallel Muon reduce-scatters its banks, the rest is all-reduced
        broadcast_parameters(model)
        grad_sync = make_grad_sync(model, opts.muon)
    elif rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [rt.local_rank] if rt.device.type == "cuda" else None
        step_model = DDP(step_model, device_ids=ids, broadcast_buffers=False)
    grad_accum = cfg.train.grad_accum_steps or 8 // rt.world_size
    session = Session(cfg, rt, run, model, step_model, opts, loader, val_tokens, table, grad_accum, use_compile,
                      grad_sync=grad_sync, bos_id=int(sp.bos_id()))
    _write_header(session, run_id, int(val_tokens.shape[0] - 1), frozen)
    if grad_sync is not None:
        run.log(grad_sync.describe())
    return session


def _build_loader(cfg: Config, rt: Runtime):
    t = cfg.train
    return build_loader(t.loader, cfg.data.train_glob(), t.train_seq_len, t.seed, rt.rank, rt.world_size, rt.device,
                        cfg.model.vocab_size, cfg.model.bos_id)


def _broadcast_run_id(rt: Runtime) -> str:
    run_id = [new_run_id()]
    if rt.distributed:
        dist.broadcast_object_list(run_id, src=0)
    return run_id[0]


def _write_header(s: Session, run_id: str, num_val_tokens: int, frozen: dict | None) -> None:
    facts = {
        "run_id": run_id,
        "preset": s.cfg.preset,
        "source_sha256": source_hash(),
        **({"git_commit": git_commit()} if TELEMETRY else {}),
        "device": device_name(s.rt.device),
        "world_size": s.rt.world_size,
        "grad_accum_steps": s.grad_accum_steps,
        "compile": s.compile,
        "attention": active_backend(),
        **({"versions": versions()} if TELEMETRY else {}),  # results.json has them too
        "model_params": count_parameters(s.model),
        "val_tokens": num_val_tokens,
        "bundle_config": frozen,
    }
    s.run.header(facts, s.cfg.to_json())
    s.run.write_json("config.json", s.cfg.to_dict())
    s.run.log(
        f"run {run_id}: preset {s.cfg.preset}, {facts['model_params']:,} params, device {facts['device']}, "
        f"world_size {s.rt.world_size}, grad_accum {s.grad_accum_steps}, val tokens {num_val_tokens:,}"
    )


def apply_schedules(s: Session, step: int, scale: float, frac: float) -> None:
    """Set everything scheduled for this step; ``frac`` is the training fraction in [0, 1].

    The hook for schedule-driven switches (e.g. turning on depth recurrence at a fraction; train_step
    also sets the recurrence before its forward, so here it is already in place).
    """
    o = s.cfg.optim
    s.opts.set_muon_momentum(muon_momentum(step, o.muon_momentum_warmup_start, o.muon_momentum, o.muon_momentum_warmup_steps))
    s.opts.set_lr_scale(scale)
    s.opts.set_muon_wd_scale(wd_taper_scale(frac, o.wd_taper_start_frac, o.wd_taper_final_mult))
    switch_recurrence(s, frac >= s.cfg.train.enable_looping_at, step)


def switch_recurrence(s: Session, active: bool, step: int) -> None:
    """Depth recurrence (NUM_LOOPS) on or off; logged when it changes. A no-op without loops."""
    if s.model.cfg.num_loops == 0 or (s.model.active_loops > 0) == active:
        return
    s.model.set_recurrence(active)
    s.run.log(f"recurrence:{'on' if active else 'off'} step:{step} layers:{len(s.model.layer_order())}")


def train_step(s: Session, scale: float, step: int, frac: float = 0.0) -> float:
    """One optimizer step over ``grad_accum_steps`` micro-batches; returns the mean train loss."""
    t = s.cfg.train
    # before the forward, as the records switch it (R35 / R44 before step_fn): otherwise the first
    # step would run with the loops the model is built with (all on) instead of off until ENABLE_LOOPING_AT
    if s.model.cfg.num_loops:
        switch_recurrence(s, frac >= t.enable_looping_at, step)
    s.opts.zero_grad()
    total = torch.zeros((), device=s.rt.device)
    for micro in range(s.grad_accum_steps):
        if s.rt.distributed and s.grad_sync is None:  # DDP: all-reduce only on the last micro-batch
            s.step_model.require_backward_grad_sync = micro == s.grad_accum_steps - 1
        x, y = s.loader.next_batch(t.train_batch_tokens, t.train_seq_len, s.grad_accum_steps)
        with autocast_for(s.rt.device):
            loss = s.step_model(x, y)
        total += loss.detach()
        (loss / s.grad_accum_steps).backward()
    apply_schedules(s, step, scale, frac)
    average_and_clip(s.model.parameters(), s.grad_sync, s.cfg.optim)
    s.opts.step()
    s.opts.zero_grad()
    if s.rt.distributed:  # log the global mean, so logs do not depend on the number of ranks
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total /= s.rt.world_size
    return float(total.item()) / s.grad_accum_steps


def compile_warmup(s: Session) -> None:
    """Prime the compiled graph of every variant the run will reach, then restore the initial state exactly.

    WARMUP_STEPS real steps per variant (:func:`pgolf.train.warmup.graph_variants`: each reachable
    recurrence / QAT combination, in the order training reaches them, as the records run 20 steps
    and then 20 with looping on; step i's schedules as R44's ``step_fn(i, 1.0)``), so no
    schedule-driven switch compiles inside the timed run. Afterwards weights, optimizer state,
    recurrence, QAT, RNGs and the data loader are as before: training is bit-identical to
    WARMUP_STEPS=0. Except with PGOLF_MUON_KEEP_WARMUP_MOMENTUM on several ranks: Parallel Muon's
    momentum lives outside its optimizer state there, so the timed run starts with the warm-up's, as R44's.
    """
    t = s.cfg.train
    steps = t.warmup_steps
    if steps <= 0:
        return
    watch(s, "compile warm-up")
    initial = capture(s.model, s.opts)
    # R44's cu_seqlens bucket warm-up: its steps start one batch into the loader (the test lets a bundle fold it)
    if t.warmup_skip_batches:
        for _ in range(t.warmup_skip_batches):
            s.loader.next_batch(t.train_batch_tokens, t.train_seq_len, s.grad_accum_steps)
    variants = graph_variants(s.model, s.cfg.train, s.cfg.quant)
    for variant in variants:
        label = f" {variant.describe()}" if len(variants) > 1 else ""
        for i in range(steps):
            set_variant(s.model, variant, s.cfg.quant)  # train_step's schedules must not move it
            train_step(s, 1.0, i, variant.training_frac)
            if steps <= 20 or (i + 1) % 10 == 0 or i + 1 == steps:
                s.run.log(f"warmup_step:{i + 1}/{steps}{label}")
    prime_final_evaluation(s)
    watch(s, "")
    restore(s.model, s.opts, initial)
    if s.rt.distributed:
        s.step_model.require_backward_grad_sync = True
    s.loader = _build_loader(s.cfg, s.rt)


def prime_final_evaluation(s: Session) -> None:
    """Compile the graphs of the round-trip evaluation (loops on, QAT off) before the clocks start.

    Otherwise their compilation would land in the reported eval_time. Throwaway tokens of the
    validation batch shapes (pgolf.eval.evaluate.prime_eval_graphs): no validation data is read.
    """
    if not s.compile:
        return
    set_variant(s.model, GraphVariant(s.model.cfg.num_loops, False), s.cfg.quant)
    seq_len = s.cfg.eval_seq_len
    rows = batch_rows((s.val_tokens.shape[0] - 1) // seq_len, s.cfg.eval.val_batch_size, seq_len, s.rt.rank, s.rt.world_size)
    prime_eval_graphs(s.step_model, rows, seq_len, s.cfg.model.vocab_size, s.rt.device)
    s.run.log(f"warmup_eval_batches:{rows}")
    if sliding_configured(s.cfg.eval):
        from pgolf.eval.sliding import compiled_hidden, prime_sliding_graph

        s.sliding_hidden = compiled_hidden(s.model)
        prime_sliding_graph(s.sliding_hidden, s.model, sliding_batch_tokens(s), seq_len, s.cfg.model.vocab_size, s.rt.device)
        s.run.log(f"warmup_sliding_batch:{sliding_batch_tokens(s) // seq_len}x{seq_len}")


def sliding_batch_tokens(s: Session) -> int:
    """This rank's sliding batch: its share of VAL_BATCH_SIZE, at least one window."""
    return max(s.cfg.eval.val_batch_size // s.rt.world_size, s.cfg.eval_seq_len)


def validate(s: Session, bar=None) -> Score:
    """The standard-window score of the val tokens; ``bar``: a display's, from :func:`watch`."""
    e = s.cfg.eval
    return evaluate(s.step_model, s.val_tokens, s.cfg.eval_seq_len, s.table, e.val_batch_size, s.rt.device,
                    progress=bar).score


def _reached_cap(s: Session, elapsed_ms: float, cap_ms: float | None) -> bool:
    reached = cap_ms is not None and elapsed_ms >= cap_ms
    if s.rt.distributed and cap_ms is not None:
        flag = torch.tensor(int(reached), device=s.rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        reached = bool(flag.item())
    return reached


@dataclass
class TrainStats:
    steps: int
    train_time_ms: float
    stopped_early: bool
    final_score: Score
    hessians: dict | None = None  # GPTQ calibration Hessians (USE_GPTQ), collected inside the budget
    hessian_time_ms: float = 0.0
    budget: object | None = None  # pgolf.train.budget.TimeBudget (with calibration and a cap)


def training_cap_ms(cfg: Config) -> float | None:
    """The training loop's wallclock cap: MAX_WALLCLOCK_SECONDS, less the GPTQ reserve with USE_GPTQ."""
    t, q = cfg.train, cfg.quant
    if t.max_wallclock_seconds <= 0:
        return None
    reserve = q.gptq_reserve_seconds if q.gptq_enabled else 0.0
    return 1000.0 * max(t.max_wallclock_seconds - reserve, 0.0)


def _calibration_loader(s: Session):
    """The training stream, or with PGOLF_GPTQ_CALIBRATION_LOADER=shuffled R44's fresh loader of random windows."""
    from pgolf.quant.calibration import shuffled_calibration  # with USE_GPTQ only: counted code

    if shuffled_calibration(s.cfg.quant):
        from pgolf.data.rank_loader import RankShuffledLoader

        return RankShuffledLoader(s.cfg.data.train_glob(), s.cfg.train.train_seq_len, s.rt.rank, s.rt.world_size, s.rt.device,
                                  s.cfg.model.vocab_size)
    return s.loader


def collect_gptq_hessians(s: Session, train_ms: float) -> tuple[dict | None, float, object]:
    """Calibration Hessians for the export (None without USE_GPTQ), the milliseconds they took and the
    time budget they leave (pgolf.train.budget.TimeBudget; None without them or without a cap)."""
    q, t = s.cfg.quant, s.cfg.train
    if not q.gptq_enabled:
        return None, 0.0, None
    from pgolf.quant.calibration import calibration_hessians  # only then: counted code
    from pgolf.train.budget import time_budget

    _sync(s.rt)
    t0 = time.perf_counter()
    watch(s, "GPTQ calibration")
    hessians = calibration_hessians(s.model, q, t.train_seq_len, s.cfg.model.vocab_size, s.rt.device, t.seed, _calibration_loader(s),
                                    t.train_batch_tokens, s.grad_accum_steps)
    watch(s, "")
    _sync(s.rt)
    ms = 1000.0 * (time.perf_counter() - t0)
    s.run.log(f"gptq:collected {len(hessians)} Hessians from {'self' if q.gptq_ar_selfgen else 'train'} data in {ms:.0f}ms "
              f"train_time+hessians:{train_ms + ms:.0f}ms")
    budget = time_budget(t.max_wallclock_seconds, train_ms, ms)
    if budget is not None:
        s.run.log(budget.line())
    return hessians, ms, budget


def _progress(s: Session):
    from tqdm import tqdm

    total = s.cfg.train.iterations
    return tqdm(total=total, disable=None if s.rt.is_master else True, unit="step", dynamic_ncols=True, leave=False)


def run_training(s: Session) -> TrainStats:
    t = s.cfg.train
    cap_ms = training_cap_ms(s.cfg)
    if s.cfg.quant.gptq_enabled and cap_ms is not None:
        s.run.log(f"gptq:reserving {s.cfg.quant.gptq_reserve_seconds:g}s, effective cap {cap_ms:.0f}ms")
    tokens_per_step = t.train_batch_tokens
    train_ms, stop_after, step, score = 0.0, None, 0, None
    bar = _progress(s) if TELEMETRY else None
    s.averager = build_averager(t.ema_decay, t.swa_enabled, t.swa_every, t.swa_start_frac, s.model)
    _sync(s.rt)
    t0 = time.perf_counter()
    while True:
        last = step == t.iterations or (stop_after is not None and step >= stop_after)
        if last or (t.val_loss_every > 0 and step % t.val_loss_every == 0):
            _sync(s.rt)
            train_ms += 1000.0 * (time.perf_counter() - t0)
            if last:
                swap_in_average(s)
                switch_recurrence(s, True, step)  # the artifact is always evaluated with its loops
            score = validate(s, watch(s, "validation", s.val_tokens))
            s.run.log(
                f"step:{step}/{t.iterations} val_loss:{score.val_loss:.4f} val_bpb:{score.val_bpb:.4f} "
                f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms"
            )
            s.run.metric(event="val", step=step, train_time_ms=train_ms, **score.as_dict())
            _sync(s.rt)
            t0 = time.perf_counter()
        if last:
            break
        elapsed = train_ms + 1000.0 * (time.perf_counter() - t0)
        scale = lr_scale(step, elapsed, t.iterations, t.warmdown_iters, cap_ms, t.warmdown_frac, t.min_lr)
        if s.cfg.quant.qat_enabled and update_qat(s.model, s.cfg.quant, scale):
            s.run.log(f"qat:on step:{step} lr_scale:{scale:.4f} policy:{s.cfg.quant.scheme}")
        loss = train_step(s, scale, step, training_frac(step, elapsed, t.iterations, cap_ms))
        if not math.isfinite(loss):
            raise PgolfError(f"training diverged: train loss is {loss} at step {step + 1}")
        step += 1
        if s.averager is not None:
            s.averager.update(s.model, step, scale)
        elapsed = train_ms + 1000.0 * (time.perf_counter() - t0)
        _log_train(s, step, loss, elapsed, scale, tokens_per_step, bar, force=stop_after is not None)
        if stop_after is None and _reached_cap(s, elapsed, cap_ms):
            stop_after = step
    if TELEMETRY:
        bar.close()
    if stop_after is not None and step < t.iterations:
        s.run.log(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{step}/{t.iterations}")
    hessians, hessian_ms, budget = collect_gptq_hessians(s, train_ms)
    return TrainStats(step, train_ms, stop_after is not None and step < t.iterations, score, hessians, hessian_ms, budget)


def swap_in_average(s: Session) -> None:
    """Load the EMA/SWA weights into the model (all ranks hold identical replicas, so no sync)."""
    if s.averager is None:
        return
    state = s.averager.averaged_state(s.model)
    if state is None:
        s.run.log("weight average: no snapshot was taken; keeping the trained weights")
        return
    s.model.load_state_dict(state, strict=True)
    s.run.log(f"weight average: applied {s.averager.describe()}")


def _log_train(s: Session, step: int, loss: float, elapsed_ms: float, scale: float, tokens_per_step: int, bar, force: bool) -> None:
    t = s.cfg.train
    tok_s = tokens_per_step * step / max(elapsed_ms / 1000.0, 1e-9)
    if TELEMETRY:
        bar.update(1)
        postfix = {"loss": f"{loss:.4f}", "tok/s": f"{tok_s:,.0f}", "lr": f"{scale:.3f}"}
        if t.max_wallclock_seconds > 0:  # the cap, not ITERATIONS, usually ends the run
            postfix["cap_left"] = f"{max(t.max_wallclock_seconds - elapsed_ms / 1000.0, 0.0):.0f}s"
        bar.set_postfix(postfix, refresh=False)
    s.run.metric(event="train", step=step, train_loss=loss, train_time_ms=elapsed_ms, lr_scale=scale, tokens_per_s=tok_s)
    if t.train_log_every > 0 and (step <= 10 or step % t.train_log_every == 0 or force):
        s.run.log(
            f"step:{step}/{t.iterations} train_loss:{loss:.4f} train_time:{elapsed_ms:.0f}ms "
            f"step_avg:{elapsed_ms / step:.2f}ms tok/s:{tok_s:,.0f}",
            console=bar.disable if TELEMETRY else True,
        )


def save_checkpoint(s: Session) -> Path:
    from safetensors.torch import save

    path = s.run.path / CHECKPOINT_NAME
    if s.rt.is_master:
        state = {k: v.detach().cpu().contiguous() for k, v in s.model.state_dict().items()}
        atomic_write(path, save(state, metadata={"pgolf_config": s.cfg.to_json()}))
    return path


def export_and_score(s: Session, hessians: dict | None = None) -> tuple[dict, Score, float]:
    """Write the artifact (rank 0), reload it from disk on every rank and score the round trip.

    ``hessians`` (from :func:`collect_gptq_hessians`) feed GPTQ; LQER_ENABLED adds corrections.
    """
    from pgolf.export.artifact import export_model
    from pgolf.export.container import read_artifact
    from pgolf.quant.int8 import dequantize
    from pgolf.quant.policy import quantized_count

    path = s.run.path / ARTIFACT_NAME
    size: dict = {}
    q = s.cfg.quant
    # the reference layout (v1) by configuration: int8 policy, no byte shuffle, no GPTQ or LQER
    # (literals, so that a bundle for such a config ships no v2 code)
    v1_only = q.scheme == "int8" and q.serializer == "pgolf" and not (q.byte_shuffle or q.gptq_enabled or q.lqer_enabled)
    if s.rt.is_master:
        meta = artifact_meta(s.cfg)  # the config as its difference from the schema defaults: fewer bytes
        quantized = None
        if q.gptq_enabled or q.lqer_enabled:  # imported only then: its code counts in bytes_code
            from pgolf.quant.policy import quantize_for_export

            quantized = quantize_for_export(s.model.state_dict(), q, hessians)
        if q.prune_ones:  # R24's selective +-1 pruning, against the export's own byte count
            from pgolf.export.artifact import prune_to_fit_artifact
            from pgolf.quant.policy import quantize_state_dict_policy

            if quantized is None:
                quantized = quantize_state_dict_policy(s.model.state_dict(), q.scheme)
            watch(s, "selective prune")
            pruned = prune_to_fit_artifact(quantized, meta, q.prune_target_bytes, q.prune_scope,
                                           codec=q.compressor, shuffle=q.byte_shuffle)
            quantized = pruned.state
            s.run.log(pruned.summary(q.prune_target_bytes))
        watch(s, "export")
        report = export_model(
            s.model.state_dict(), path, meta,
            codec=q.compressor, policy=q.scheme, shuffle=q.byte_shuffle, quantized=quantized, v1_only=v1_only,
            stream_shuffle=q.stream_shuffle, serializer=q.serializer,
        )
        watch(s, "")
        size = dataclasses.asdict(report)
        s.run.log(report.summary())
    if s.rt.distributed:
        shared = [size]
        dist.broadcast_object_list(shared, src=0)  # every rank returns the same results
        size = shared[0]
    _sync(s.rt)
    t0 = time.perf_counter()
    # what load_weights does for an artifact, without the other formats; this run knows how it wrote it
    # the compressor its header names (a per-group payload is stored; auto: any) and its groups', spelled
    # as expressions of the config so that a bundle folds them to literals and ships one decompressor
    expect_codec = "stored" if q.serializer == "pergroup" else None if q.compressor == "auto" else q.compressor
    group_codec = q.compressor if q.serializer == "pergroup" and q.compressor != "auto" else None
    quantized, _ = read_artifact(path, expect_codec=expect_codec, v1_only=v1_only, serializer=q.serializer,
                                 stream_shuffled=q.stream_shuffle != 0, group_codec=group_codec)
    size["quantized_tensors"] = quantized_count(quantized)  # 0: the round trip is the float score (pgolf train warns)
    state = dequantize(quantized)
    disable_qat(s.model)  # the artifact's weights are already quantized: score them as they are
    s.model.load_state_dict(state, strict=True)
    score = validate(s, watch(s, "round trip", s.val_tokens))
    _sync(s.rt)
    eval_s = time.perf_counter() - t0
    s.run.log(
        f"final_roundtrip val_loss:{score.val_loss:.4f} val_bpb:{score.val_bpb:.4f} eval_time:{1000 * eval_s:.0f}ms"
    )
    s.run.log(f"final_roundtrip_exact val_loss:{score.val_loss:.8f} val_bpb:{score.val_bpb:.8f}")
    return size, score, eval_s


def score_configured_phases(s: Session) -> dict[str, dict]:
    """The phases the config names after the standard windows (pgolf.eval.phases), on the weights now loaded.

    Returns name -> score fields, phase details and ``eval_time_s``; logs each in the records' style.
    """
    from pgolf.eval.phases import LOG_NAMES, configured_phases, run_phase
    from pgolf.eval.timing import PhaseTimer

    e, seq_len, out, timer = s.cfg.eval, s.cfg.eval_seq_len, {}, PhaseTimer(s.rt.device)
    for name in configured_phases(e):
        with timer.phase(name):
            watch(s, name, s.val_tokens)
            phase = run_phase(name, s.model, s.val_tokens, seq_len, s.table, e, s.bos_id, s.rt.device, s.cfg.train.seed,
                              sliding_batch_tokens(s), s.sliding_hidden)
        seconds = timer.phases[name]
        score = phase.result.score
        detail = " ".join(f"{k}:{v}" for k, v in phase.details.items())
        s.run.log(f"{LOG_NAMES[name]} val_loss:{score.val_loss:.4f} val_bpb:{score.val_bpb:.4f} {detail} "
                  f"eval_time:{1000 * seconds:.0f}ms")
        s.run.log(f"{LOG_NAMES[name]}_exact val_loss:{score.val_loss:.8f} val_bpb:{score.val_bpb:.8f}")
        out[name] = {**score.as_dict(), **phase.details, "eval_time_s": seconds}
    return out


def final_size(s: Session, exported: dict) -> dict:
    """The size with every module this run executed counted, and the cap verdict on it.

    At export time the count is short in package mode: the sliding and TTT phases import their
    modules afterwards. A changed count is logged again (the log's last size line is the run's).
    Over the cap removes the artifact and raises, as the export does.
    """
    from pgolf.export.artifact import SizeReport, check_under_cap, size_report

    path, size = s.run.path / ARTIFACT_NAME, [exported]
    if s.rt.is_master:
        report = size_report(path)
        if report.bytes_code != exported["bytes_code"]:
            s.run.log(report.summary())
        size = [dataclasses.asdict(report)]
    if s.rt.distributed:
        dist.broadcast_object_list(size, src=0)
    report = SizeReport(**size[0])
    if report.over_cap and s.rt.is_master:
        path.unlink()
    check_under_cap(report)
    return {**exported, **size[0], "code_kind": report.code_kind}  # the export's other fields (quantized_tensors) stay


def _peak_memory_mib(rt: Runtime) -> int | None:
    if rt.device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(rt.device) // (1024 * 1024))


def train(cfg: Config, runs_dir: str | Path = "runs", echo: bool = True, session: Session | None = None,
          frozen: dict | None = None) -> dict:
    """Train, export and score one run; return (and write) its results. ``session``: one :func:`setup`
    already made (pgolf.train.lifecycle does, to record how the run ends); ``frozen``: see :func:`setup`."""
    s = session or setup(cfg, Path(runs_dir), echo=echo, frozen=frozen)
    try:
        compile_warmup(s)
        stats = run_training(s)
        save_checkpoint(s)
        size, post, eval_s = export_and_score(s, stats.hessians)
        phases = {"standard": {**post.as_dict(), "eval_time_s": eval_s}}
        if sliding_configured(cfg.eval) or ttt_configured(cfg.eval):  # a bundle without them ships none of their code
            phases.update(score_configured_phases(s))
        if TELEMETRY:  # a bundle counts its one file, at export as now
            size = final_size(s, size)
        final_phase, final = list(phases.items())[-1]
        eval_s = sum(p["eval_time_s"] for p in phases.values())
        pre = stats.final_score
        results = {
            "run_id": s.run.path.name,
            "preset": cfg.preset,
            "pre_quant": pre.as_dict(),
            "post_quant": post.as_dict(),
            "val_loss": final["val_loss"],
            "val_bpb": final["val_bpb"],
            "final_phase": final_phase,
            "phases": phases,
            "quant_gap_bpb": post.val_bpb - pre.val_bpb,
            **size,
            "steps": stats.steps,
            "train_time_s": stats.train_time_ms / 1000.0,
            "time_budget": stats.budget and stats.budget.as_dict(),
            "step_avg_ms": stats.train_time_ms / max(stats.steps, 1),
            "eval_time_s": eval_s,
            "tokens_per_s": cfg.train.train_batch_tokens * stats.steps / max(stats.train_time_ms / 1000.0, 1e-9),
            "world_size": s.rt.world_size,
            "device": device_name(s.rt.device),
            "versions": versions(),
            # for the package's own tools (pgolf train's summary, bench), not read from a bundle's run
            **({"git_commit": git_commit(), "run_dir": str(s.run.path), "stopped_early": stats.stopped_early,
                "gptq_hessian_time_s": stats.hessian_time_ms / 1000.0, "peak_memory_mib": _peak_memory_mib(s.rt)}
               if TELEMETRY else {}),
            "source_sha256": source_hash(),
        }
        s.run.write_json("results.json", results)
        return results
    finally:
        shutdown_runtime(s.rt)
