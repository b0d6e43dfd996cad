"""`pgolf check record` on planted examples: every rule fires with file and line, wrappers are
decoded statically (never run), and a clean folder passes."""

from __future__ import annotations

import base64
import json
import lzma
import zlib
from pathlib import Path

import brotli
import pytest

from pgolf.bundle.wrap import wrap
from pgolf.check.record import check_record
from pgolf.check.selfextract import unwrap
from pgolf.check.static import scan

LEAKY = '''import os
import urllib.request

STOP = int(os.environ.get("FORCE_STOP_STEP", "0"))


def eval_with_calibration(model):
    files = "fineweb_train_*.bin"
    return files


def ttt(model, opt, val_tokens):
    for chunk in val_tokens:
        loss = model(chunk)
        loss.backward()
        opt.step()


def fetch():
    return urllib.request.urlopen("https://example.com/weights")
'''

CLEAN = '''import torch


def train(model, opt, train_loader, val_tokens):
    for x, y in train_loader:
        model(x, y).backward()
        opt.step()
        eval_val(model, val_tokens)


def eval_val(model, val_tokens):
    return model(val_tokens)
'''


def rules(findings) -> dict[str, int]:
    """rule -> line of its first finding."""
    first: dict[str, int] = {}
    for f in findings:
        first.setdefault(f.rule, f.line)
    return first


def test_every_static_rule_fires_with_its_line():
    found = rules(scan(LEAKY, "train_gpt.py"))
    assert found["network"] == 2  # the import (the urlopen call on line 20 is reported too)
    assert found["fixed-step-stop"] == 4
    assert found["train-data-in-eval"] == 8
    assert found["val-to-optimizer"] == 15
    assert {f.line for f in scan(LEAKY, "x") if f.rule == "network"} == {2, 20}


def test_validation_data_is_followed_through_local_names():
    source = """def evaluate_with_ttt(model, opt, args):
    files = sorted(glob.glob(args.val_files))
    all_tokens = torch.cat([load(f) for f in files])
    for doc in split_docs(all_tokens):
        model(doc).backward()
        opt.step()
"""
    found = [f for f in scan(source, "t.py") if f.rule == "val-to-optimizer"]
    assert [f.line for f in found] == [5] and "all_tokens" in found[0].message


def test_json_size_without_log_evidence_is_flagged(tmp_path):
    report = check_record(make_record(tmp_path / "rec", GOOD_JSON | {"bytes_total": 15_500_000}, GOOD_LOG))
    assert [f.rule for f in report.findings] == ["size-evidence"] and report.ok


def test_clean_script_has_no_findings():
    assert scan(CLEAN, "train_gpt.py") == []


def wrappers(source: str, marker: Path) -> dict[str, str]:
    # each inner payload would create `marker` if it were ever executed
    inner = (f"open({str(marker)!r}, 'w').write('ran')\n" + source).encode()
    b85 = lambda data: base64.b85encode(data).decode()
    raw = lzma.compress(inner, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    return {
        "lzma": f"import lzma as L,base64 as B\nexec(L.decompress(B.b85decode({b85(lzma.compress(inner))!r})))\n",
        "lzma-raw": ("import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("
                     f"{b85(raw)!r}),format=L.FORMAT_RAW,filters=[{{\"id\":L.FILTER_LZMA2}}]))\n"),
        "zlib": f"import zlib, base64\nexec(zlib.decompress(base64.b64decode({base64.b64encode(zlib.compress(inner)).decode()!r})).decode())\n",
        "brotli": f"import brotli as b, base64 as e\nexec(b.decompress(e.b85decode({b85(brotli.compress(inner))!r})))\n",
        "pgolf-bundle": wrap(inner.decode()).script,  # pgolf's own: a 124-symbol bytes literal and its small decoder
    }


@pytest.mark.parametrize("kind", ["lzma", "lzma-raw", "zlib", "brotli", "pgolf-bundle"])
def test_self_extracting_scripts_are_decoded_never_run(tmp_path, kind):
    marker = tmp_path / "ran"
    script = tmp_path / "train_gpt.py"
    script.write_text(wrappers(LEAKY, marker)[kind])
    unwrapped = unwrap(script.read_text())
    assert unwrapped is not None and "FORCE_STOP_STEP" in unwrapped.source
    report = check_record(script)
    found = rules(report.findings)
    assert found["fixed-step-stop"] == 5  # one line lower: the planted marker line comes first
    assert "decoded" in report.findings[0].file and not report.ok
    assert any(layer.endswith(".decompress") for layer in report.facts["self_extracting"]["layers"])
    assert not marker.exists()


def make_record(folder: Path, submission: dict | None, log: str | None, code: str = CLEAN) -> Path:
    folder.mkdir()
    (folder / "README.md").write_text("# a record\n")
    (folder / "train_gpt.py").write_text(code)
    if submission is not None:
        (folder / "submission.json").write_text(json.dumps(submission))
    if log is not None:
        (folder / "train_seed0.log").write_text(log)
    return folder


GOOD_JSON = {"author": "a", "github_id": "a", "name": "n", "date": "2026-04-01", "val_bpb": 1.2, "blurb": "b",
             "val_loss": 2.0, "bytes_total": 14_999_000 + len(CLEAN), "bytes_code": len(CLEAN)}
GOOD_LOG = (f"Serialized model: 60000000 bytes\nCode size: {len(CLEAN)} bytes\n"
            f"Serialized model int8+zlib: 14999000 bytes\nTotal submission size int8+zlib: {14_999_000 + len(CLEAN)} bytes\n")


def test_clean_folder_passes(tmp_path):
    report = check_record(make_record(tmp_path / "rec", GOOD_JSON, GOOD_LOG))
    assert report.ok and report.findings == [], report.as_dict()
    assert report.facts["log_sizes"]["train_seed0.log"]["total"] == 14_999_000 + len(CLEAN)


def test_missing_files_fields_and_oversize_are_errors(tmp_path):
    bad_json = {k: v for k, v in GOOD_JSON.items() if k != "author"} | {"bytes_total": 16_000_001, "val_bpb": "1.2"}
    big_log = GOOD_LOG.replace(f"int8+zlib: {14_999_000 + len(CLEAN)}", "int8+zlib: 16000100")
    report = check_record(make_record(tmp_path / "rec", bad_json, big_log))
    messages = [f"{f.severity} {f.rule}: {f.message}" for f in report.findings]
    assert "error submission-json: field 'author' is missing" in messages
    assert "error submission-json: field 'val_bpb' has type str" in messages
    assert any("bytes_total 16,000,001 is over" in m for m in messages)
    assert any(m.startswith("error size-cap: log states 16,000,100") for m in messages)
    report = check_record(make_record(tmp_path / "rec2", None, None))
    assert {f.message for f in report.findings} >= {"submission.json is missing", "no train log (*.log or *.txt) produced by the script"}


def test_counted_code_smaller_than_shipped_is_flagged(tmp_path):
    small = GOOD_JSON | {"bytes_code": 100}
    report = check_record(make_record(tmp_path / "rec", small, None, code=CLEAN * 10))
    assert any(f.rule == "code-bytes" and "convention (c)" in f.message for f in report.findings)


def test_cli_exit_codes(run_pgolf, tmp_path):
    good = make_record(tmp_path / "good", GOOD_JSON, GOOD_LOG)
    assert run_pgolf(["check", "record", str(good)])[0] == 0
    bad = make_record(tmp_path / "bad", GOOD_JSON, GOOD_LOG, code=LEAKY)
    code, out, _ = run_pgolf(["check", "record", str(bad), "--json"])
    assert code == 1 and json.loads(out)[0]["ok"] is False
    assert run_pgolf(["check", "record", str(tmp_path / "nothing")])[0] == 2
