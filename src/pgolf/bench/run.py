"""Measure pgolf's own training step and evaluation, on the code paths ``pgolf train`` runs.

Training: :func:`pgolf.train.loop.setup` builds the session (model, compile, DDP, optimizers,
loader), :func:`~pgolf.train.loop.compile_warmup` runs the warm-up steps and restores the initial
state, then ``steps`` calls of the real :func:`~pgolf.train.loop.train_step` are timed end to end
(synchronised only at both ends, as the training clock is). A second pass of ``steps`` steps splits
each step into phases, synchronising the device around every phase: data, forward, backward,
communication (distributed only: gradients all-reduced explicitly instead of overlapped with the
backward, so it is the unhidden cost) and optimizer (which includes Muon's own all-reduce). The
phase pass is slower than the timed pass by construction; its numbers are shares, not step time.

Evaluation: the warm-up runs :func:`~pgolf.eval.evaluate.evaluate` twice on a prefix of the val
tokens that has the same batch shapes as the full run (the full batch and the ragged tail), then
the whole evaluation is timed once. With ``EVAL_STRIDE`` > 0 it is the sliding evaluation of
``pgolf eval --stride`` instead (:func:`pgolf.eval.sliding.evaluate_windows`, its hidden states
compiled when the run compiles): warm-up twice on the first two batches (every batch has one
shape), then planning, scoring and the final score of the whole stream are timed together;
tokens are the scored targets.

Both timed runs sit inside :meth:`RecompileWatch.forbid`: a recompilation fails the benchmark.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from pgolf.bench.flops import forward_flops_per_token, mfu, peak_flops, sliding_flops_per_token, train_flops_per_token
from pgolf.bench.recompile import RecompileWatch
from pgolf.config import Config
from pgolf.errors import PgolfError
from pgolf.model.attn_backend import select_backend
from pgolf.runtime import device_name, shutdown_runtime

# The first compiled call fills the RoPE cache that the graph guards on, so the second call compiles once more.
MIN_WARMUP_STEPS = 2


@dataclass
class Measurement:
    """One side's numbers; times in milliseconds, rates per second, memory in MiB."""

    mode: str
    steps: int
    warmup_steps: int
    tokens: int  # tokens processed in the timed run (summed over ranks)
    total_ms: float
    flops_per_token: int
    device: str
    world_size: int
    attn_backend: str
    compiled: bool
    graphs_compiled_in_warmup: int
    recompiles_in_timed_run: int
    peak_memory_mib: int | None
    phases_ms_per_step: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # mode-specific facts (sliding: stride, rows, the score)

    @property
    def step_ms(self) -> float:
        return self.total_ms / max(self.steps, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / (self.total_ms / 1000.0)

    def as_dict(self) -> dict:
        peak = peak_flops(self.device)
        return {
            "mode": self.mode,
            "steps": self.steps,
            "warmup_steps": self.warmup_steps,
            "tokens": self.tokens,
            "total_ms": self.total_ms,
            "step_ms": self.step_ms,
            "tokens_per_s": self.tokens_per_s,
            "flops_per_token": self.flops_per_token,
            "peak_flops_per_device": peak,
            "mfu": mfu(self.flops_per_token, self.tokens_per_s, self.world_size, peak),
            "device": self.device,
            "world_size": self.world_size,
            "attn_backend": self.attn_backend,
            "compiled": self.compiled,
            "graphs_compiled_in_warmup": self.graphs_compiled_in_warmup,
            "recompiles_in_timed_run": self.recompiles_in_timed_run,
            "peak_memory_mib": self.peak_memory_mib,
            "phases_ms_per_step": self.phases_ms_per_step,
            **self.details,
        }


def shown(label: str, detail: str):
    """A long phase of the benchmark on stderr (pgolf.progress: one line when it outlasts a few seconds,
    one when it ends), so that a benchmark compiling for minutes is never silent; rank 0 only."""
    from pgolf.progress import phase

    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return phase(label, detail=detail)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Wall time per named phase, with the device synchronised on entry and exit of each."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals_ms: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        t0 = time.perf_counter()
        yield
        synchronize(self.device)
        self.totals_ms[name] += 1000.0 * (time.perf_counter() - t0)

    def per_step(self, steps: int) -> dict[str, float]:
        return {name: total / steps for name, total in self.totals_ms.items()}


def _peak_memory_mib(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device) // (1024 * 1024)) if device.type == "cuda" else None


def _reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _phased_train_step(s, timer: PhaseTimer, step: int) -> None:
    """The loop's train_step split into synchronised phases (kept in step with pgolf.train.loop.train_step)."""
    from pgolf.eval.evaluate import autocast_for
    from pgolf.optim.clip import clip_gradients
    from pgolf.optim.schedule import muon_momentum

    t, o = s.cfg.train, s.cfg.optim
    s.opts.zero_grad()
    ddp = s.rt.distributed and s.grad_sync is None  # Parallel Muon runs without DDP (see pgolf.optim.grad_sync)
    no_sync = s.step_model.no_sync() if ddp else contextlib.nullcontext()
    with no_sync:
        for _ in range(s.grad_accum_steps):
            with timer.phase("data"):
                x, y = s.loader.next_batch(t.train_batch_tokens, t.train_seq_len, s.grad_accum_steps)
            with timer.phase("forward"), autocast_for(s.rt.device):
                loss = s.step_model(x, y)
            with timer.phase("backward"):
                (loss / s.grad_accum_steps).backward()
    if s.grad_sync is not None:
        if o.grad_clip_local:  # R22/R44: each rank clips its own gradient before the average
            with timer.phase("optimizer"):
                clip_gradients(s.model.parameters(), o.grad_clip_norm)
        with timer.phase("communication"):
            s.grad_sync.reduce()
    elif s.rt.distributed:
        with timer.phase("communication"):
            for p in s.model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad /= s.rt.world_size
    with timer.phase("optimizer"):
        s.opts.set_muon_momentum(muon_momentum(step, o.muon_momentum_warmup_start, o.muon_momentum, o.muon_momentum_warmup_steps))
        s.opts.set_lr_scale(1.0)
        if s.grad_sync is not None:
            if not o.grad_clip_local:
                s.grad_sync.clip_average(o.grad_clip_norm)
        elif o.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), o.grad_clip_norm)
        s.opts.step()
        s.opts.zero_grad()


def _setup(cfg: Config, runs_dir: Path):
    from pgolf.train.loop import setup

    _reset_peak_memory()
    s = setup(cfg, runs_dir, echo=False)
    try:
        backend = select_backend(cfg.train.attn_backend, s.rt.device)  # before the first (compiling) call
    except PgolfError:
        shutdown_runtime(s.rt)
        raise
    return s, backend


def bench_train(cfg: Config, steps: int, warmup_steps: int) -> Measurement:
    """Time ``steps`` training steps after ``warmup_steps`` restored warm-up steps."""
    from pgolf.train.loop import compile_warmup, train_step

    if steps <= 0:
        raise PgolfError(f"--steps {steps}: must be positive")
    cfg = copy.deepcopy(cfg)
    cfg.train.warmup_steps = max(warmup_steps, MIN_WARMUP_STEPS)
    with tempfile.TemporaryDirectory(prefix="pgolf-bench-") as runs_dir:
        s, backend = _setup(cfg, Path(runs_dir))
        try:
            watch = RecompileWatch()
            with shown("bench: warm-up", f"{cfg.train.warmup_steps} steps{', compiling' if s.compile else ''}"):
                compile_warmup(s)
            warm_graphs = watch.compiled
            with watch.forbid("the timed training run"):
                with shown("bench: timed steps", f"{steps} steps"):
                    synchronize(s.rt.device)
                    t0 = time.perf_counter()
                    for step in range(steps):
                        train_step(s, 1.0, step)
                    synchronize(s.rt.device)
                    total_ms = 1000.0 * (time.perf_counter() - t0)
                with shown("bench: phase-timed steps", f"{steps} steps, synchronised per phase"):
                    timer = PhaseTimer(s.rt.device)
                    for step in range(steps):
                        _phased_train_step(s, timer, steps + step)
            return Measurement(
                "train", steps, cfg.train.warmup_steps, cfg.train.train_batch_tokens * steps, total_ms,
                train_flops_per_token(cfg.model, cfg.train.train_seq_len), device_name(s.rt.device),
                s.rt.world_size, backend, s.compile, warm_graphs, watch.during_forbidden,
                _peak_memory_mib(s.rt.device), timer.per_step(steps),
            )
        finally:
            shutdown_runtime(s.rt)


def warmup_windows(total_windows: int, batch_windows: int) -> int:
    """Windows of a val prefix that produces every batch shape of the full run: one full batch and the tail."""
    if total_windows <= batch_windows:
        return total_windows
    return batch_windows + total_windows % batch_windows


def bench_eval(cfg: Config, sliding_batch_tokens: int = 65_536) -> Measurement:
    """Time one full evaluation of the val tokens after a warm-up on a shape-complete prefix.

    ``EVAL_STRIDE`` > 0: the sliding evaluation, ``sliding_batch_tokens // seq_len`` windows a batch.
    """
    if cfg.eval.eval_stride > 0:
        return bench_sliding_eval(cfg, sliding_batch_tokens)
    from pgolf.eval.evaluate import evaluate

    with tempfile.TemporaryDirectory(prefix="pgolf-bench-") as runs_dir:
        s, backend = _setup(cfg, Path(runs_dir))
        try:
            seq_len, batch_tokens = cfg.eval_seq_len, cfg.eval.val_batch_size
            tokens = s.val_tokens
            total_windows = (tokens.shape[0] - 1) // seq_len
            if s.rt.world_size > 1:  # ranks own uneven shares: warm up on the whole split
                warm = tokens
            else:
                batch_windows = max(batch_tokens // seq_len, 1)
                warm = tokens[: warmup_windows(total_windows, batch_windows) * seq_len + 1]
            watch = RecompileWatch()
            with shown("bench: warm-up", f"{MIN_WARMUP_STEPS} evaluations of {warm.shape[0] - 1:,} tokens"):
                for _ in range(MIN_WARMUP_STEPS):
                    evaluate(s.step_model, warm, seq_len, s.table, batch_tokens, s.rt.device)
            warm_graphs = watch.compiled
            with watch.forbid("the timed evaluation"), shown("bench: timed evaluation", f"{total_windows:,} windows"):
                synchronize(s.rt.device)
                t0 = time.perf_counter()
                evaluate(s.step_model, tokens, seq_len, s.table, batch_tokens, s.rt.device)
                synchronize(s.rt.device)
                total_ms = 1000.0 * (time.perf_counter() - t0)
            return Measurement(
                "eval", 1, MIN_WARMUP_STEPS, total_windows * seq_len, total_ms,
                forward_flops_per_token(cfg.model, seq_len), device_name(s.rt.device), s.rt.world_size,
                backend, s.compile, warm_graphs, watch.during_forbidden, _peak_memory_mib(s.rt.device),
                {"forward_and_scoring": total_ms},
            )
        finally:
            shutdown_runtime(s.rt)


def bench_sliding_eval(cfg: Config, batch_tokens: int) -> Measurement:
    """Time one sliding evaluation (EVAL_STRIDE, PGOLF_EVAL_DOC_ISOLATED) of the val tokens, as ``pgolf eval`` runs it."""
    from pgolf.eval.ledger import ScoreLedger
    from pgolf.eval.sliding import compiled_hidden, evaluate_windows
    from pgolf.eval.windows import plan

    seq_len, stride = cfg.eval_seq_len, cfg.eval.eval_stride
    if batch_tokens <= 0:
        raise PgolfError(f"--batch-tokens {batch_tokens}: must be positive")
    if stride > seq_len:
        raise PgolfError(f"EVAL_STRIDE={stride}: the stride must not exceed the window length {seq_len}")
    with tempfile.TemporaryDirectory(prefix="pgolf-bench-") as runs_dir:
        s, backend = _setup(cfg, Path(runs_dir))
        try:
            if s.rt.world_size > 1:
                raise PgolfError("the sliding evaluation runs in one process: launch `pgolf bench eval` without torchrun")
            device, tokens = s.rt.device, s.val_tokens
            bos = cfg.model.bos_id if cfg.eval.doc_isolated else None
            hidden = compiled_hidden(s.model) if s.compile else None
            rows = max(batch_tokens // seq_len, 1)
            warm = plan(tokens, seq_len, stride, bos)[: 2 * rows]
            watch = RecompileWatch()
            with shown("bench: warm-up", f"{MIN_WARMUP_STEPS} passes over {len(warm)} windows"):
                for _ in range(MIN_WARMUP_STEPS):
                    evaluate_windows(s.model, ScoreLedger(tokens, s.table, device), warm, seq_len, batch_tokens, device, hidden=hidden)
            warm_graphs = watch.compiled
            with watch.forbid("the timed sliding evaluation"), shown("bench: timed sliding evaluation", f"stride {stride}"):
                synchronize(device)
                t0 = time.perf_counter()
                ledger = ScoreLedger(tokens, s.table, device)
                evaluate_windows(s.model, ledger, plan(tokens, seq_len, stride, bos), seq_len, batch_tokens, device, hidden=hidden)
                score = ledger.result()  # reads the sums back: the device is done
                total_ms = 1000.0 * (time.perf_counter() - t0)
            details = {"eval_kind": "sliding", "stride": stride, "doc_isolated": bos is not None, "window_rows": rows,
                       "val_loss": score.val_loss, "val_bpb": score.val_bpb}
            return Measurement(
                "eval", 1, MIN_WARMUP_STEPS, score.tokens, total_ms, sliding_flops_per_token(cfg.model, seq_len, stride),
                device_name(device), 1, backend, s.compile, warm_graphs, watch.during_forbidden,
                _peak_memory_mib(device), {"sliding": total_ms}, details,
            )
        finally:
            shutdown_runtime(s.rt)
