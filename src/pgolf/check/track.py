"""The record track's comparability rules for one run, the facts they judge, and where the facts come from.

A run belongs in ``track_10min_16mb`` only if it is comparable with the records there:

* scored on the whole validation set (not a ``VAL_MAX_TOKENS`` prefix);
* trained on GPUs, not on a CPU;
* under a wallclock cap (``MAX_WALLCLOCK_SECONDS``) of at most the track's 600 s, with training plus
  calibration inside it (:mod:`pgolf.train.budget`);
* on the challenge's data, not shards built by ``pgolf data prepare`` (the demo's, or your own text);
* when its code is a bundle, by the very ``train_gpt.py`` shipped, its configuration unchanged by
  the environment except for the seed, the run id and where the data lives.

The facts come from a train log, the evidence a records folder ships, so ``pgolf submit`` (on a run
directory's ``train.log``) and ``pgolf check record`` (on the folder's logs) judge the same thing
(:func:`facts_from_log`): a pgolf log's header (device, resolved config, ``source_sha256``, and for a
bundle the config it was built with), its last size line (the code source: a bundle or the package)
and ``time_budget:`` line; or a record script's hyperparameter dump and its ``stopping_early`` and
``GPTQ:collected`` lines. Data built by ``pgolf data prepare`` is recognised by its manifest beside
the val shards, where the config says they are, when they are on this machine. A fact the log does
not state is None and its rule is skipped. ``pgolf submit`` refuses a record-track folder on any
finding; ``pgolf check record`` reports each one (:func:`severity`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pgolf.data.shards import prepared_manifest
from pgolf.errors import PgolfError
from pgolf.experiments.read import IDENTITY_FIELDS, LOG, config_differences
from pgolf.train.budget import RECORD_TRACK_SECONDS, TimeBudget, time_budget

RECORD_TRACK = "10min_16mb"
HEADER_RULE = "=" * 80  # pgolf.train.rundir.RunDir.header
# pgolf.train.budget.TimeBudget.line
LOG_BUDGET = re.compile(r"^time_budget: train (?P<train>\d+)ms \+ calibration (?P<cal>\d+)ms = \d+ms, cap (?P<cap>\d+)ms:", re.MULTILINE)
# pgolf.export.artifact.SizeReport.summary: its code source is "bundle NAME" for a bundle's run
LOG_CODE_SOURCE = re.compile(r"^artifact [\d,]+ bytes = model [\d,]+ \+ code [\d,]+ \((?P<source>[^)]*)\)", re.MULTILINE)
# a record script's own lines (R44: "stopping_early: wallclock_cap train_time: 599592ms step: 4945/20000",
# "GPTQ:collected 67 Hessians in 4.7s", and "  max_wallclock_seconds: 600.0" in its hyperparameter dump)
LOG_STOP = re.compile(r"^stopping_early: wallclock_cap train_time: ?(?P<ms>\d+)ms", re.MULTILINE)
LOG_HESSIANS = re.compile(r"^GPTQ:collected \d+ Hessians in (?P<s>[\d.]+)s", re.MULTILINE)
LOG_CAP = re.compile(r"^\s*max_wallclock_seconds: (?P<s>[\d.]+)\s*$", re.MULTILINE)


@dataclass
class RunFacts:
    source: str  # for messages: "seed 42", "its run"
    val_max_tokens: int | None = None
    device: str | None = None
    cap_s: float | None = None
    budget: TimeBudget | None = None
    data_manifest: str | None = None  # `pgolf data prepare` made its val shards (found where the config says they are)
    pgolf: bool = False  # a pgolf log: the bundle facts below are stated
    code_source: str | None = None  # "bundle NAME" or the package's "N pgolf module files imported" (None: not stated)
    source_sha256: str | None = None  # pgolf.runtime.source_hash: for a bundle, sha256(its file name + its bytes)
    bundle_config: dict | None = None  # the config a bundle was built with, before the environment
    config: dict | None = None

    @property
    def bundle_name(self) -> str | None:
        return self.code_source[len("bundle "):] if self.code_source and self.code_source.startswith("bundle ") else None


@dataclass(frozen=True)
class TrackFinding:
    rule: str
    message: str
    record_only: bool = True  # judged only on the record track (hardware, time); else also elsewhere, for review
    package_run: bool = False  # the run was the pgolf package, not the shipped script: the evidence is indirect


def severity(finding: TrackFinding, record_track: bool) -> str | None:
    """``error`` on the record track (``review`` for a package run's log); off it, ``review`` or nothing."""
    if record_track:
        return "review" if finding.package_run else "error"
    return None if finding.record_only else "review"


def _time_budget(cap_s: float | None, train_ms: float, calibration_ms: float) -> TimeBudget | None:
    return time_budget(cap_s if cap_s and cap_s > 0 else RECORD_TRACK_SECONDS, train_ms, calibration_ms) if calibration_ms else None


def pgolf_header(text: str) -> tuple[dict[str, str], dict] | None:
    """A pgolf train log's header: its ``key: value`` facts and the resolved config (None if it has none)."""
    lines = text.splitlines()
    if not lines or lines[0] != HEADER_RULE or "config:" not in lines:
        return None
    start = lines.index("config:")
    try:
        end = lines.index(HEADER_RULE, start)
        config = json.loads("\n".join(lines[start + 1:end]))
    except (ValueError, json.JSONDecodeError):
        return None
    facts = dict(line.split(": ", 1) for line in lines[1:start] if ": " in line)
    return facts, config if isinstance(config, dict) else {}


def _literal(text: str | None):
    try:
        return ast.literal_eval(text) if text is not None else None
    except (ValueError, SyntaxError):
        return None


def val_glob(config: dict) -> str:
    """pgolf.config.DataConfig.val_glob on a config dict."""
    data = config.get("data", {})
    return data.get("val_files") or os.path.join(data.get("data_path", ""), "fineweb_val_*.bin")


def _from_pgolf_header(facts: RunFacts, stated: dict[str, str], config: dict) -> None:
    facts.pgolf, facts.config = True, config
    facts.val_max_tokens = config.get("eval", {}).get("val_max_tokens")
    facts.cap_s = config.get("train", {}).get("max_wallclock_seconds")
    facts.device = stated.get("device")
    facts.source_sha256 = stated.get("source_sha256")
    facts.bundle_config = _literal(stated.get("bundle_config"))
    facts.data_manifest = prepared_manifest(val_glob(config))


def facts_from_log(text: str, source: str) -> RunFacts:
    """The facts a train log states: a pgolf log's header, size and budget lines, or a record script's lines."""
    facts = RunFacts(source)
    header = pgolf_header(text)
    if header is not None:
        _from_pgolf_header(facts, *header)
        if (sizes := list(LOG_CODE_SOURCE.finditer(text))):
            facts.code_source = sizes[-1]["source"]
    elif (cap := list(LOG_CAP.finditer(text))):
        facts.cap_s = float(cap[-1]["s"])
    if (line := list(LOG_BUDGET.finditer(text))):
        last = line[-1]
        facts.budget = _time_budget(int(last["cap"]) / 1000.0, int(last["train"]), int(last["cal"]))
    elif (stop := list(LOG_STOP.finditer(text))) and (hessians := list(LOG_HESSIANS.finditer(text))):
        facts.budget = _time_budget(facts.cap_s, int(stop[-1]["ms"]), 1000 * float(hessians[-1]["s"]))
    return facts


def bundle_source_sha256(name: str, script: bytes) -> str:
    """What pgolf.runtime.source_hash states for a run of the bundle ``script`` when it was named ``name``."""
    return hashlib.sha256(name.encode() + script).hexdigest()


def _bundle_findings(facts: RunFacts, shipped: bytes) -> list[TrackFinding]:
    name = facts.bundle_name
    if name is None:
        return [TrackFinding("bundle", f"{facts.source} was trained by the pgolf package, not by the shipped train_gpt.py",
                             record_only=False, package_run=True)]
    if facts.source_sha256 != bundle_source_sha256(name, shipped):
        return [TrackFinding("bundle", f"{facts.source} was trained by another script than the shipped train_gpt.py "
                             f"(source_sha256 {str(facts.source_sha256)[:12]}... is not the shipped file's)", record_only=False)]
    changed = config_differences(facts.bundle_config or {}, facts.config or {}, ignore=IDENTITY_FIELDS) if facts.bundle_config else {}
    if changed:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        return [TrackFinding("bundle", f"{facts.source}: the environment changed the shipped train_gpt.py's configuration "
                             f"({what}); the script alone does not reproduce the run", record_only=False)]
    return []


def track_findings(facts: RunFacts, shipped: bytes | None = None) -> list[TrackFinding]:
    """Why a run is not comparable with the record track's runs (empty: nothing found). ``shipped``: the
    bytes of the train_gpt.py that goes with it (None: the script rules are skipped)."""
    out: list[TrackFinding] = []
    if facts.val_max_tokens:
        out.append(TrackFinding("val-prefix", f"{facts.source} was scored on a {facts.val_max_tokens:,}-token prefix of the "
                                f"validation set (VAL_MAX_TOKENS={facts.val_max_tokens}), not all of it", record_only=False))
    if facts.device is not None and facts.device.lower().startswith("cpu"):
        out.append(TrackFinding("hardware", f"{facts.source} was trained on {facts.device}; the record track trains on 8xH100"))
    if facts.cap_s is not None and not 0 < facts.cap_s <= RECORD_TRACK_SECONDS:
        cap = "no wallclock cap (MAX_WALLCLOCK_SECONDS=0)" if facts.cap_s <= 0 else f"a {facts.cap_s:g} s wallclock cap"
        out.append(TrackFinding("wallclock-cap", f"{facts.source} was trained with {cap}; the record track allows "
                                f"{RECORD_TRACK_SECONDS:g} s"))
    if facts.budget is not None and facts.budget.over_ms > 0:
        b = facts.budget
        out.append(TrackFinding("time-budget", f"{facts.source}: training {b.train_ms / 1000:.1f} s + calibration "
                                f"{b.calibration_ms / 1000:.1f} s = {b.total_ms / 1000:.1f} s, {b.over_ms / 1000:.1f} s over "
                                f"the {b.cap_ms / 1000:g} s cap (raise GPTQ_RESERVE_SECONDS)"))
    if facts.data_manifest:
        out.append(TrackFinding("data", f"{facts.source} was trained and scored on shards built by `pgolf data prepare` "
                                f"({facts.data_manifest}), not the challenge's FineWeb export", record_only=False))
    if facts.pgolf and facts.code_source is not None and shipped is not None:
        out += _bundle_findings(facts, shipped)
    return out


def facts_from_run(run_dir: str | Path, source: str) -> RunFacts:
    """The facts of a run directory: its train.log, the evidence a records folder ships."""
    log = Path(run_dir) / LOG
    if not log.is_file():
        raise PgolfError(f"{run_dir}: no {LOG}, the evidence the records folder needs")
    return facts_from_log(log.read_text(encoding="utf-8", errors="replace"), source)
