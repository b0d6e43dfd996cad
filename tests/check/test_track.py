"""Record-track comparability: `pgolf submit` refuses, and `pgolf check record` fails, runs scored on a
val prefix, trained on CPU, with no (or a long) wallclock cap, over the time budget, on data built by
`pgolf data prepare`, or by another script than the one shipped; `--date` must be a real date.

Each case starts from one comparable run (an 8xH100 baseline run of the shipped script, with the
seed set by the environment) and changes one fact, so exactly one finding may appear."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest

from pgolf.check.record import check_record
from pgolf.errors import PgolfError
from pgolf.presets import build_config
from pgolf.submit.records import Submission, write_records_folder
from pgolf.train.rundir import RunDir

SCRIPT = "print('the shipped train_gpt.py')\n"
# pgolf.runtime.source_hash of a bundle's run: sha256 over the file's name, then its bytes
SHIPPED_SOURCE_SHA256 = hashlib.sha256(b"train_gpt.py" + SCRIPT.encode()).hexdigest()
H100 = "NVIDIA H100 80GB HBM3"
BUNDLE_SIZE_LINE = (f"artifact 15,800,{len(SCRIPT):03d} bytes = model 15,800,000 + code {len(SCRIPT)} (bundle train_gpt.py); "
                    "199,968 bytes under the 16,000,000-byte cap")


def comparable_run() -> dict:
    """A run that belongs on the record track: the shipped bundle on 8xH100, the environment setting only its seed."""
    return {
        "config": build_config("baseline", ["SEED=42"], environ={}).to_dict(),
        "header": {"source_sha256": SHIPPED_SOURCE_SHA256, "device": H100,
                   "bundle_config": build_config("baseline", environ={}).to_dict()},
        "lines": [BUNDLE_SIZE_LINE],
        "results": {"val_loss": 2.07, "val_bpb": 1.2244, "pre_quant": {"val_bpb": 1.2172}, "bytes_model": 15_800_000,
                    "steps": 13_780, "step_avg_ms": 43.54, "train_time_s": 600.02, "eval_time_s": 1.4, "world_size": 8,
                    "device": H100, "versions": {"torch": "2.9.1"}},
    }


def write_run(path: Path, run: dict) -> Path:
    """A run directory as `pgolf train` leaves it: train.log (header, then its lines), config.json, results.json."""
    rd = RunDir(path, echo=False)
    rd.header(run["header"], json.dumps(run["config"], indent=2, sort_keys=True))
    for line in run["lines"]:
        rd.log(line)
    rd.write_json("config.json", run["config"])
    rd.write_json("results.json", run["results"])
    return path


def changed(edit, tmp_path: Path) -> dict:
    run = copy.deepcopy(comparable_run())
    edit(run, tmp_path)
    return run


def _config(section: str, key: str, value, built_so: bool = True):
    """Set a field of the run's config, and of the config its bundle was built with unless ``built_so`` is False."""
    def edit(run: dict, _) -> None:
        for config in (run["config"], run["header"]["bundle_config"]) if built_so else (run["config"],):
            config[section][key] = value
    return edit


def _header(key: str, value):
    return lambda run, _: run["header"].__setitem__(key, value)


def _over_budget(run: dict, _) -> None:  # R44's seed-42 numbers: 599,592 ms of training, then 4.7 s of Hessians
    _config("quant", "gptq_enabled", True)(run, None)
    run["lines"].append("time_budget: train 599592ms + calibration 4700ms = 604292ms, cap 600000ms: ERROR")


def _prepared_data(run: dict, tmp_path: Path) -> None:  # shards `pgolf data prepare` wrote: its manifest beside them
    from pgolf.data.prepare import prepare

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"document {i} about golf."}) + "\n" for i in range(4)))
    # PGOLF_SHARED_DATA, as tests/conftest.py's shared_data finds it (a case edit takes no fixture)
    data = Path(os.environ.get("PGOLF_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    tokenizer = data / "tokenizers" / "fineweb_1024_bpe.model"
    if not tokenizer.is_file():
        pytest.skip(f"sp1024 tokenizer not found at {tokenizer}")
    prepare(docs, tmp_path / "mine", tokenizer=tokenizer, val_docs=1, progress=False)
    run["config"]["data"]["data_path"] = str(tmp_path / "mine")


CASES = {  # rule -> (edit, words its one line must hold)
    "val-prefix": (_config("eval", "val_max_tokens", 20_000), "20,000-token prefix"),
    "hardware": (_header("device", "cpu (x86_64, 16 cores)"), "trained on cpu"),
    "wallclock-cap": (_config("train", "max_wallclock_seconds", 0.0), "no wallclock cap"),
    "time-budget": (_over_budget, "4.3 s over the 600 s cap"),
    "data": (_prepared_data, "pgolf data prepare"),
    "bundle": (_header("source_sha256", "ab" * 32), "another script"),
}


def submit(tmp_path: Path, runs: list[dict], track: str = "10min_16mb", date: str = "2026-05-01") -> Path:
    dirs = [write_run(tmp_path / f"run{i}", run) for i, run in enumerate(runs)]
    bundle = tmp_path / "shipped_train_gpt.py"
    bundle.write_text(SCRIPT)
    return write_records_folder(dirs, Submission("Rules", "A", "a", track, "", date), tmp_path / "records", bundle=bundle)


def test_a_comparable_run_is_submitted_and_passes_check_record(tmp_path):
    folder = submit(tmp_path, [comparable_run()])
    report = check_record(folder)
    assert report.ok and report.facts["track"] == "10min_16mb", report.as_dict()
    assert not [f for f in report.findings if f.rule in CASES]


@pytest.mark.parametrize("rule", list(CASES))
def test_submit_refuses_an_incomparable_run_with_one_line_for_its_reason(tmp_path, rule):
    edit, words = CASES[rule]
    with pytest.raises(PgolfError) as info:
        submit(tmp_path, [changed(edit, tmp_path)])
    header, *reasons = str(info.value).splitlines()
    assert "not comparable" in header and "--track non_record_16mb" in header
    assert len(reasons) == 1 and reasons[0].startswith("seed 42") and words in reasons[0], reasons
    assert not [p for p in (tmp_path / "records").rglob("*") if p.is_file()]  # nothing half-written


@pytest.mark.parametrize("rule", list(CASES))
def test_check_record_fails_an_incomparable_log_on_the_record_track(tmp_path, rule):
    edit, words = CASES[rule]
    folder = submit(tmp_path, [comparable_run()])
    run_dir = write_run(tmp_path / "bad", changed(edit, tmp_path))
    (folder / "train_seed42.log").write_text((run_dir / "train.log").read_text())
    report = check_record(folder)
    [finding] = [f for f in report.findings if f.rule in CASES]
    assert (finding.rule, finding.severity, finding.file) == (rule, "error", "train_seed42.log") and not report.ok
    assert words in finding.message and "\n" not in finding.message
    # on the non-record track only what makes any score incomparable is left, for review
    data = json.loads((folder / "submission.json").read_text())
    (folder / "submission.json").write_text(json.dumps(data | {"track": "non_record_16mb"}))
    found = [(f.rule, f.severity) for f in check_record(folder).findings if f.rule in CASES]
    assert found == ([(rule, "review")] if rule in ("val-prefix", "data", "bundle") else [])


def test_the_environment_changing_the_shipped_scripts_configuration_is_refused(tmp_path):
    run = changed(_config("train", "iterations", 200, built_so=False), tmp_path)  # the bundle was built with 20000
    with pytest.raises(PgolfError, match=r"train.iterations 20000 -> 200\); the script alone does not reproduce"):
        submit(tmp_path, [run])


def _package_run(run: dict, _) -> None:
    run["header"]["bundle_config"] = None
    run["lines"] = [BUNDLE_SIZE_LINE.replace("(bundle train_gpt.py)", "(61 pgolf module files imported)")]


def test_package_runs_need_the_script_built_from_their_configuration(tmp_path):
    # with --bundle, a package run cannot show it was trained by that script
    with pytest.raises(PgolfError, match="seed 42 was trained by the pgolf package, not by the shipped train_gpt.py"):
        submit(tmp_path, [changed(_package_run, tmp_path)])
    # its log in a records folder is left for review (pgolf submit without --bundle builds the script from the config)
    folder = submit(tmp_path / "ok", [comparable_run()])
    (folder / "train_seed42.log").write_text((write_run(tmp_path / "pkg", changed(_package_run, tmp_path)) / "train.log").read_text())
    report = check_record(folder)
    assert report.ok and [(f.rule, f.severity) for f in report.findings if f.rule == "bundle"] == [("bundle", "review")]


@pytest.mark.parametrize("date", ["2026-13-45", "2026-02-30", "20260501", "May 1", "2026-5-1"])
def test_submit_date_must_be_a_real_date(run_pgolf, tmp_path, date):
    code, _, err = run_pgolf(["submit", str(tmp_path / "no_run"), "--name", "x", "--author", "a", "--github-id", "a",
                              "--date", date, "--records-dir", str(tmp_path / "records")])
    assert code == 2 and err == f"pgolf: error: --date {date!r}: not a real date (expected YYYY-MM-DD)\n"


# R44's own seed-42 log (records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611)
# and R46's 8 s rerun of seed 42 (2026-04-29_SmearGateBOSFix_3Seed_1.06141/train_seed42_rerun_gptq8s.log), as published.
R44_LINES = """  gptq_reserve_seconds: 0.5
  max_wallclock_seconds: 600.0
gptq:reserving 0s, effective=599500ms
stopping_early: wallclock_cap train_time: 599592ms step: 4945/20000
GPTQ:collected 67 Hessians in 4.7s
"""
R46_LINES = """  gptq_reserve_seconds: 8.0
  max_wallclock_seconds: 600.0
gptq:reserving 8.0s, effective=592000ms
stopping_early: wallclock_cap train_time: 592054ms step: 4942/20000
GPTQ:collected 67 Hessians in 3.5s
"""


def test_r44s_published_log_is_over_the_budget_and_r46s_rerun_fits(tmp_path):
    folder = submit(tmp_path, [comparable_run()])
    (folder / "train_seed42.log").write_text(R44_LINES)
    [finding] = [f for f in check_record(folder).findings if f.rule == "time-budget"]
    assert finding.severity == "error" and "599.6 s + calibration 4.7 s = 604.3 s, 4.3 s over the 600 s cap" in finding.message
    (folder / "train_seed42.log").write_text(R46_LINES)
    assert not [f for f in check_record(folder).findings if f.rule == "time-budget"]
