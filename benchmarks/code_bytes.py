"""Code bytes: each record preset's pgolf bundle against the record's own code, counted the records' way.

Both sides in one run. pgolf's side is the shipped ``train_gpt.py`` that ``pgolf bundle --preset P``
writes (its size is what a submission counts). The record's side is computed here from its source
in the oracles folder (``PGOLF_ORACLES``, default ``../shared/oracles``): R35 ships a self-extracting
script, so its file is counted as shipped; every other record is counted as R44 counts its own code,
by R44's own ``_compressed_code_size`` (pyminify without renaming locals, literal statements and
asserts removed -> brotli-11 -> base85 + a two-line ``exec`` stub), taken from R44's source and run
on the record's ``train_gpt.py``. ``ratio`` = bundle / record: at most 1.0 means no larger.
Where the lrzip binary is installed, ``bundle_bytes_lrzip`` / ``ratio_lrzip`` are what
``pgolf bundle --lrzip`` would ship (lrzip's ZPAQ tried for the code; a bundle whose weights go
through lrzip tries it by default, so its ``bundle_bytes`` already may be lrzip), with the seconds
the shipped script takes to decode its payload (``lrzip_decode_s``).

Where a bundle's bytes go: per module of the bundle (the readable copy's ``# ---- module ----``
sections), its bytes without docstrings and annotations and its marginal compressed bytes (brotli of
the whole minus brotli of the whole without it); per construct, the compressed bytes the string
literals and the log/metric/print calls cost (the whole against the whole with them emptied); per
concern (``pgolf.<concern>``), the shipped bytes of its modules alone, and of the core concerns
together (model, optim, data, eval, tokenizer, quant, export: what a record's script does besides its
training loop and hyperparameters), ``core_ratio`` = that against the record's whole count.

Writes benchmarks/results/code_bytes.json with commit, machine and versions.

    PYTHONPATH=src python benchmarks/code_bytes.py [--presets P ...]
"""

from __future__ import annotations

import argparse
import ast
import base64
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import brotli

from pgolf.bundle.build import build_bundle, code_lrzip_default, readable_path_for
from pgolf.bundle.wrap import minify, wrap
from pgolf.check.selfextract import unwrap
from pgolf.export.codecs import lrzip_available
from pgolf.presets import build_config
from pgolf.runtime import git_commit
from pgolf.train.rundir import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "code_bytes.json"
ORACLES = Path(os.environ.get("PGOLF_ORACLES", REPO.parent / "shared" / "oracles"))
# preset -> (oracle folder, script), as the oracles README lists them
RECORDS = {
    "baseline": ("reference", "train_gpt.py"),
    "mlp3x_int8emb_seq2048": ("PR160_mlp3x_int8emb_seq2048", "train_gpt.py"),
    "smeargate_orthoinit_muonwd": ("R15_smeargate_orthoinit_muonwd", "train_gpt_v5.py"),
    "leakyrelu_ttt_parallel_muon": ("R22_leakyrelu_ttt_parallel_muon", "train_gpt.py"),
    "sp8192_recur_parres_ttt": ("R35_sp8192_recur_parres_ttt", "train_gpt.py"),
    "sp8192_lqer_sparsegate_bossmear": ("R44_sp8192_lqer_sparsegate_bossmear", "train_gpt.py"),
    "xsa_swiglu_lora_ttt_1xh100": ("PR1090_xsa_swiglu_lora_ttt_1xh100", "train_gpt.py"),
}
SHIPPED_WRAPPED = {"sp8192_recur_parres_ttt"}  # R35 ships its code self-extracting: its file is the count
LOG_CALLS = {"log", "metric", "print", "header"}


def r44_code_size():
    """R44's own ``_compressed_code_size``, compiled from R44's source (nothing else of it runs)."""
    path = ORACLES / RECORDS["sp8192_lqer_sparsegate_bossmear"][0] / "train_gpt.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_compressed_code_size")
    namespace = {"subprocess": subprocess, "base64": base64}
    exec(compile(ast.Module([fn], []), str(path), "exec"), namespace)
    return namespace["_compressed_code_size"]


def record_bytes(preset: str, counted) -> dict:
    folder, script = RECORDS[preset]
    path = ORACLES / folder / script
    if preset in SHIPPED_WRAPPED:
        return {"record": folder, "bytes": path.stat().st_size, "how": "the file as shipped (self-extracting)"}
    raw, wrapped = counted(path.read_text(encoding="utf-8"))
    return {"record": folder, "bytes": wrapped, "raw_bytes": raw, "how": "R44's _compressed_code_size on its source"}


def _plain(source: str) -> str:
    """The source without docstrings and annotations, as the minifier leaves it but for names."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.arg):
            node.annotation = None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
    return ast.unparse(tree)


def packed(text: str) -> int:
    return len(brotli.compress(text.encode(), quality=11, lgwin=24))


def per_module(readable: str) -> list[dict]:
    parts = re.split(r"^# ---- (\S+) ----$", readable, flags=re.M)
    head, sections = _plain(parts[0]), [(parts[i], _plain(parts[i + 1])) for i in range(1, len(parts), 2)]
    whole = packed("\n".join([head] + [s for _, s in sections]))
    rows = []
    for k, (name, text) in enumerate(sections):
        rest = "\n".join([head] + [s for j, (_, s) in enumerate(sections) if j != k])
        rows.append({"module": name, "bytes_plain": len(text.encode()), "compressed_marginal": whole - packed(rest)})
    return sorted(rows, key=lambda r: -r["compressed_marginal"])


class _Emptied(ast.NodeTransformer):
    def __init__(self, what: str):
        self.what = what

    def visit_Constant(self, node):
        return ast.Constant("") if self.what == "strings" and isinstance(node.value, str) else node

    def visit_JoinedStr(self, node):
        return ast.Constant("") if self.what == "strings" else node

    def visit_Expr(self, node):
        call = node.value
        name = getattr(getattr(call, "func", None), "attr", None) or getattr(getattr(call, "func", None), "id", None)
        if self.what == "log_calls" and isinstance(call, ast.Call) and name in LOG_CALLS:
            return ast.Pass()
        return self.generic_visit(node)


def per_construct(readable: str) -> dict:
    plain = _plain(readable)
    whole = packed(plain)
    return {what: whole - packed(ast.unparse(_Emptied(what).visit(ast.parse(plain)))) for what in ("strings", "log_calls")}


# The concerns that do what every record's script does besides its training loop and hyperparameters
CORE = ("model", "optim", "data", "eval", "tokenizer", "quant", "export")


def _concern(module: str) -> str:
    """``pgolf.model.gpt`` -> ``model``; ``pgolf.config`` -> ``config``; ``pgolf`` -> ``pgolf``."""
    return (module.split(".") + [module])[1]


def per_concern(readable: str) -> dict:
    """Shipped bytes of each concern's modules alone (the bundle's imports, then only those sections,
    minified and wrapped as the bundler does, brotli or lzma): what that part of pgolf would cost as a
    script of its own; and of :data:`CORE` together."""
    parts = re.split(r"^# ---- (\S+) ----\n", readable, flags=re.M)
    head, sections = parts[0], list(zip(parts[1::2], parts[2::2]))

    def shipped(keep) -> int:
        return len(wrap(minify(head + "".join(text for name, text in sections if keep(_concern(name))))).script.encode())

    concerns = sorted({_concern(name) for name, _ in sections})
    alone = {c: shipped(lambda k, c=c: k == c) for c in concerns}
    return {"alone": dict(sorted(alone.items(), key=lambda kv: -kv[1])), "core": list(CORE),
            "core_alone": shipped(lambda k: k in CORE)}


def measure(preset: str, counted, folder: Path) -> dict:
    """The bundle as ``pgolf bundle --preset P`` writes it, and (where the lrzip binary is here) what
    ``--lrzip`` would make of it: one build with lrzip among the candidates gives both."""
    out, cfg = folder / f"{preset}.py", build_config(preset, environ={})
    t0 = time.perf_counter()
    report = build_bundle(cfg, out, lrzip=lrzip_available())
    build_s = time.perf_counter() - t0
    candidates = dict(report.candidates)
    default = {c: n for c, n in candidates.items() if c != "lrzip-zpaq" or code_lrzip_default(cfg)}
    codec = min(default, key=default.get)
    readable = readable_path_for(out).read_text(encoding="utf-8")
    record = record_bytes(preset, counted)
    row = {
        "bundle_bytes": default[codec], "codec": codec, "candidates": candidates,
        "bytes_readable": report.bytes_raw, "bytes_minified": report.bytes_minified, "build_s": round(build_s, 1),
        **record, "ratio": round(default[codec] / record["bytes"], 3),
        "modules": per_module(readable), "constructs_compressed": per_construct(readable),
        "concerns_shipped": per_concern(readable),
    }
    row["core_ratio"] = round(row["concerns_shipped"]["core_alone"] / record["bytes"], 3)
    if "lrzip-zpaq" in candidates:
        best = min(candidates.values())
        row |= {"bundle_bytes_lrzip": best, "ratio_lrzip": round(best / record["bytes"], 3)}
        if report.codec == "lrzip-zpaq":  # the script's own start-up cost: decoding its payload
            t0 = time.perf_counter()
            unwrap(out.read_text(encoding="utf-8"))
            row["lrzip_decode_s"] = round(time.perf_counter() - t0, 2)
    return row


def lrzip_version() -> str | None:
    if not lrzip_available():
        return None
    return subprocess.run(["lrzip", "-V"], capture_output=True, text=True).stdout.strip() or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=list(RECORDS))
    args = parser.parse_args()
    if not ORACLES.is_dir():
        raise SystemExit(f"{ORACLES}: oracles folder not found (set PGOLF_ORACLES)")
    # R44's counter runs the pyminify command: the one beside this interpreter
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    counted = r44_code_size()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {preset: measure(preset, counted, Path(tmp)) for preset in args.presets}
    report = {
        "what": "bytes of each preset's shipped pgolf bundle vs its record's code counted the records' way",
        "presets": rows, "max_ratio": max(r["ratio"] for r in rows.values()),
        "commit": git_commit(), "device": "cpu", "cpu": platform.machine(), "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0], "python": platform.python_version(),
        "versions": {**{p: importlib.metadata.version(p) for p in ("python-minifier", "brotli")}, "lrzip": lrzip_version()},
    }
    if set(args.presets) == set(RECORDS):
        write_json_atomic(RESULTS, report)
    print(f"{'preset':<34} {'pgolf bundle':>12} {'--lrzip':>8} {'record':>8} {'ratio':>6} {'core alone':>10} {'ratio':>6}")
    for preset, r in rows.items():
        core = r["concerns_shipped"]["core_alone"]
        print(f"{preset:<34} {r['bundle_bytes']:>12,} {r.get('bundle_bytes_lrzip', 0):>8,} {r['bytes']:>8,} {r['ratio']:>6.2f}"
              f" {core:>10,} {r['core_ratio']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
