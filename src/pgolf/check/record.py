"""``pgolf check record``: a compliance report for a records folder or a lone ``train_gpt.py``.

Checks (challenge.md sec. 4): the required files (README.md, submission.json, train_gpt.py, train
logs); the submission.json fields and their types; the size under the 16,000,000-byte cap, from
submission.json and from every log's own size lines (code bytes + compressed model bytes); and
the static findings of :mod:`pgolf.check.static` on the code, decoded first when the script is a
self-extracting wrapper (:mod:`pgolf.check.selfextract`; never executed); and whether each log's run
is comparable with the record track (:mod:`pgolf.check.track`: full validation set, GPUs, a cap of
at most 600 s with training + calibration inside it, the challenge's data, the shipped script
unchanged), errors for a folder on the record track (its ``track`` field, else its path, else
assumed), reviews on other tracks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.check.selfextract import NotAWrapper, unwrap
from pgolf.check.static import Finding, scan
from pgolf.check import track
from pgolf.errors import PgolfError

SIZE_CAP = 16_000_000
REQUIRED_FIELDS = {"author": str, "github_id": str, "name": str, "date": str, "val_bpb": (int, float)}
COMMON_FIELDS = {"blurb": str, "val_loss": (int, float), "bytes_total": int, "bytes_code": int}
LOG_TOTAL = re.compile(r"^Total submission size (?P<label>[^:]+): (?P<n>\d+) bytes", re.MULTILINE)
LOG_MODEL = re.compile(r"^Serialized model (?P<label>[^:]+): (?P<n>\d+) bytes", re.MULTILINE)
LOG_CODE = re.compile(r"^Code size(?: \((?P<kind>compressed|uncompressed)\))?: (?P<n>\d+) bytes", re.MULTILINE)
# pgolf's own logs (pgolf.export.artifact.SizeReport.summary): "artifact T bytes = model M + code C (...)"
LOG_PGOLF = re.compile(r"^artifact (?P<total>[\d,]+) bytes = model (?P<model>[\d,]+) \+ code (?P<code>[\d,]+) ", re.MULTILINE)


@dataclass
class RecordReport:
    path: str
    findings: list[Finding] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def add(self, file: str, line: int, rule: str, severity: str, message: str) -> None:
        self.findings.append(Finding(file, line, rule, severity, message))

    def as_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "facts": self.facts, "findings": [f.as_dict() for f in self.findings]}


def check_files(folder: Path, report: RecordReport) -> list[Path]:
    for name in ("README.md", "submission.json", "train_gpt.py"):
        if not (folder / name).is_file():
            report.add(name, 0, "required-file", "error", f"{name} is missing")
    logs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".log", ".txt") and p.name != "requirements.txt")
    if not logs:
        report.add("(folder)", 0, "required-file", "error", "no train log (*.log or *.txt) produced by the script")
    report.facts["logs"] = [p.name for p in logs]
    return logs


def check_submission_json(folder: Path, report: RecordReport) -> dict:
    path = folder / "submission.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.add("submission.json", getattr(exc, "lineno", 0), "submission-json", "error", f"not valid JSON ({exc})")
        return {}
    if not isinstance(data, dict):
        report.add("submission.json", 1, "submission-json", "error", "top level is not an object")
        return {}
    for fields, severity in ((REQUIRED_FIELDS, "error"), (COMMON_FIELDS, "review")):
        for name, kind in fields.items():
            if name not in data:
                report.add("submission.json", 0, "submission-json", severity, f"field {name!r} is missing")
            elif not isinstance(data[name], kind) or isinstance(data[name], bool):
                report.add("submission.json", 0, "submission-json", "error", f"field {name!r} has type {type(data[name]).__name__}")
    report.facts["submission"] = {k: data.get(k) for k in ("name", "author", "val_bpb", "val_loss", "bytes_total", "bytes_code", "track")}
    return data


def log_sizes(text: str) -> dict:
    """Sizes a log states: compressed totals, compressed model bytes, counted code bytes."""
    totals = [int(m["n"]) for m in LOG_TOTAL.finditer(text)]
    models = [int(m["n"]) for m in LOG_MODEL.finditer(text)]
    codes = {m["kind"] or "plain": int(m["n"]) for m in LOG_CODE.finditer(text)}
    code = codes.get("compressed", codes.get("plain"))
    pgolf = list(LOG_PGOLF.finditer(text))
    if pgolf and not totals and not models and code is None:
        last = {k: int(v.replace(",", "")) for k, v in pgolf[-1].groupdict().items()}
        return {"total": last["total"], "code": last["code"], "model": last["model"]}
    out: dict = {}
    if totals:
        out["total"] = totals[-1]
    elif models and code is not None:
        out["total"] = models[-1] + code  # logs that state the parts but not the sum
    if code is not None:
        out["code"] = code
    if models:
        out["model"] = models[-1]
    return out


def check_sizes(folder: Path, logs: list[Path], data: dict, report: RecordReport) -> None:
    per_log = {}
    for log in logs:
        sizes = log_sizes(log.read_text(encoding="utf-8", errors="replace"))
        if sizes:
            per_log[log.name] = sizes
        if sizes.get("total", 0) > SIZE_CAP:
            report.add(log.name, 0, "size-cap", "error", f"log states {sizes['total']:,} bytes, over the {SIZE_CAP:,} cap")
    report.facts["log_sizes"] = per_log
    total = data.get("bytes_total")
    if isinstance(total, int) and total > SIZE_CAP:
        report.add("submission.json", 0, "size-cap", "error", f"bytes_total {total:,} is over the {SIZE_CAP:,} cap")
    logged_totals = {s["total"] for s in per_log.values() if "total" in s}
    if isinstance(total, int) and logged_totals and total not in logged_totals:
        report.add("submission.json", 0, "size-evidence", "review",
                   f"bytes_total {total:,} matches no log's stated total ({', '.join(f'{t:,}' for t in sorted(logged_totals))})")
    if not isinstance(total, int) and not any("total" in s for s in per_log.values()):
        report.add("(folder)", 0, "size-cap", "review", "no stated artifact size in submission.json or the logs")
    script = folder / "train_gpt.py"
    if script.is_file():
        raw = script.stat().st_size
        report.facts["train_gpt_py_bytes"] = raw
        counted = data.get("bytes_code")
        logged = sorted({s["code"] for s in per_log.values() if "code" in s})
        for claimed, source in ((counted, "submission.json bytes_code"), *((c, "a log's code size") for c in logged)):
            if isinstance(claimed, int) and claimed != raw:
                why = ("a theoretical compressed size is counted (convention (c)), not the file as shipped"
                       if claimed < 0.8 * raw else "the shipped file is not byte-for-byte the code that was counted")
                report.add("train_gpt.py", 0, "code-bytes", "review", f"{source} is {claimed:,} but train_gpt.py has {raw:,} bytes: {why}")


def folder_track(folder: Path, data: dict) -> str:
    """The folder's track: submission.json's ``track``, else a ``track_<name>`` folder above it, else the record track."""
    if isinstance(data.get("track"), str) and data["track"]:
        return data["track"]
    named = [part[len("track_"):] for part in folder.resolve().parts if part.startswith("track_")]
    return named[-1] if named else track.RECORD_TRACK


def check_comparable(folder: Path, logs: list[Path], data: dict, report: RecordReport) -> None:
    name = folder_track(folder, data)
    report.facts["track"] = name
    script = folder / "train_gpt.py"
    shipped = script.read_bytes() if script.is_file() else None
    for log in logs:
        facts = track.facts_from_log(log.read_text(encoding="utf-8", errors="replace"), "its run")
        for finding in track.track_findings(facts, shipped):
            level = track.severity(finding, name == track.RECORD_TRACK)
            if level is not None:
                report.add(log.name, 0, finding.rule, level, finding.message)


def check_code(script: Path, report: RecordReport) -> None:
    source = script.read_text(encoding="utf-8", errors="replace")
    name = script.name
    try:
        inner = unwrap(source)
    except NotAWrapper as exc:
        report.add(name, 1, "self-extracting", "error", f"self-extracting wrapper could not be decoded: {exc}")
        return
    if inner is not None:
        name = f"{script.name} (decoded: {' -> '.join(inner.layers)})"
        report.facts["self_extracting"] = {"layers": inner.layers, "inner_bytes": len(inner.source.encode("utf-8"))}
        source = inner.source
    report.findings.extend(scan(source, name))


def check_record(path: str | Path) -> RecordReport:
    path = Path(path)
    report = RecordReport(str(path))
    if path.is_file() and path.suffix == ".py":
        check_code(path, report)
        return report
    if not path.is_dir():
        raise PgolfError(f"{path}: not a records folder or a .py file")
    logs = check_files(path, report)
    data = check_submission_json(path, report)
    check_sizes(path, logs, data, report)
    check_comparable(path, logs, data, report)
    if (path / "train_gpt.py").is_file():
        check_code(path / "train_gpt.py", report)
    return report
