"""Time quantizing + serializing the 17,059,912-parameter baseline (GPTQ excluded) on this CPU.

For each (policy, compressor): wall time of quantize_state_dict_policy + encode_artifact, the
artifact bytes, and the int8 + zlib reference for comparison. Weights are the baseline's own
initialization scaled like trained weights (no trained checkpoint is needed to time the path).
Writes benchmarks/results/quant_speed.json with commit, device, versions and machine load.

    PYTHONPATH=src python benchmarks/quant_speed.py
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from pgolf.export.container import encode_artifact
from pgolf.model.gpt import build_model, count_parameters
from pgolf.presets import baseline
from pgolf.quant.policy import quantize_state_dict_policy
from pgolf.runtime import git_commit
from pgolf.train.rundir import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "quant_speed.json"
# (policy, compressor, bit-pack the codes): the reference, then low-bit policies with the records' compressors.
CASES = [("int8", "zlib", False), ("int6:mse", "zlib", False), ("int6:mse", "zstd", False),
         ("embed=int8,attn=int6:mse,mlp=int5", "zstd", False), ("embed=int8,attn=int6:mse,mlp=int5", "zstd", True),
         ("embed=int8,attn=int6:mse,mlp=int5", "brotli", True)]


def main() -> int:
    torch.manual_seed(0)
    model = build_model(baseline().model)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and bool(p.abs().max() == 0):  # zero-initialized projections: give them trained-like values
                p.normal_(0, 0.02)
    sd = model.state_dict()
    rows = []
    for policy, codec, pack in CASES:
        t0 = time.perf_counter()
        q = quantize_state_dict_policy(sd, policy)
        t1 = time.perf_counter()
        blob = encode_artifact(q, {}, codec, pack=pack)
        t2 = time.perf_counter()
        rows.append({"policy": policy, "compressor": codec, "bitpack": pack, "quantize_s": round(t1 - t0, 2), "serialize_s": round(t2 - t1, 2),
                     "total_s": round(t2 - t0, 2), "bytes_model": len(blob)})
        print(json.dumps(rows[-1]), flush=True)
    commit = git_commit()
    result = {"params": count_parameters(model), "cases": rows, "commit": commit, "device": "cpu",
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
              "note": "weights: the baseline's init with zero-init matrices set to N(0, 0.02); at init scale the "
                      "reference int8's 1/127 minimum scale makes codes tiny, so int8 compresses better than int6 here",
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
