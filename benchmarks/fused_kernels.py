"""Fused Triton kernels against the unfused code they replace: forward + backward time, memory, agreement.

For each kernel (pgolf.kernels), one run times three sides at the top records' per-GPU shapes
(R43: 48 x 2048 = 98,304 tokens per rank, d 512, MLP 4x, vocab 8192), bf16 on CUDA:

* ``fused``: the Triton custom op;
* ``unfused_compiled``: the unfused PyTorch code under ``torch.compile`` (how training runs it, and
  so the side the fused kernel has to beat);
* ``unfused_eager``: the same code without compile.

``--mlp-tiles`` then times the fused MLP under each tile configuration given (the launch constants
of :mod:`pgolf.kernels.mlp`), which is how to pick its defaults on a new GPU.

Each side: ``--warmup`` untimed calls, then ``--repeats`` rounds of ``--iters`` forward + backward
calls; the median round per call is reported, with the peak memory of one call and the largest
relative difference of the output and input gradient from the compiled unfused side.

    python benchmarks/fused_kernels.py                 # CUDA, writes benchmarks/results/fused_kernels_<device>.json
    TRITON_INTERPRET=1 python benchmarks/fused_kernels.py --smoke --out /tmp/fk.json   # CPU: tiny shapes, checks the script
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_call_ms(step, device: torch.device, warmup: int, repeats: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    rounds = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        sync(device)
        rounds.append(1000.0 * (time.perf_counter() - t0) / iters)
    return statistics.median(rounds)


def peak_mib(step, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def compare(name: str, make_inputs, fused_fn, unfused_fn, device: torch.device, args) -> dict:
    """Time forward + backward of each side on the same inputs; outputs are reduced to a scalar by a fixed weight."""
    inputs = make_inputs()
    sides = {"fused": fused_fn, "unfused_eager": unfused_fn}
    if not args.no_compile:
        sides["unfused_compiled"] = torch.compile(unfused_fn, dynamic=False)
    reference = "unfused_eager" if args.no_compile else "unfused_compiled"
    weight = None
    results, outputs = {}, {}
    for side, fn in sides.items():
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]

        def step():
            for t in leaves:
                t.grad = None
            out = fn(*leaves)
            nonlocal weight
            if weight is None:  # a fixed random cotangent, the same for every side
                weight = torch.randn(out.shape, device=out.device, generator=torch.Generator(out.device).manual_seed(0)).to(out.dtype)
            (out * weight).sum().backward()
            return out

        out = step()
        outputs[side] = (out.detach(), leaves[0].grad.detach().clone())
        results[side] = {"ms_per_call": median_call_ms(step, device, args.warmup, args.repeats, args.iters),
                         "peak_mib": peak_mib(step, device)}
    for side in sides:
        results[side]["rel_diff_output"] = rel_diff(outputs[side][0], outputs[reference][0])
        results[side]["rel_diff_input_grad"] = rel_diff(outputs[side][1], outputs[reference][1])
    speedups = {f"fused_vs_{side}": results[side]["ms_per_call"] / results["fused"]["ms_per_call"]
                for side in sides if side != "fused"}
    print(f"{name}: " + ", ".join(f"{s} {r['ms_per_call']:.3f} ms" for s, r in results.items())
          + " | " + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items()))
    return {"sides": results, "speedup": speedups, "reference_side_for_diffs": reference}


DEFAULT_TILES = "128x128x64:8:3,128x256x64:8:3,256x128x64:8:3,128x128x64:4:4,64x128x64:4:4,128x64x64:4:4"


def parse_tiles(text: str) -> list[tuple[int, int, int, int, int]]:
    """``MxNxK:warps:stages,...`` -> [(M, N, K, warps, stages), ...]."""
    tiles = []
    for item in filter(None, text.split(",")):
        try:
            shape, warps, stages = item.split(":")
            m, n, k = (int(v) for v in shape.split("x"))
            tiles.append((m, n, k, int(warps), int(stages)))
        except ValueError:
            sys.exit(f"fused_kernels: --mlp-tiles item {item!r} is not MxNxK:warps:stages")
    return tiles


def sweep_mlp_tiles(tiles, make_inputs, slope: float, device: torch.device, args) -> list[dict]:
    """Fused MLP forward + backward per tile configuration (the module's launch constants, swapped in turn)."""
    from pgolf.kernels import mlp

    saved = (mlp._BLOCK_M, mlp._BLOCK_N, mlp._BLOCK_K, mlp._NUM_WARPS, mlp._NUM_STAGES)
    rows = []
    try:
        for m, n, k, warps, stages in tiles:
            mlp._BLOCK_M, mlp._BLOCK_N, mlp._BLOCK_K, mlp._NUM_WARPS, mlp._NUM_STAGES = m, n, k, warps, stages
            leaves = [t.detach().clone().requires_grad_() for t in make_inputs()]

            def step():
                mlp.fused_mlp(*leaves, slope).sum().backward()

            try:
                ms = median_call_ms(step, device, args.warmup, args.repeats, args.iters)
                rows.append({"tile": f"{m}x{n}x{k}", "warps": warps, "stages": stages, "ms_per_call": ms})
            except Exception as exc:  # a tile the GPU cannot hold (shared memory) is a result too
                rows.append({"tile": f"{m}x{n}x{k}", "warps": warps, "stages": stages, "error": f"{type(exc).__name__}: {exc}"[:300]})
            print(f"mlp tile {m}x{n}x{k} warps {warps} stages {stages}: "
                  + (f"{rows[-1]['ms_per_call']:.3f} ms" if "ms_per_call" in rows[-1] else rows[-1]["error"]))
    finally:
        mlp._BLOCK_M, mlp._BLOCK_N, mlp._BLOCK_K, mlp._NUM_WARPS, mlp._NUM_STAGES = saved
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=98_304, help="rows per call (R43: 48 x 2048 per GPU)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8192, help="the sp8192 records' vocabulary (1024: the baseline's)")
    parser.add_argument("--slope", type=float, default=0.5, help="LeakyReLU slope (0: relu^2)")
    parser.add_argument("--cap", type=float, default=30.0, help="logit softcap")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled unfused side")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, one round: checks the script (CPU + TRITON_INTERPRET=1)")
    parser.add_argument("--mlp-tiles", default=DEFAULT_TILES,
                        help="fused MLP tile configurations to sweep, MxNxK:warps:stages comma-separated ('' skips)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from pgolf.bench.report import device_slug
    from pgolf.kernels.support import fused_kernel_problem
    from pgolf.runtime import device_name, git_commit, versions
    from pgolf.train.rundir import write_json_atomic

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = fused_kernel_problem(device)
    if problem:
        sys.exit(f"fused_kernels: the kernels cannot run here: {problem}")
    tiles = parse_tiles(args.mlp_tiles)
    if args.smoke:
        args.tokens, args.dim, args.hidden, args.vocab = 256, 64, 128, 1024
        args.warmup, args.repeats, args.iters, args.no_compile = 1, 1, 1, True
        tiles = tiles[:2]
    dtype = torch.bfloat16 if device.type == "cuda" and not args.smoke else torch.float32

    from pgolf.kernels.mlp import fused_mlp
    from pgolf.kernels.softcapped_ce import softcapped_cross_entropy
    from pgolf.model.logits import softcap

    gen = torch.Generator(device).manual_seed(1)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=gen) * scale).to(dtype)

    def mlp_inputs():
        return [rand(args.tokens, args.dim), rand(args.hidden, args.dim, scale=args.dim**-0.5),
                rand(args.dim, args.hidden, scale=args.hidden**-0.5)]

    def unfused_mlp(x, up, down):
        return F.linear(F.leaky_relu(F.linear(x, up), args.slope).square(), down)

    targets = torch.randint(0, args.vocab, (args.tokens,), device=device, generator=gen)

    def ce_inputs():
        return [rand(args.tokens, args.vocab, scale=20.0)]

    def fused_ce(logits):
        return softcapped_cross_entropy(logits, targets, args.cap)[0]

    def unfused_ce(logits):  # the model's training path: cap in the activation dtype, CE in fp32
        return F.cross_entropy(softcap(logits, args.cap).float(), targets, reduction="none")

    report = {
        "what": "fused Triton kernels (pgolf.kernels) vs the unfused code, forward + backward per call",
        "commit": git_commit(), "device": device_name(device), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "versions": versions(), "dtype": str(dtype).replace("torch.", ""),
        "smoke": args.smoke, "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "shapes": {"tokens": args.tokens, "dim": args.dim, "hidden": args.hidden, "vocab": args.vocab},
        "timing": {"warmup": args.warmup, "repeats": args.repeats, "iters": args.iters},
        "kernels": {
            "mlp_leaky_relu2": compare("mlp", mlp_inputs, lambda x, u, d: fused_mlp(x, u, d, args.slope), unfused_mlp, device, args),
            "softcapped_ce": compare("softcapped_ce", ce_inputs, fused_ce, unfused_ce, device, args),
        },
        "mlp_tile_sweep": sweep_mlp_tiles(tiles, mlp_inputs, args.slope, device, args),
    }
    out = args.out or REPO / "benchmarks" / "results" / f"fused_kernels_{device_slug(device_name(device), 1)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
