"""The compile warm-up primes every graph variant the schedules switch to (depth recurrence, late QAT),
then undoes itself exactly: training after it is bit-identical to training without it, and a compiled
run compiles nothing once the clock has started, not even when recurrence and QAT switch on mid-run."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.bench.recompile import graphs_compiled
from pgolf.eval.evaluate import evaluate
from pgolf.model.gpt import build_model
from pgolf.optim.groups import build_optimizers
from pgolf.presets import build_config
from pgolf.quant.qat import enable_qat, qat_is_on
from pgolf.train import loop
from pgolf.train.warmup import GraphVariant, capture, graph_variants, restore

POLICY = "mlp=int4g32,small=0"  # int4 MLP linears: QAT changes the forward (and few are quick to trace)
# 4 steps: recurrence switches on at step 2 (fraction 0.5), late QAT at step 3 (LR scale 1/4 < 0.3).
SWITCHES = ["NUM_LOOPS=1", "LOOP_START=0", "LOOP_END=1", "ENABLE_LOOPING_AT=0.5", "QAT_ENABLED=1",
            "LATE_QAT_THRESHOLD=0.3", "WARMDOWN_ITERS=4", f"PGOLF_QUANT_SCHEME={POLICY}"]


def switching_config(shared_data: Path | None, *extra: str):
    data = [] if shared_data is None else [
        f"DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
    ]
    return build_config("tiny_cpu", [*data, *SWITCHES, "ITERATIONS=4", "VAL_MAX_TOKENS=256", "TRAIN_LOG_EVERY=0",
                                     *extra], environ={})


# -- the variants -----------------------------------------------------------------------------------


def variants_for(*overrides: str) -> list[GraphVariant]:
    cfg = build_config("tiny_cpu", list(overrides), environ={})
    return graph_variants(build_model(cfg.model), cfg.train, cfg.quant)


def test_variants_are_every_reachable_recurrence_and_qat_setting_in_the_order_training_reaches_them():
    assert variants_for() == [GraphVariant(0, False)]
    loops = ("NUM_LOOPS=2", "LOOP_START=0", "LOOP_END=1")
    # built with every loop on (the evaluated model); on from the start: nothing else to reach
    assert variants_for(*loops) == [GraphVariant(2, False)]
    # loops off first, as R44's warm-up (which matters where its momentum outlives the warm-up)
    assert variants_for(*loops, "ENABLE_LOOPING_AT=0.35") == [GraphVariant(0, False), GraphVariant(2, False)]
    assert variants_for("QAT_ENABLED=1") == [GraphVariant(0, False), GraphVariant(0, True)]
    assert variants_for(*loops, "ENABLE_LOOPING_AT=0.35", "QAT_ENABLED=1", "LATE_QAT_THRESHOLD=0.15") == [
        GraphVariant(0, False), GraphVariant(0, True), GraphVariant(2, False), GraphVariant(2, True)]


# -- the snapshot -----------------------------------------------------------------------------------


def test_restore_undoes_weights_optimizer_flags_and_rngs():
    cfg = switching_config(None, "MUON_WD=0.1")
    model = build_model(cfg.model)
    opts = build_optimizers(model, cfg.optim, cfg.model.tie_embeddings)
    before = capture(model, opts)
    rng_draws = (random.random(), np.random.rand(), torch.rand(3))
    restore(model, opts, capture(model, opts))  # a no-op snapshot does not disturb the RNGs either
    _ = random.random(), np.random.rand(), torch.rand(3)

    model.set_recurrence(0)
    enable_qat(model, POLICY)
    x = torch.randint(0, cfg.model.vocab_size, (2, 32))
    model(x, torch.roll(x, -1, 1)).backward()
    opts.set_lr_scale(0.25)
    opts.set_muon_momentum(0.5)
    opts.set_muon_wd_scale(0.5)
    opts.step()
    restore(model, opts, before)

    assert model.active_loops == 1 and not qat_is_on(model)
    after = capture(model, opts)
    assert all(torch.equal(after.weights[k], v) for k, v in before.weights.items())
    for got, want in zip(after.optimizers, before.optimizers, strict=True):
        assert got["state"] == {} == want["state"]  # the step's momentum buffers are gone
        assert got["param_groups"] == want["param_groups"]  # lr, momentum, wd_scale as they were
    assert all(p.grad is None for p in model.parameters())
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == rng_draws[:2] and torch.equal(again[2], rng_draws[2])


# -- whole runs -------------------------------------------------------------------------------------


def run_steps(cfg, runs_dir: Path) -> tuple[list[float], str]:
    """Warm-up and training (no export), as loop.train runs them; the train losses and the log."""
    s = loop.setup(cfg, runs_dir, echo=False)
    try:
        loop.compile_warmup(s)
        loop.run_training(s)
    finally:
        loop.shutdown_runtime(s.rt)
    log = (s.run.path / "train.log").read_text()
    rows = [json.loads(line) for line in (s.run.path / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if r["event"] == "train"], log


def test_training_after_the_warm_up_is_bit_identical_to_training_without_it(shared_data, tmp_path):
    cold, cold_log = run_steps(switching_config(shared_data, "RUN_ID=cold", "WARMUP_STEPS=0"), tmp_path)
    warm, warm_log = run_steps(switching_config(shared_data, "RUN_ID=warm", "WARMUP_STEPS=1"), tmp_path)
    # in the order training reaches them, loops off first (R44: 20 steps, then 20 with its loops on)
    order = [warm_log.index(f"warmup_step:1/1 {v}") for v in ("loops:0 qat:off", "loops:0 qat:on", "loops:1 qat:off",
                                                               "loops:1 qat:on")]
    assert order == sorted(order)
    for log in (cold_log, warm_log):  # both switches happen inside the run, after its first step
        assert "recurrence:on step:2" in log and "qat:on step:3" in log
    assert warm == cold  # exactly: every bit of the state the warm-up touched was restored


@pytest.fixture()
def compile_with_eager_backend(monkeypatch):
    """torch.compile through TorchDynamo (same guards, same recompiles) without inductor's C compiler."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    yield
    torch._dynamo.reset()


def count_graphs(monkeypatch, name: str) -> list[int]:
    """Replace ``loop.<name>`` by a wrapper that records the graphs compiled during each call."""
    counts: list[int] = []
    real = getattr(loop, name)

    def counting(*args, **kwargs):
        before = graphs_compiled()
        out = real(*args, **kwargs)
        counts.append(graphs_compiled() - before)
        return out

    monkeypatch.setattr(loop, name, counting)
    return counts


def test_compiled_run_compiles_nothing_after_the_warm_up(shared_data, tmp_path, monkeypatch, compile_with_eager_backend):
    graphs_per_step = count_graphs(monkeypatch, "train_step")
    # validation is outside the clock and this test: score the plain module rather than trace its graph too
    monkeypatch.setattr(loop, "validate", lambda s, bar=None: evaluate(s.model, s.val_tokens, s.cfg.eval_seq_len, s.table,
                                                                       s.cfg.eval.val_batch_size, s.rt.device).score)
    # 2 steps per variant: the base graph recompiles once on its second call (the filled RoPE cache)
    _, log = run_steps(switching_config(shared_data, "RUN_ID=c", "WARMUP_STEPS=2", "PGOLF_COMPILE=1"), tmp_path)
    assert "recurrence:on step:2" in log and "qat:on step:3" in log
    warmup, timed = graphs_per_step[:8], graphs_per_step[8:]
    assert len(timed) == 4
    # every variant is a graph of its own: each one's first warm-up step compiled it
    assert all(warmup[i] >= 1 for i in (0, 2, 4, 6)), warmup
    assert timed == [0, 0, 0, 0], f"graphs compiled per timed step: {timed}"


def test_final_evaluation_compiles_nothing_after_the_warm_up(shared_data, tmp_path, monkeypatch, compile_with_eager_backend):
    """The round trip's graphs (loops on, QAT off, eval mode) and the sliding phase's are primed in the
    warm-up, so eval_time holds no compilation."""
    graphs_in_round_trip = count_graphs(monkeypatch, "export_and_score")
    graphs_in_phases = count_graphs(monkeypatch, "score_configured_phases")
    # 256 val tokens of 128-token windows in batches of 1: one batch shape; sliding batches of one window
    cfg = switching_config(shared_data, "RUN_ID=rt", "WARMUP_STEPS=2", "PGOLF_COMPILE=1", "VAL_BATCH_SIZE=128",
                           "EVAL_STRIDE=64")
    results = loop.train(cfg, runs_dir=tmp_path, echo=False)
    log = (tmp_path / "rt" / "train.log").read_text()
    assert "warmup_eval_batches:[1]" in log and "warmup_sliding_batch:1x128" in log
    assert results["phases"]["sliding"]["compiled"] is True
    assert graphs_in_round_trip == [0] and graphs_in_phases == [0]


def test_eval_batch_rows_are_the_full_batch_and_the_ragged_tail():
    from pgolf.eval.evaluate import batch_rows

    assert batch_rows(39, 16 * 128, 128) == [7, 16]
    assert batch_rows(32, 16 * 128, 128) == [16]
    assert batch_rows(7, 16 * 128, 128) == [7]
    # 8 ranks, 10 windows a batch each: rank 3 scores windows 37..49 (13 of them)
    assert batch_rows(100, 8 * 10 * 128, 128, rank=3, world_size=8) == [3, 10]
