"""pgolf's sliding-window evaluation vs the 1.1556 record's (R15), side by side on one model.

The record script is not part of pgolf: point ``--record-script`` at a local copy of
``records/track_10min_16mb/2026-03-19_smeargate_orthoinit_muonwd/train_gpt_v5.py`` from
openai/parameter-golf (kept in an ignored folder, never committed). Its ``eval_val_sliding_window``
is imported and called as the record calls it; the model it runs is pgolf's, built from
``--preset`` (by default the R15 preset, the same architecture) and reached through the
``forward_logits`` the record's function calls, so the two sides differ only in how they evaluate:

* the record's: 32 windows a batch (``SW_EVAL_BATCH``), inputs stacked on the host window by window,
  logits for every position, eager;
* pgolf's (:func:`pgolf.eval.sliding.evaluate_sliding`, what ``pgolf eval --stride`` runs): one batch
  shape, the head only at scored positions, device-side gathers, and on CUDA its hidden states
  compiled (``PGOLF_COMPILE`` auto). It is timed at the record's batch (32 windows) and at
  ``pgolf eval``'s default (65,536 tokens).

Each side gets one untimed warm-up call (pgolf's compiles there; its time is reported apart, because
in a real evaluation it counts), then ``--runs`` timed calls in alternating order; the medians are
compared as scored tokens per second. The two do not score the same targets (the record drops the
first window's ``seq_len - stride`` targets and the ragged tail; pgolf scores every target), so each
side's rate uses its own count, and both scores are written down.

Usage: python benchmarks/sliding_eval.py --record-script .ref/r15_train_gpt_v5.py [--max-tokens N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
RECORD_BATCH_WINDOWS = 32  # SW_EVAL_BATCH's default in the record


def load_record(path: Path):
    spec = importlib.util.spec_from_file_location("record_train_gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # safe: the script's main() is behind a __main__ guard
    if not hasattr(module, "eval_val_sliding_window"):
        raise SystemExit(f"{path}: has no eval_val_sliding_window (is it the 1.1556 record's script?)")
    return module


class RecordFacing(torch.nn.Module):
    """pgolf's GPT behind the ``forward_logits`` the record's sliding function calls."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.logits(input_ids)


def timed(device: torch.device, fn):
    from pgolf.bench.run import synchronize
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record-script", type=Path, required=True, help="the 1.1556 record's train_gpt_v5.py")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--preset", default="smeargate_orthoinit_muonwd")
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=0, help="val tokens to score (0: the whole val prefix)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/sliding_eval_<device>.json")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import sentencepiece as spm

    from pgolf.bench.report import device_slug
    from pgolf.data.shards import load_tokens
    from pgolf.eval.evaluate import trim_to_windows
    from pgolf.eval.sliding import compiled_hidden, evaluate_sliding
    from pgolf.model.gpt import build_model
    from pgolf.presets import build_config
    from pgolf.runtime import compile_enabled, device_name, git_commit, pick_device, versions
    from pgolf.tokenizer.luts import build_byte_table
    from pgolf.train.rundir import write_json_atomic

    device = pick_device(args.device)
    record = load_record(args.record_script)
    cfg = build_config(args.preset, [], environ={})
    seq_len, stride = cfg.eval_seq_len, args.stride
    val = args.data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"
    sp = spm.SentencePieceProcessor(model_file=str(args.data / "tokenizers" / "fineweb_1024_bpe.model"))
    tokens = trim_to_windows(load_tokens(str(val), "val", cfg.model.vocab_size), seq_len, args.max_tokens)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, device).eval()
    table = build_byte_table(sp, cfg.model.vocab_size).to_torch(device)
    luts = record.build_sentencepiece_luts(sp, cfg.model.vocab_size, device)
    record_args = SimpleNamespace(train_seq_len=seq_len)
    record_tokens = torch.from_numpy(tokens.astype("int64"))
    hidden = compiled_hidden(model) if compile_enabled(cfg.train.compile, device) else None
    os.environ["SW_EVAL_BATCH"] = str(RECORD_BATCH_WINDOWS)

    def run_record():
        return record.eval_val_sliding_window(record_args, RecordFacing(model), 0, 1, device, record_tokens, *luts, stride=stride)

    def run_pgolf(batch_tokens: int):
        return lambda: evaluate_sliding(model, tokens, seq_len, stride, table, batch_tokens, device, hidden=hidden)

    sides = {"record": run_record, "pgolf_batch32": run_pgolf(RECORD_BATCH_WINDOWS * seq_len), "pgolf_default": run_pgolf(65_536)}
    first_call_s, seconds, results = {}, {name: [] for name in sides}, {}
    torch._dynamo.reset()
    for name, fn in sides.items():
        results[name], first_call_s[name] = timed(device, fn)
    for run in range(args.runs):
        order = list(sides) if run % 2 == 0 else list(reversed(sides))
        for name in order:
            _, s = timed(device, sides[name])
            seconds[name].append(s)
    n_targets = int(tokens.shape[0]) - 1
    record_targets = max((n_targets - seq_len) // stride + 1, 1) * stride
    report = {
        "what": "sliding-window evaluation, stride %d: pgolf (evaluate_sliding) vs the 1.1556 record's "
                "eval_val_sliding_window, both on pgolf's %s model" % (stride, args.preset),
        "commit": git_commit(), "device": device_name(device), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "loadavg_1m": os.getloadavg()[0], "versions": versions(),
        "record_script": args.record_script.name, "preset": args.preset, "seq_len": seq_len, "stride": stride,
        "val_tokens": n_targets, "runs": args.runs, "pgolf_compiled": hidden is not None, "weights": "seeded initialisation (untrained)",
        "sides": {},
    }
    for name in sides:
        scored = record_targets if name == "record" else n_targets
        median = statistics.median(seconds[name])
        score = results[name]
        val_loss, val_bpb = score if name == "record" else (score.score.val_loss, score.score.val_bpb)
        report["sides"][name] = {
            "seconds": seconds[name], "median_s": median, "first_call_s": first_call_s[name],
            "scored_tokens": scored, "tokens_per_s": scored / median, "val_loss": val_loss, "val_bpb": val_bpb,
            "batch_windows": RECORD_BATCH_WINDOWS if name != "pgolf_default" else max(65_536 // seq_len, 1),
        }
    rec = report["sides"]["record"]["tokens_per_s"]
    report["speedup_vs_record"] = {name: report["sides"][name]["tokens_per_s"] / rec for name in sides if name != "record"}
    out = args.out or REPO / "benchmarks" / "results" / f"sliding_eval_{device_slug(device_name(device), 1)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    for name, side in report["sides"].items():
        print(f"{name:<14} median {side['median_s']:8.3f} s  {side['tokens_per_s']:12,.0f} tok/s  "
              f"first call {side['first_call_s']:.2f} s  val_bpb {side['val_bpb']:.6f}")
    print("speedup vs record: " + ", ".join(f"{k} {v:.2f}x" for k, v in report["speedup_vs_record"].items()))
    print(f"written {out}")


if __name__ == "__main__":
    main()
