"""pgolf's sliding-window evaluation vs PR #160's and R15's own, side by side on the same weights and targets.

The records' functions are imported from their scripts in the oracles folder (``PGOLF_ORACLES``,
default ``../shared/oracles``; never part of pgolf) and called as the records call them:
PR #160's ``eval_val_sliding`` (one window a forward, logits for every position) and R15's
``eval_val_sliding_window`` (``SW_EVAL_BATCH`` = 32 windows a forward, inputs stacked window by window
on the host). The model is pgolf's, built from each record's preset (``--set`` overrides apply, e.g.
a narrower model for a quick CPU run) with seeded weights, and it reaches each record's function
through the ``get_logits``/``forward_logits`` that function calls: the sides differ only in how they
evaluate. pgolf's side is :func:`pgolf.eval.sliding.evaluate_sliding` (what ``pgolf eval --stride``
runs) at its default batch (65,536 tokens), its hidden states compiled where ``PGOLF_COMPILE``
resolves on (CUDA; the first call compiles, and its time is reported apart).

Same targets: PR #160 scores every target once with pgolf's windows, so the two scores must agree;
R15 scores only the last ``stride`` targets of full windows (each with the context pgolf's window for
it has), so pgolf's per-target losses on exactly R15's targets are scored (:mod:`pgolf.eval.bpb`) and
must agree with R15's. The speed ratio is scored targets per second, each side over its own targets.

Each side gets one untimed warm-up call, then ``--runs`` timed calls in alternating order; wall and
process CPU seconds are recorded (the CPU time is less disturbed by other load on a shared machine),
medians compared. Writes ``benchmarks/results/sliding_eval_<device>.json``.

    PYTHONPATH=src python benchmarks/sliding_eval.py [--max-tokens N] [--set NUM_LAYERS=2 ...] [--device cuda]

Defaults: each record's preset stride (PR #160 256, R15 64) and the first 4,096 (PR #160: 9 windows
of 2048) or 2,048 (R15: 17 windows of 1024) val targets; one window alone would be the same work on
both sides.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ORACLES = Path(os.environ.get("PGOLF_ORACLES", REPO.parent / "shared" / "oracles"))
RECORDS = {  # name -> (script, function, pgolf preset)
    "pr160": ("PR160_mlp3x_int8emb_seq2048/train_gpt.py", "eval_val_sliding", "mlp3x_int8emb_seq2048"),
    "r15": ("R15_smeargate_orthoinit_muonwd/train_gpt_v5.py", "eval_val_sliding_window", "smeargate_orthoinit_muonwd"),
}
# val targets scored by default: several windows each (one window is the same work on both sides),
# small enough for a 2-core CPU at full width
DEFAULT_TARGETS = {"pr160": 4096, "r15": 2048}
R15_BATCH_WINDOWS = 32  # SW_EVAL_BATCH's default in R15
# same targets, same model: the scores differ only by summation order (fp32 on CPU) or by bf16 kernels
# that depend on the batch shape (CUDA autocast, both sides)
AGREE_REL = {"cpu": 1e-5, "cuda": 1e-3}


def load_record(path: Path):
    """The record's module, imported as a library (its main() is behind a __main__ guard). Its
    FlashAttention 3 import is stood in for: the model that runs is pgolf's, never the record's."""
    # The stand-in is removed again: left in sys.modules, it would make pgolf's own attention pick FA3
    # on a Hopper GPU and fail there (seen on the first H200 run).
    saved = sys.modules.get("flash_attn_interface")
    sys.modules["flash_attn_interface"] = types.SimpleNamespace(flash_attn_func=None)
    try:
        spec = importlib.util.spec_from_file_location(f"record_{path.stem}_{abs(hash(str(path)))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("flash_attn_interface", None)
        else:
            sys.modules["flash_attn_interface"] = saved
    return module


class RecordFacing(torch.nn.Module):
    """pgolf's GPT behind the logits methods the records' sliding functions call."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.logits(input_ids)

    get_logits = forward_logits


def timed(device: torch.device, fn):
    from pgolf.bench.run import synchronize

    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def r15_targets(n_targets: int, seq_len: int, stride: int) -> np.ndarray:
    """The targets R15's function scores: the last ``stride`` of each full window."""
    windows = max((n_targets - seq_len) // stride + 1, 1)
    return (np.arange(windows)[:, None] * stride + seq_len - stride + np.arange(stride)[None, :]).reshape(-1)


def score_subset(losses: np.ndarray, tokens: np.ndarray, targets: np.ndarray, table) -> tuple[float, float]:
    """pgolf's score of its own per-target losses on ``targets`` only."""
    from pgolf.eval.bpb import BpbAccumulator

    acc = BpbAccumulator(table)
    idx = torch.from_numpy(targets)
    stream = torch.from_numpy(tokens.astype(np.int64))
    acc.add(torch.from_numpy(losses[targets]), stream[idx], stream[idx + 1])
    score = acc.result()
    return score.val_loss, score.val_bpb


def compare(name: str, args, device: torch.device) -> dict:
    import sentencepiece as spm

    from pgolf.data.shards import load_tokens
    from pgolf.eval.evaluate import val_stream
    from pgolf.eval.sliding import compiled_hidden, evaluate_sliding
    from pgolf.model.gpt import build_model
    from pgolf.presets import build_config
    from pgolf.runtime import compile_enabled
    from pgolf.tokenizer.luts import build_byte_table

    script, function, preset = RECORDS[name]
    record = load_record(Path(args.script.get(name, ORACLES / script)))
    cfg = build_config(preset, args.set, environ={})
    seq_len, stride = cfg.eval_seq_len, args.stride or cfg.eval.eval_stride
    val = args.data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"
    sp = spm.SentencePieceProcessor(model_file=str(args.data / "tokenizers" / "fineweb_1024_bpe.model"))
    # the stream as pgolf eval scores it (pgolf.eval.valdata): every target, a tail past whole windows too
    tokens = val_stream(load_tokens(str(val), "val", cfg.model.vocab_size), seq_len,
                        args.max_tokens if args.max_tokens >= 0 else DEFAULT_TARGETS[name])
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, device).eval()
    table = build_byte_table(sp, cfg.model.vocab_size).to_torch(device)
    luts = record.build_sentencepiece_luts(sp, cfg.model.vocab_size, device)
    record_tokens = torch.from_numpy(tokens.astype(np.int64))
    hidden = compiled_hidden(model) if compile_enabled(cfg.train.compile, device) else None
    facing, evaluate = RecordFacing(model), getattr(record, function)
    n_targets = int(tokens.shape[0]) - 1
    if name == "pr160":
        record_side = lambda: evaluate(None, facing, 0, 1, device, record_tokens, *luts, seq_len, stride)  # noqa: E731
        record_targets = np.arange(n_targets)
    else:
        os.environ["SW_EVAL_BATCH"] = str(R15_BATCH_WINDOWS)
        record_side = lambda: evaluate(types.SimpleNamespace(train_seq_len=seq_len), facing, 0, 1, device,  # noqa: E731
                                       record_tokens, *luts, stride=stride)
        record_targets = r15_targets(n_targets, seq_len, stride)
    sides = {name: record_side,
             "pgolf": lambda: evaluate_sliding(model, tokens, seq_len, stride, table, 65_536, device, hidden=hidden)}
    torch._dynamo.reset()
    results, first_call, wall, cpu = {}, {}, {s: [] for s in sides}, {s: [] for s in sides}
    for side, fn in sides.items():
        results[side], first_call[side], _ = timed(device, fn)
    for run in range(args.runs):
        for side in (list(sides) if run % 2 == 0 else list(reversed(sides))):
            _, w, c = timed(device, sides[side])
            wall[side].append(round(w, 3))
            cpu[side].append(round(c, 3))
    record_loss, record_bpb = results[name]
    ours = results["pgolf"]
    host_table = build_byte_table(sp, cfg.model.vocab_size).to_torch("cpu")
    same_loss, same_bpb = score_subset(ours.token_losses, tokens, record_targets, host_table)
    counts = {name: int(record_targets.size), "pgolf": n_targets}
    out = {"preset": preset, "overrides": args.set, "seq_len": seq_len, "stride": stride, "val_targets": n_targets,
           "pgolf_compiled": hidden is not None, "weights": "seeded initialisation (untrained)", "sides": {}}
    for side in sides:
        median_wall, median_cpu = statistics.median(wall[side]), statistics.median(cpu[side])
        out["sides"][side] = {"wall_s": wall[side], "cpu_s": cpu[side], "median_wall_s": median_wall, "median_cpu_s": median_cpu,
                              "first_call_s": round(first_call[side], 3), "scored_targets": counts[side],
                              "targets_per_s_wall": counts[side] / median_wall, "targets_per_s_cpu": counts[side] / median_cpu}
    out["sides"][name].update(val_loss=record_loss, val_bpb=record_bpb)
    out["sides"]["pgolf"].update(val_loss=ours.score.val_loss, val_bpb=ours.score.val_bpb)
    out["pgolf_on_record_targets"] = {"val_loss": same_loss, "val_bpb": same_bpb}
    rel = AGREE_REL[device.type]
    out["scores_agree"] = bool(np.isclose(same_loss, record_loss, rtol=rel, atol=0) and np.isclose(same_bpb, record_bpb, rtol=rel, atol=0))
    out["agreement_rel_tolerance"] = rel
    rates = {k: out["sides"]["pgolf"][k] / out["sides"][name][k] for k in ("targets_per_s_wall", "targets_per_s_cpu")}
    out["pgolf_speed_vs_record"] = {"wall": round(rates["targets_per_s_wall"], 3), "cpu": round(rates["targets_per_s_cpu"], 3)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", nargs="*", default=list(RECORDS), choices=list(RECORDS))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--script", action="append", default=[], metavar="RECORD=PATH",
                        help="a record's script elsewhere than the oracles folder, e.g. r15=.ref/r15_train_gpt_v5.py")
    parser.add_argument("--set", action="append", default=[], help="config override for both sides, e.g. NUM_LAYERS=2")
    parser.add_argument("--stride", type=int, default=0, help="sliding stride (0: each record's preset's, PR #160 256, R15 64)")
    parser.add_argument("--max-tokens", type=int, default=-1,
                        help="val targets to score (0: the whole val prefix; default: PR #160 4096, R15 2048)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where both sides run (cuda: bf16 autocast on both, pgolf's hidden states compiled)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/sliding_eval_<device>.json")
    args = parser.parse_args()
    args.script = dict(item.split("=", 1) for item in args.script)
    sys.path.insert(0, str(REPO / "src"))
    from pgolf.bench.report import device_slug
    from pgolf.runtime import device_name, git_commit, pick_device, versions
    from pgolf.train.rundir import write_json_atomic

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    load_before = os.getloadavg()
    comparisons = {name: compare(name, args, device) for name in args.records}
    report = {
        "what": "sliding-window evaluation at each record's stride: pgolf's evaluate_sliding vs PR #160's and R15's own "
                "functions, each on pgolf's model of the record's preset, the same weights and targets",
        "commit": git_commit(), "device": device_name(device), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(), "versions": versions(), "runs": args.runs, "comparisons": comparisons,
    }
    out = args.out or REPO / "benchmarks" / "results" / f"sliding_eval_{device_slug(device_name(device), 1)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    for name, c in comparisons.items():
        for side, s in c["sides"].items():
            print(f"{name:<6} {side:<6} median wall {s['median_wall_s']:8.2f} s cpu {s['median_cpu_s']:8.2f} s  "
                  f"{s['targets_per_s_cpu']:10,.0f} targets/cpu-s  val_bpb {s['val_bpb']:.6f}")
        print(f"{name:<6} pgolf speed vs record: wall {c['pgolf_speed_vs_record']['wall']:.2f}x, "
              f"cpu {c['pgolf_speed_vs_record']['cpu']:.2f}x; scores agree on the same targets: {c['scores_agree']}")
    print(f"written {out}")
    return 0 if all(c["scores_agree"] for c in comparisons.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
