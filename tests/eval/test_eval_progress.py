"""Long evaluation phases are never silent: ``pgolf eval`` shows each phase on stderr (its bar counts
every scored target, once), and ``--json`` stays the last stdout line; TTT's scoring steps reach the
bar through the ledger."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pgolf import progress
from pgolf.eval.ledger import counting_into
from pgolf.eval.phases import run_phase
from pgolf.model.gpt import GPT
from pgolf.presets import resolve_preset
from pgolf.tokenizer.luts import build_byte_table
from pgolf.tokenizer.spm import load_tokenizer
from tests.eval.conftest import make_ttt_settings
from tests.eval.test_eval_cli import checkpoint, common, run_eval  # noqa: F401 (a fixture)


class Counted:
    """pgolf.progress.start, recording each phase's total and what its bar was advanced by."""

    def __init__(self, real):
        self.real, self.totals, self.counted = real, {}, {}

    def start(self, label, total=0, unit="token", detail=""):
        self.totals[label], self.counted[label] = total, 0
        return CountingPhase(self.counted, label, self.real(label, total, unit, detail))


class CountingPhase:
    def __init__(self, counted: dict, label: str, shown):
        self.counted, self.label, self.shown = counted, label, shown

    def update(self, n=1):
        self.counted[self.label] += n
        self.shown.update(n)

    def close(self, finished=True):
        self.shown.close(finished)


def test_eval_shows_every_phase_on_stderr_and_keeps_json_last(capsys, monkeypatch, checkpoint, sp1024_model,
                                                               val_prefix_shard):
    counted = Counted(progress.start)
    monkeypatch.setenv(progress.ENV, "lines")
    monkeypatch.setattr(progress, "start", counted.start)
    code, out, err = run_eval(capsys, "--checkpoint", str(checkpoint), *common(sp1024_model, val_prefix_shard),
                              "--stride", "64", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["final_phase"] == "sliding" and result["tokens"] == 2048
    assert "eval:" not in out  # progress never goes to stdout
    lines = err.splitlines()
    assert "eval: standard windows, 16 windows of 128 ..." in lines
    assert "eval: sliding windows, 2,048 tokens ..." in lines
    for label in ("eval: standard windows", "eval: sliding windows"):
        assert any(line.startswith(f"{label}: done in ") for line in lines), err
        assert counted.counted[label] == counted.totals[label] == 2048  # every target once, per batch


@pytest.fixture(scope="module")
def tiny_stream(val_prefix_shard, sp1024_model):
    from pgolf.data.shards import load_tokens

    tokens = np.ascontiguousarray(load_tokens(str(val_prefix_shard), "val", 1024)[:385])
    sp = load_tokenizer(str(sp1024_model))
    return tokens, build_byte_table(sp, 1024).to_torch(), int(sp.bos_id())


def test_ttt_scoring_steps_advance_the_bar_through_the_ledger(tiny_stream):
    tokens, table, bos_id = tiny_stream
    torch.manual_seed(0)
    model = GPT(resolve_preset("tiny_cpu").model)
    settings = make_ttt_settings("PGOLF_TTT=sgd", "TTT_EPOCHS=1", "TTT_CHUNK_TOKENS=128")

    class Bar:
        n = 0
        calls = 0

        def update(self, n=1):
            Bar.n += n
            Bar.calls += 1

    with counting_into(Bar()):
        run_phase("ttt", model, tokens, 128, table, settings, bos_id, torch.device("cpu"))
    assert Bar.n == tokens.shape[0] - 1  # every target, counted once
    assert 1 < Bar.calls < Bar.n // 16  # per scoring step, not per target
