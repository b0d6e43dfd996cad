"""Fuzz the artifact loader: >= 10,000 corrupted artifacts must each end in a PgolfError.

Corruptions of valid v1 and v2 artifacts (every compressor available): truncations, bit flips,
byte overwrites, lying header fields (length, codec, version) and forged payloads whose JSON
metadata lies (shapes, bits, keys, LQER records) re-framed with a valid CRC so they reach the payload decoder.
Any other exception is a crash; the slowest input is recorded. Writes
benchmarks/results/fuzz_loader.json.

    PYTHONPATH=src python benchmarks/fuzz_loader.py [--inputs 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

from pgolf.errors import PgolfError
from pgolf.export.codecs import available_codecs
from pgolf.export.container import HEADER_BYTES, decode_artifact, encode_artifact, encode_payload, pack_container
from pgolf.quant.lqer import add_lqer
from pgolf.quant.policy import quantize_state_dict_policy

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz_loader.json"
CAP = 1 << 20  # decompressed-size cap used while fuzzing: bounds memory per input


def sample_states() -> list[tuple[str, object]]:
    g = torch.Generator().manual_seed(0)
    sd = {
        "tok_emb.weight": torch.randn(64, 32, generator=g),
        "blocks.0.attn.c_q.weight": torch.randn(32, 32, generator=g),
        "blocks.0.mlp.fc.weight": torch.randn(64, 32, generator=g),
        "blocks.0.attn_scale": torch.ones(32),
        "steps": torch.tensor(1),
    }
    states = [(p, quantize_state_dict_policy(sd, p)) for p in ("int8", "int6,small=0", "int4g16:mse,small=0", "ternaryg16,small=0")]
    # LQER corrections: asym (groups of 64) on the worst tensor, sym (no whole group of 100) on the next.
    q = add_lqer(quantize_state_dict_policy(sd, "int4,small=0"), sd, rank=4, top_k=1)
    return [*states, ("int4+lqer,small=0", add_lqer(q, sd, rank=2, top_k=1, group_size=100))]


def corrupt(blob: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "bitflip", "bitflips", "overwrite", "length", "codec", "version", "append"])
    b = bytearray(blob)
    if kind == "truncate":
        return kind, bytes(b[: rng.randrange(len(b))])
    if kind in ("bitflip", "bitflips"):
        for _ in range(1 if kind == "bitflip" else rng.randint(2, 16)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind == "overwrite":
        i = rng.randrange(len(b))
        b[i : i + 8] = rng.randbytes(8)
        return kind, bytes(b)
    if kind == "length":
        struct.pack_into("<Q", b, 10, rng.choice([0, 1, len(blob) * 3, 2**63, rng.getrandbits(64)]))
        return kind, bytes(b)
    if kind == "codec":
        b[9] = rng.randrange(256)
        return kind, bytes(b)
    if kind == "version":
        b[8] = rng.randrange(256)
        return kind, bytes(b)
    return kind, blob + rng.randbytes(rng.randint(1, 64))


def forged_payload(payload: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A payload whose metadata JSON is mutated, re-framed with a correct CRC (zlib)."""
    (n,) = struct.unpack_from("<Q", payload)
    header = json.loads(payload[8 : 8 + n])
    doc = json.loads(header["__metadata__"]["pgolf"])
    entry = rng.choice(doc["entries"])
    field = rng.choice(["shape", "bits", "group_size", "key", "kind", "restore_dtype", "layout", "drop", "name", "lqer"])
    parts = entry.get("tensors", {})
    rec = parts.get("values", {})
    value = rng.choice([-1, 0, 1, 3, 9, 2**40, "x", None, [], [2**31, 2**31], [1] * 20])
    if field == "lqer":
        lqer = entry.get("lqer")
        if isinstance(lqer, dict) and rng.random() < 0.8:
            sub = rng.choice(["mode", "bits", "group_size", "tensors"])
            if sub == "tensors":
                lqer["tensors"][rng.choice(list(lqer["tensors"]))] = rng.choice([str(value), rec.get("key", "")])
            else:
                lqer[sub] = rng.choice([value, "sym", "asym"])
        else:
            entry["lqer"] = value
    elif field == "shape" and rec:
        rec["shape"] = value
    elif field in ("bits", "group_size", "kind", "restore_dtype", "name"):
        entry[field] = value
    elif field == "key" and rec:
        rec["key"] = rng.choice([str(value), parts.get("scale", {}).get("key", "")])
    elif field == "layout" and rec:
        rec["layout"] = rng.choice(["bits", "shuffle", "raw", "zip"])
    else:
        doc["entries"].remove(entry)
    header["__metadata__"]["pgolf"] = json.dumps(doc)
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    forged = struct.pack("<Q", len(new_header)) + new_header + payload[8 + n :]
    return f"forged_{field}", pack_container(forged, "zlib")


def run(inputs: int, seed: int) -> dict:
    rng = random.Random(seed)
    bases = []
    for policy, q in sample_states():
        for codec in available_codecs():
            bases.append((f"{policy}/{codec}", encode_artifact(q, {"p": policy}, codec, shuffle=rng.random() < 0.5, pack=rng.random() < 0.5)))
    payloads = [encode_payload(q, {}, shuffle=True, pack=p) for _, q in sample_states() for p in (False, True)]
    counts: dict[str, int] = {}
    outcomes = {"pgolf_error": 0, "loaded": 0, "crash": 0}
    crashes: list[str] = []
    slowest = (0.0, "")
    for i in range(inputs):
        if i % 4 == 3:
            kind, blob = forged_payload(rng.choice(payloads), rng)
            base = "forged"
        else:
            base, valid = rng.choice(bases)
            kind, blob = corrupt(valid, rng)
        counts[kind] = counts.get(kind, 0) + 1
        t0 = time.perf_counter()
        try:
            decode_artifact(blob, "fuzz", CAP)
            outcomes["loaded"] += 1  # a mutation that left a valid artifact (e.g. a flip in padding)
        except PgolfError as exc:
            outcomes["pgolf_error"] += 1
            assert "\n" not in str(exc)
        except Exception as exc:  # noqa: BLE001 - anything else is exactly what we are hunting
            outcomes["crash"] += 1
            crashes.append(f"{base} {kind}: {type(exc).__name__}: {str(exc)[:200]}")
        dt = time.perf_counter() - t0
        if dt > slowest[0]:
            slowest = (dt, f"{base} {kind}")
    return {"inputs": inputs, "seed": seed, "mutations": counts, "outcomes": outcomes, "crashes": outcomes["crash"],
            "crash_examples": crashes[:20], "max_seconds_per_input": round(slowest[0], 4), "slowest_input": slowest[1],
            "decompressed_cap_bytes": CAP, "header_bytes": HEADER_BYTES}


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import brotli
    import safetensors
    import zstandard

    return {"commit": commit, "python": sys.version.split()[0], "torch": torch.__version__, "safetensors": safetensors.__version__,
            "zstandard": zstandard.__version__, "brotli": brotli.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "compressors": available_codecs()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = {**run(args.inputs, args.seed), "total_seconds": None, **environment()}
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps({k: result[k] for k in ("inputs", "outcomes", "max_seconds_per_input", "slowest_input", "total_seconds")}))
    return 1 if result["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
