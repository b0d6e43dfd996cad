"""``pgolf submit``: finished seeds of one configuration -> ``records/<track>/<date>_<name>/``.

The folder holds what a records PR holds (challenge.md sec. 4): ``README.md`` (summary, per-seed
table, sizes, timings, config and its diff from the baseline preset, significance when given),
``submission.json`` (the fields records use), every seed's ``train_seed<N>.log``, the bundled
``train_gpt.py`` and ``requirements.txt``. Runs whose configurations differ (other than seed, run id
and data locations) are refused; every seed given is kept and reported. Code bytes are the
bundle's bytes, so each seed's total is its artifact bytes plus the shipped script
(:func:`seed_size`, through the one size accounting of :mod:`pgolf.export.artifact`).

The record track (``10min_16mb``) takes only runs comparable with its records
(:mod:`pgolf.check.track`): any finding refuses the folder, one line per reason. A given
``--bundle`` must be the script that trained every seed, unchanged by the environment; without
one, the script is built from the runs' configuration. ``--date`` must be a real YYYY-MM-DD date.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev

from pgolf.check.track import RECORD_TRACK, facts_from_run, track_findings
from pgolf.config import from_dict
from pgolf.errors import PgolfError
from pgolf.files import check_writable, make_folder, os_error_line, write_failure
from pgolf.export.artifact import (
    BUNDLE_KIND, CODE_KIND_NOTES, SIZE_CAP_BYTES, SizeReport, count_code_bytes, make_size_report, size_report,
)
from pgolf.experiments.read import IDENTITY_FIELDS, LOG, Run, config_differences, load_run

TRACKS = ("10min_16mb", "non_record_16mb")
BASE_REQUIREMENTS = ("numpy", "torch", "sentencepiece", "safetensors", "tqdm")


@dataclass(frozen=True)
class Submission:
    name: str
    author: str
    github_id: str
    track: str = "10min_16mb"
    blurb: str = ""
    date: str = ""  # YYYY-MM-DD, default today (UTC)


def check_same_configuration(runs: list[Run]) -> None:
    if len(runs) < 1:
        raise PgolfError("submit: give at least one run directory")
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise PgolfError(f"submit: seed {next(s for s in seeds if seeds.count(s) > 1)} appears twice")
    for run in runs[1:]:
        diff = config_differences(runs[0].config, run.config, ignore=IDENTITY_FIELDS)
        if diff:
            key, (a, b) = next(iter(diff.items()))
            raise PgolfError(f"submit: {run.path} differs from {runs[0].path} in {key} ({a!r} vs {b!r}); one submission is one configuration")


def checked_date(text: str) -> str:
    """``--date`` as given when it is a real YYYY-MM-DD date; today (UTC) when empty."""
    if not text:
        return _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        _dt.date.fromisoformat(text)
    except ValueError:
        raise PgolfError(f"--date {text!r}: not a real date (expected YYYY-MM-DD)") from None
    return text


def not_comparable(runs: list[Run], shipped: bytes | None, bundle_given: bool) -> list[str]:
    """One line per reason a run does not belong on the record track; ``shipped`` None: the script rules skipped."""
    lines = []
    for run in runs:
        for finding in track_findings(facts_from_run(run.path, f"seed {run.seed}"), shipped):
            if finding.package_run and not bundle_given:
                continue  # the shipped script is built from these runs' configuration
            lines.append(finding.message)
    return lines


def refuse_if_not_comparable(lines: list[str]) -> None:
    if lines:
        raise PgolfError(f"submit: not comparable with the {RECORD_TRACK} track's records (fix the runs, or use "
                         f"--track non_record_16mb):\n" + "\n".join(lines))


def folder_name(sub: Submission) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "", sub.name.title()) if " " in sub.name else re.sub(r"[^A-Za-z0-9_]+", "", sub.name)
    if not slug:
        raise PgolfError(f"--name {sub.name!r}: needs letters or digits")
    return f"{sub.date or _dt.datetime.now(_dt.timezone.utc).date().isoformat()}_{slug}"


def seed_size(run: Run, script: Path) -> SizeReport:
    """A seed's size with the shipped ``script`` as its code: its artifact file when the run folder has
    it, else the model bytes the run recorded."""
    from pgolf.train.loop import ARTIFACT_NAME

    artifact = run.path / ARTIFACT_NAME
    if artifact.is_file():
        return size_report(artifact, [script])
    return make_size_report(int(run.results["bytes_model"]), count_code_bytes([script]), f"bundle {script.name}", [script.name])


def seed_row(run: Run, size: SizeReport) -> dict:
    r = run.results
    return {
        "val_loss": r["val_loss"], "val_bpb": r["val_bpb"],
        "pre_quant_val_bpb": r["pre_quant"]["val_bpb"],
        "artifact_bytes": size.bytes_total,  # the records' name for bytes_total
        "bytes_model": size.bytes_model, "bytes_code": size.bytes_code, "code_kind": size.code_kind,
        "code_source": size.code_source, "headroom": size.headroom,
        "steps": r["steps"], "step_avg_ms": round(r["step_avg_ms"], 2),
        "train_time_s": round(r["train_time_s"], 2), "eval_time_s": round(r["eval_time_s"], 2),
        "run_id": run.run_id,
    }


def _std(values: list[float]) -> float | None:
    return stdev(values) if len(values) >= 2 else None


def submission_json(sub: Submission, runs: list[Run], sizes: list[SizeReport], significance: dict | None) -> dict:
    """``sizes``: each run's :func:`seed_size`, in the order of ``runs``."""
    rows = {str(run.seed): seed_row(run, size) for run, size in zip(runs, sizes)}
    bundle_bytes = sizes[0].bytes_code
    bpb = [row["val_bpb"] for row in rows.values()]
    loss = [row["val_loss"] for row in rows.values()]
    sizes = [row["artifact_bytes"] for row in rows.values()]
    first = runs[0].results
    versions = first.get("versions", {})
    data = {
        "author": sub.author, "github_id": sub.github_id, "name": sub.name, "blurb": sub.blurb,
        "date": sub.date, "track": sub.track,
        "val_loss": fmean(loss), "val_bpb": fmean(bpb), "val_loss_std": _std(loss), "val_bpb_std": _std(bpb),
        "seeds": [run.seed for run in runs], "seed_results": rows,
        "bytes_total": max(sizes), "bytes_code": bundle_bytes,
        "artifact_bytes_mean": round(fmean(sizes)), "artifact_bytes_max": max(sizes),
        "pre_quant_val_bpb": fmean(row["pre_quant_val_bpb"] for row in rows.values()),
        "train_steps_mean": fmean(row["steps"] for row in rows.values()),
        "step_avg_ms_mean": round(fmean(row["step_avg_ms"] for row in rows.values()), 2),
        "train_time_s_mean": round(fmean(row["train_time_s"] for row in rows.values()), 2),
        "eval_time_s_mean": round(fmean(row["eval_time_s"] for row in rows.values()), 2),
        "hardware": f"{first.get('world_size', 1)}x {first.get('device', 'unknown')}",
        "pytorch_version": versions.get("torch"), "cuda_version": versions.get("cuda"),
        "python_version": versions.get("python"), "pgolf_version": versions.get("pgolf"),
        "preset": runs[0].config.get("preset"),
    }
    if significance:
        data["t_statistic"] = significance["t"]
        data["welch_df"] = significance.get("welch_df")
        data.update({k: v for k, v in significance.items() if k.startswith("delta_vs_")})
    return data


def _table(rows: dict) -> list[str]:
    out = ["| seed | steps | step_avg ms | train s | eval s | pre-quant bpb | val_bpb | val_loss | artifact bytes |",
           "|---|---|---|---|---|---|---|---|---|"]
    for seed, r in rows.items():
        out.append(f"| {seed} | {r['steps']:,} | {r['step_avg_ms']:.2f} | {r['train_time_s']:.1f} | {r['eval_time_s']:.1f} | "
                   f"{r['pre_quant_val_bpb']:.4f} | **{r['val_bpb']:.8f}** | {r['val_loss']:.8f} | {r['artifact_bytes']:,} |")
    return out


def readme(sub: Submission, data: dict, runs: list[Run], bundle_name: str, significance_text: str | None) -> str:
    from pgolf.presets import baseline

    cfg = runs[0].config
    diff = config_differences(baseline().to_dict(), cfg, ignore=IDENTITY_FIELDS)
    std = f", std {data['val_bpb_std']:.5f}" if data["val_bpb_std"] is not None else ""
    lines = [
        f"# {sub.name}", "",
        f"**val_bpb {data['val_bpb']:.5f}** (mean of {len(runs)} seed(s){std}) | val_loss {data['val_loss']:.5f} nats | "
        f"max {data['bytes_total']:,} bytes | {data['hardware']}", "",
    ]
    if sub.blurb:
        lines += [sub.blurb, ""]
    lines += ["## Results", "", *_table(data["seed_results"]), "",
              f"Every seed that was run is listed. Code bytes: {data['bytes_code']:,} (`{bundle_name}`, the shipped single-file "
              f"bundle); each artifact = model bytes + code bytes, against the {SIZE_CAP_BYTES:,}-byte cap. "
              f"The {CODE_KIND_NOTES[BUNDLE_KIND]}.", ""]
    if significance_text:
        lines += ["## Significance", "", "```", significance_text, "```", ""]
    seeds = " ".join(str(s) for s in data["seeds"])
    lines += ["## Reproduce", "", "```bash", f"for SEED in {seeds}; do",
              f"  SEED=$SEED torchrun --standalone --nproc_per_node={runs[0].results.get('world_size', 1)} {bundle_name}", "done", "```", "",
              "The script carries its configuration; the reference environment variables (`DATA_PATH`, `TOKENIZER_PATH`, "
              "`SEED`, ...) override it.", "",
              "## Configuration: differences from the baseline preset", ""]
    lines += [f"- `{k}`: {a!r} -> {b!r}" for k, (a, b) in diff.items()] or ["- none"]
    lines += ["", "<details><summary>Full resolved configuration</summary>", "", "```json",
              json.dumps(cfg, indent=2, sort_keys=True), "```", "</details>", "",
              f"Versions: {json.dumps(runs[0].results.get('versions', {}), sort_keys=True)}", ""]
    return "\n".join(lines)


def requirements(codec: str, runs: list[Run]) -> str:
    versions = runs[0].results.get("versions", {})
    lines = []
    for name in BASE_REQUIREMENTS + (("brotli",) if codec == "brotli" else ()):
        pinned = versions.get(name)
        lines.append(f"{name}=={pinned.split('+')[0]}" if pinned else name)
    return "\n".join(lines) + "\n"


def _bundle_codec(script: str) -> str:
    return "brotli" if "import brotli" in script.split("\n", 1)[0] else "lzma"


def write_records_folder(
    run_dirs: list[str | Path], sub: Submission, records_dir: str | Path, *,
    bundle: str | Path | None = None, significance: dict | None = None, significance_text: str | None = None,
) -> Path:
    """Write ``records/track_<track>/<date>_<name>/`` atomically; return its path."""
    if sub.track not in TRACKS:
        raise PgolfError(f"--track {sub.track!r}: expected one of {', '.join(TRACKS)}")
    date = checked_date(sub.date)
    runs = sorted((load_run(p) for p in run_dirs), key=lambda r: r.seed)
    check_same_configuration(runs)
    record_track = sub.track == RECORD_TRACK
    if record_track:  # before a bundle is built: every rule but the script's, which needs the built one
        given = Path(bundle) if bundle is not None else None
        shipped = given.read_bytes() if given is not None and given.is_file() else None
        refuse_if_not_comparable(not_comparable(runs, shipped, given is not None))
    sub = Submission(sub.name, sub.author, sub.github_id, sub.track, sub.blurb, date)
    track_dir = Path(records_dir) / f"track_{sub.track}"
    target = track_dir / folder_name(sub)
    if target.exists():
        raise PgolfError(f"{target}: already exists; choose another --name")
    check_writable(track_dir, "--records-dir")  # before building the bundle
    make_folder(track_dir)
    try:
        staging = Path(tempfile.mkdtemp(dir=track_dir, prefix=f".{target.name}."))
    except OSError as exc:
        raise write_failure(exc, track_dir) from None
    try:
        script = _stage_bundle(staging, runs, bundle)
        if record_track:
            refuse_if_not_comparable(not_comparable(runs, (staging / "train_gpt.py").read_bytes(), bundle is not None))
        sizes = [seed_size(run, staging / "train_gpt.py") for run in runs]
        data = submission_json(sub, runs, sizes, significance)
        over = [s for s, r in data["seed_results"].items() if r["artifact_bytes"] > SIZE_CAP_BYTES]
        if over:  # both tracks cap the artifact at 16,000,000 bytes
            raise PgolfError(f"submit: seed {over[0]} is {data['seed_results'][over[0]]['artifact_bytes'] - SIZE_CAP_BYTES:,} bytes over the cap")
        for run in runs:
            shutil.copyfile(run.path / LOG, staging / f"train_seed{run.seed}.log")
        (staging / "submission.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(readme(sub, data, runs, "train_gpt.py", significance_text), encoding="utf-8")
        (staging / "requirements.txt").write_text(requirements(_bundle_codec(script), runs), encoding="utf-8")
        os.chmod(staging, 0o755)
        os.replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PgolfError(f"{target}: not written ({os_error_line(exc)})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _stage_bundle(staging: Path, runs: list[Run], bundle: str | Path | None) -> str:
    """Copy the given bundle, or build one from the runs' configuration."""
    if bundle is not None:
        bundle = Path(bundle)
        if not bundle.is_file():
            raise PgolfError(f"{bundle}: bundle not found")
        shutil.copyfile(bundle, staging / "train_gpt.py")
    else:
        from pgolf.bundle.build import build_bundle

        cfg = from_dict(runs[0].config)
        cfg.train.run_id = ""  # each run names its own
        build_bundle(cfg, staging / "train_gpt.py")
        (staging / "train_gpt_readable.py").unlink(missing_ok=True)  # one script per records folder
    return (staging / "train_gpt.py").read_text(encoding="utf-8")
