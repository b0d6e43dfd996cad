"""`pgolf bench train` fails, naming the count, when a graph is compiled during its timed steps (a planted
batch-shape change), and passes the same compiled run without the plant."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from pgolf.train import loop


@pytest.fixture()
def compiled_bench(monkeypatch, shared_data, tmp_path, run_pgolf):
    """Run `pgolf bench train` compiled through TorchDynamo (eager backend: same guards, no C compiler)."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    d = shared_data / "datasets"
    sets = [f"DATA_PATH={d / 'fineweb10B_sp1024_trainsample'}",
            f"VAL_FILES={d / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
            "VAL_MAX_TOKENS=256", "PGOLF_COMPILE=1"]
    args = ["bench", "train", "--preset", "tiny_cpu", "--steps", "2", "--warmup", "2", "--out", str(tmp_path), "--json"]
    yield lambda: run_pgolf([*args, *(f"--set={s}" for s in sets)])
    torch._dynamo.reset()


def plant_shape_change_after(monkeypatch, calls: int) -> None:
    """From the given train_step call on, batches are half as long: a new shape, so a recompile."""
    real_step, seen = loop.train_step, []

    def step(s, *args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            s.cfg.train.train_batch_tokens = 1024
        return real_step(s, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)


def test_a_recompile_in_the_timed_steps_fails_the_bench(compiled_bench, monkeypatch, tmp_path):
    plant_shape_change_after(monkeypatch, calls=2 + 1)  # the warm-up's 2 steps and the first timed one
    code, out, err = compiled_bench()
    assert code == 2
    assert "pgolf: error: 1 torch.compile recompilation(s) during the timed training run" in err
    assert not list(tmp_path.glob("*.json"))  # no report of a run that compiled while timed


def test_the_same_compiled_bench_passes_without_the_plant(compiled_bench):
    code, out, err = compiled_bench()
    assert code == 0, err
    m = json.loads(out.strip().splitlines()[-1])["pgolf"]
    assert m["compiled"] is True and m["graphs_compiled_in_warmup"] >= 1 and m["recompiles_in_timed_run"] == 0
