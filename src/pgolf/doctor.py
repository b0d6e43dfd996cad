"""``pgolf doctor``: is this machine ready to train and score? One line per check, before the clock runs.

A fresh pod fails in a handful of known ways: no CUDA or the wrong GPU, FlashAttention 3 missing (a
silent slowdown), fused Triton kernels asked for where they cannot run, a temp folder mounted
``noexec`` (torch.compile dies mid-warm-up), a compressor's library or binary absent, the shards or
the tokenizer not where the configuration says, a full disk. Everything ``pgolf train`` refuses before
it starts (:mod:`pgolf.train.preflight`: the configured compressor not installed, a batch that does
not split over the ranks, the runs folder not writable or RUN_ID taken, no room for the checkpoint)
fails here too, through the same code. Each check returns a :class:`Finding`:
``ok``, ``warn`` (works, but slower or limited) or ``fail`` (a run would stop). The exit code is 1
when anything fails, else 0. The data checks read the configuration the way ``pgolf train`` does
(preset, the reference env vars, ``--set``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"
DESCRIPTION = """\
Is this machine ready to train and score? One line per check, before the clock runs.

A fresh pod fails in a handful of known ways: no CUDA or the wrong GPU, FlashAttention 3 missing (a
silent slowdown), fused Triton kernels asked for where they cannot run, a temp folder mounted noexec
(torch.compile dies mid-warm-up), a compressor's library or binary absent, the shards or the
tokenizer not where the configuration says, a full disk. Everything pgolf train refuses before it
starts (the configured compressor not installed, a batch that does not split over the ranks, the runs
folder not writable or RUN_ID taken, no room for the checkpoint) fails here too, through the same code.
Each check reports ok, WARN (works, but slower or limited) or FAIL (a run would stop). Exit code 1 when anything fails, else 0. The data
checks read the configuration the way pgolf train does (preset, the reference env vars, --set).
"""
MIN_FREE_BYTES = 1 << 30  # below this, one run's checkpoints and artifacts may not fit


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # OK, WARN or FAIL
    detail: str


def check_python() -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    return Finding("python", OK if sys.version_info >= (3, 10) else FAIL, version)


def check_torch() -> list[Finding]:
    import torch

    found = [Finding("torch", OK, f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})")]
    if not torch.cuda.is_available():
        found.append(Finding("gpu", WARN, "no CUDA device: training and evaluation run on the CPU (tests, demos)"))
        return found
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    major, minor = torch.cuda.get_device_capability(0)
    found.append(Finding("gpu", OK, f"{torch.cuda.device_count()} x {', '.join(names)} (sm{major}{minor})"))
    nccl = torch.distributed.is_available() and torch.distributed.is_nccl_available()
    found.append(Finding("nccl", OK if nccl else FAIL, "available" if nccl else "torch.distributed has no NCCL: torchrun on GPUs fails"))
    return found


def check_attention() -> Finding:
    import torch

    from pgolf.model.attn_backend import fa3_unavailable_reason

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    reason = fa3_unavailable_reason(device)
    if reason is None:
        return Finding("attention", OK, "FlashAttention 3")
    return Finding("attention", WARN, f"PyTorch SDPA, not FlashAttention 3: {reason}")


def check_compiler() -> Finding:
    """torch.compile needs Triton on CUDA and a C++ compiler on the CPU."""
    import importlib.util

    import torch

    if torch.cuda.is_available():
        ok = importlib.util.find_spec("triton") is not None
        return Finding("compile", OK if ok else WARN, "Triton importable" if ok else "Triton is not importable: PGOLF_COMPILE=auto cannot compile")
    cxx = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    return Finding("compile", OK if cxx else WARN, f"CPU inductor with {cxx}" if cxx else "no C++ compiler: torch.compile on the CPU fails (PGOLF_COMPILE=0 works)")


def check_training_preflight(cfg, runs_dir: str | os.PathLike, nproc: int) -> list[Finding]:
    """What ``pgolf train`` itself refuses before writing anything (:mod:`pgolf.train.preflight`: the
    configured compressor, the batch split over ``nproc`` ranks, the fused kernels, the runs folder and
    RUN_ID), and whether the disk there holds this model's checkpoint and artifact."""
    import torch

    from pgolf.train.preflight import checkpoint_bytes, disk_problem, preflight

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    found = [Finding(name, FAIL if problem else OK, problem or detail)
             for name, problem, detail in preflight(cfg, runs_dir, nproc, device)]
    state_bytes = checkpoint_bytes(cfg)
    problem = disk_problem(runs_dir, state_bytes)
    found.append(Finding("run space", FAIL if problem else OK, problem or f"room for a {state_bytes / 1e6:,.1f} MB checkpoint"))
    return found


def check_exec_temp(folder: str | None = None) -> Finding:
    """torch.compile writes and runs code under the temp folder (or TORCHINDUCTOR_CACHE_DIR): it must allow exec."""
    folder = folder or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or tempfile.gettempdir()
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        fd, script = tempfile.mkstemp(dir=folder, prefix="pgolf-doctor-", suffix=".sh")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write("#!/bin/sh\nexit 0\n")
            os.chmod(script, 0o700)
            subprocess.run([script], check=True, timeout=10)
        finally:
            Path(script).unlink(missing_ok=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return Finding("exec temp", FAIL, f"{folder}: cannot run a file written there ({type(exc).__name__}); "
                                          "set TMPDIR or TORCHINDUCTOR_CACHE_DIR to a folder that allows exec")
    return Finding("exec temp", OK, folder)


def check_compressors() -> Finding:
    from pgolf.export.codecs import every_codec

    have = [c.name for c in every_codec() if c.available()]  # every usable one, not only auto's candidates
    missing = [c.name for c in every_codec() if c.name not in have]
    detail = ", ".join(have) + (f"; missing: {', '.join(missing)} (install its package or binary to use it)" if missing else "")
    return Finding("compressors", OK if not missing else WARN, detail)


def check_data(cfg) -> list[Finding]:
    """The configuration's tokenizer, train and val shards: present, readable, agreeing on the vocab, made
    with this tokenizer (as their manifest records), and for a CaseOps val set with its byte sidecar."""
    from pgolf.data.identity import check_tokenizer
    from pgolf.data.shards import read_header, resolve_shards
    from pgolf.errors import PgolfError
    from pgolf.eval.valdata import check_val_bytes
    from pgolf.tokenizer.spm import check_vocab_size, load_tokenizer

    found, sp = [], None
    try:
        sp = load_tokenizer(cfg.data.tokenizer_path)
        check_vocab_size(sp, cfg.model.vocab_size, cfg.data.tokenizer_path)
        found.append(Finding("tokenizer", OK, f"{cfg.data.tokenizer_path} ({cfg.model.vocab_size} pieces)"))
    except PgolfError as exc:
        found.append(Finding("tokenizer", FAIL, str(exc)))
    for split, spec in (("train", cfg.data.train_glob()), ("val", cfg.data.val_glob())):
        try:
            files = resolve_shards(spec, split)
            tokens = sum(read_header(f) for f in files)
        except PgolfError as exc:
            found.append(Finding(f"{split} shards", FAIL, f"{exc} (`pgolf data download` fetches the shards)"))
            continue
        try:
            if sp is not None:  # made with this tokenizer; a CaseOps val set has its byte sidecar
                check_tokenizer(files, cfg.data.tokenizer_path)
                if split == "val":
                    check_val_bytes(sp, files)
            found.append(Finding(f"{split} shards", OK, f"{len(files)} file(s), {tokens:,} tokens ({spec})"))
        except PgolfError as exc:
            found.append(Finding(f"{split} shards", FAIL, str(exc)))
    return found


def check_disk(path: str | os.PathLike) -> Finding:
    where = Path(path).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    status = OK if free >= MIN_FREE_BYTES else WARN
    return Finding("disk", status, f"{free / 1e9:.1f} GB free at {where}")


def run_checks(cfg, runs_dir: str | os.PathLike = "runs", nproc: int = 1) -> list[Finding]:
    return [check_python(), *check_torch(), check_attention(), check_compiler(), check_exec_temp(), check_compressors(),
            *check_training_preflight(cfg, runs_dir, nproc), *check_data(cfg), check_disk(cfg.data.data_path)]


MARKS = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL"}


def _doctor(args) -> int:
    from pgolf.presets import build_config

    findings = run_checks(build_config(args.preset, args.overrides), args.runs_dir, args.nproc)
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            print(f"{MARKS[f.status]}  {f.check:<12} {f.detail}")
        fails = sum(f.status == FAIL for f in findings)
        warns = sum(f.status == WARN for f in findings)
        print(f"{fails} failing, {warns} warning{'s' if warns != 1 else ''}")
    return 1 if any(f.status == FAIL for f in findings) else 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check this machine: GPU, FlashAttention 3, compile, compressors, data, disk",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="baseline", help="configuration whose data paths are checked (default: baseline)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, as in pgolf train (e.g. DATA_PATH=...)")
    parser.add_argument("--runs-dir", default="runs", help="where pgolf train will write runs/<run_id>/ (default: runs)")
    parser.add_argument("--nproc", type=int, default=int(os.environ.get("WORLD_SIZE", "1")),
                        help="processes the run will use (torchrun --nproc_per_node), for the batch split (default: 1)")
    parser.add_argument("--json", action="store_true", help="the findings as JSON")
    parser.set_defaults(handler=_doctor)
