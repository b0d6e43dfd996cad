"""pgolf's lzma: the smallest of its settings against xz's default literal setting alone, side by side.

pgolf's ``lzma`` compressor (pgolf.export.codecs) keeps the smallest .lzma stream of presets 9 and
9 extreme under three (lc, pb) literal settings, tried in threads; before, it tried the two presets
under xz's default (3, 2) only. Both sides run here in one process on the same payloads, alternating:
the payload of each lzma preset at its full width (PR #160, R22, PR #1090), quantized by the preset's
own policy and laid out by its serializer, from the model's init with its zero-initialized matrices
given trained-like N(0, 0.02) values (no trained checkpoint is needed to compare compressors on
codes of that shape; the bytes of real trained codes differ). Per payload: each side's bytes and
wall time, and which setting won.

Writes benchmarks/results/lzma_settings.json with commit, machine, load and versions.

    PYTHONPATH=src python benchmarks/lzma_settings.py [--presets P ...]
"""

from __future__ import annotations

import argparse
import lzma
import os
import platform
import sys
import time
from pathlib import Path

import torch

from pgolf.export import codecs
from pgolf.export.container import encode_payload
from pgolf.model.gpt import build_model, count_parameters
from pgolf.presets import build_config
from pgolf.quant.policy import quantize_for_export
from pgolf.runtime import git_commit
from pgolf.train.rundir import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "lzma_settings.json"
PRESETS = ["mlp3x_int8emb_seq2048", "leakyrelu_ttt_parallel_muon", "xsa_swiglu_lora_ttt_1xh100"]


def default_setting_only(data: bytes) -> bytes:
    """What pgolf's lzma did before: the smaller of presets 9 and 9e under xz's (lc 3, pb 2), in turn."""
    return min((codecs._lzma_try(data, p, 3, 2) for p in codecs.LZMA_PRESETS), key=len)


def payload_of(preset: str) -> tuple[bytes, int]:
    cfg = build_config(preset, environ={})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2 and bool(p.abs().max() == 0):
                p.normal_(0, 0.02)
    q = quantize_for_export({k: v.detach() for k, v in model.state_dict().items()}, cfg.quant, None)
    return encode_payload(q, {"preset": preset}, serializer=cfg.quant.serializer), count_parameters(model)


def timed(fn, data: bytes) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    out = fn(data)
    return out, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    rows = {}
    for preset in args.presets:
        data, params = payload_of(preset)
        before_s, now_s = [], []
        for _ in range(args.repeats):  # alternating, so that load drifts hit both sides alike
            before, t = timed(default_setting_only, data)
            before_s.append(t)
            (setting, now), t = timed(codecs.lzma_smallest, data)
            now_s.append(t)
        assert lzma.decompress(now) == data
        rows[preset] = {
            "params": params, "payload_bytes": len(data), "bytes_default_setting": len(before), "bytes_pgolf": len(now),
            "bytes_saved": len(before) - len(now), "saved_pct": round(100 * (len(before) - len(now)) / len(before), 3),
            "winner": "preset {}, lc {}, pb {}".format("9" if setting[0] == 9 else "9e", *setting[1:]), "seconds_default_setting": [round(t, 2) for t in before_s],
            "seconds_pgolf": [round(t, 2) for t in now_s],
            "time_ratio": round(min(now_s) / min(before_s), 2),
        }
        print(preset, rows[preset], flush=True)
    report = {
        "what": "pgolf's lzma (smallest of presets 9/9e x (lc, pb) in (3,2), (4,0), (0,0), in threads) against "
                "presets 9/9e under (3,2) only, on each preset's full-width payload of init weights",
        "presets": rows, "threads": min(len(codecs.LZMA_PRESETS) * len(codecs.LZMA_PROPERTIES), os.cpu_count() or 1),
        "commit": git_commit(), "device": "cpu", "cpu": platform.machine(), "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0], "python": platform.python_version(), "torch": torch.__version__,
        "liblzma": "python " + sys.version.split()[0] + " lzma module",
    }
    if set(args.presets) == set(PRESETS):
        write_json_atomic(RESULTS, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
