"""Compile every fused kernel the way training launches it, for a GPU architecture, on any machine.

Triton's wheel carries its whole compiler (front end, LLVM, ptxas), so lowering a kernel to a cubin
needs no GPU: this catches what the CPU interpreter cannot (types of loop-carried values, what
Triton can lower, register and shared-memory limits). Run in a fresh process without
TRITON_INTERPRET, since ``triton.jit`` decides between interpreter and compiler at import:

    python tests/kernels/compile_for_gpu.py [--arch 90] [--bundle train_gpt.py]

``--bundle`` compiles the kernels a single-file bundle carries (found by their parameter names)
instead of the package's, so the minified source Triton re-parses is what gets compiled.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time


def launches(ce, mlp) -> list[tuple[str, object, dict, dict, dict]]:
    """(name, kernel, argument types, constexprs, options) for each launch training makes, in bf16.

    Integer arguments equal to 1 (unit strides) are constexprs, as Triton's launcher specialises them;
    every other pointer and integer is taken to be 16-aligned (:func:`launch_attrs`), as at the
    records' shapes (d 512, hidden 2048, vocab 8192, token counts in multiples of 16).
    """
    ptr = "*bf16"
    ce_fwd = {"logits_ptr": ptr, "targets_ptr": "*i64", "losses_ptr": "*fp32", "lse_ptr": "*fp32",
              "row_stride": "i32", "n_cols": "i32", "cap": "fp32"}
    ce_bwd = {"logits_ptr": ptr, "targets_ptr": "*i64", "lse_ptr": "*fp32", "grad_losses_ptr": "*fp32",
              "grad_lse_ptr": "*fp32", "grad_logits_ptr": ptr, "row_stride": "i32", "grad_row_stride": "i32",
              "n_cols": "i32", "cap": "fp32"}
    ce_const = {"BLOCK": ce._MAX_BLOCK}
    ce_opts = {"num_warps": ce._NUM_WARPS}
    matmul = {name: ptr for name in ("a_ptr", "b_ptr", "out_ptr", "aux_ptr")}
    matmul |= {name: "i32" for name in ("M", "N", "K", "stride_am", "stride_ak", "stride_bn", "stride_bk", "stride_om", "stride_on")}
    matmul["slope"] = "fp32"
    tiles = {"BLOCK_M": mlp._BLOCK_M, "BLOCK_N": mlp._BLOCK_N, "BLOCK_K": mlp._BLOCK_K, "GROUP_M": mlp._GROUP_M,
             "PRECISION": "tf32", "UPCAST": False}
    mm_opts = {"num_warps": mlp._NUM_WARPS, "num_stages": mlp._NUM_STAGES}
    # forward: x [M, d] @ up[h, d]^T; backward: dout [M, d] @ down.t(), down [d, h] (so B's unit stride is its rows')
    forward_units = {"stride_ak": 1, "stride_bk": 1, "stride_on": 1}
    backward_units = {"stride_ak": 1, "stride_bn": 1, "stride_on": 1}
    return [
        ("softcapped_ce forward", ce._forward_kernel, ce_fwd, ce_const, ce_opts),
        ("softcapped_ce backward", ce._backward_kernel, ce_bwd, ce_const, ce_opts),
        ("mlp forward", mlp._matmul_act_kernel, matmul, tiles | forward_units | {"FORWARD": True}, mm_opts),
        ("mlp backward", mlp._matmul_act_kernel, matmul, tiles | backward_units | {"FORWARD": False}, mm_opts),
    ]


def launch_attrs(kernel, types: dict, constexprs: dict) -> dict:
    """Triton's launch-time specialisation: pointers and integers divisible by 16 are marked so."""
    return {(kernel.arg_names.index(p),): [["tt.divisibility", 16]]
            for p, t in types.items() if p not in constexprs and (t.startswith("*") or t.startswith("i"))}


def bundle_kernels(path: str, package_kernels: list) -> dict:
    """The bundle's JIT functions standing in for each package kernel, matched by parameter names."""
    from triton.runtime.jit import JITFunction

    namespace = runpy.run_path(path, run_name="bundle_under_test")  # defines everything, runs no main()
    found = {tuple(v.arg_names): v for v in namespace.values() if isinstance(v, JITFunction)}
    return {id(k): found.get(tuple(k.arg_names)) for k in package_kernels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100, 80: A100)")
    parser.add_argument("--bundle", help="compile the kernels inside this single-file bundle instead")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_for_gpu: unset TRITON_INTERPRET (the interpreter compiles nothing)")
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pgolf.kernels import mlp, softcapped_ce

    plan = launches(softcapped_ce, mlp)
    stand_ins = bundle_kernels(args.bundle, [k for _, k, *_ in plan]) if args.bundle else {}
    failed = 0
    for name, kernel, types, constexprs, options in plan:
        if args.bundle:
            kernel = stand_ins[id(kernel)]
            if kernel is None:
                print(f"FAIL {name}: no kernel with its parameters in {args.bundle}")
                failed += 1
                continue
        t0 = time.perf_counter()
        signature = {p: "constexpr" if p in constexprs else types.get(p, "constexpr") for p in kernel.arg_names}
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, launch_attrs(kernel, types, constexprs)),
                                      target=GPUTarget("cuda", args.arch, 32), options=options)
        except Exception as exc:  # report every kernel, then fail
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            failed += 1
            continue
        pipelined = "async_copy" in compiled.asm["ttgir"]  # the K loop's loads overlap the matmuls
        print(f"ok {name}: sm_{args.arch} cubin {len(compiled.asm['cubin'])} bytes, shared {compiled.metadata.shared} bytes, "
              f"{'software-pipelined, ' if pipelined else ''}{time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
