"""Once a bundle exists, it is the code: PGOLF_CODE_FILES points the one size accounting (and the
run's source hash) at the shipped file instead of the package's modules."""

from __future__ import annotations

import hashlib

from pgolf.export.artifact import CODE_FILES_ENV, size_report
from pgolf.runtime import source_hash


def test_size_report_counts_the_named_bundle(tmp_path, monkeypatch):
    artifact, bundle = tmp_path / "model.pgolf", tmp_path / "train_gpt.py"
    artifact.write_bytes(b"\0" * 1000)
    bundle.write_text("print('hi')\n" * 7)
    package = size_report(artifact)
    monkeypatch.setenv(CODE_FILES_ENV, str(bundle))
    report = size_report(artifact)
    assert report.bytes_code == bundle.stat().st_size == 84 and report.bytes_total == 1084
    assert report.code_source == "bundle train_gpt.py" and package.bytes_code > report.bytes_code
    assert size_report(artifact, files=[artifact]).bytes_code == 1000  # an explicit list still wins


def test_source_hash_of_a_bundle_is_the_hash_of_the_bundle(tmp_path, monkeypatch):
    bundle = tmp_path / "train_gpt.py"
    bundle.write_text("x = 1\n")
    package_hash = source_hash()
    monkeypatch.setenv(CODE_FILES_ENV, str(bundle))
    assert source_hash() == hashlib.sha256(b"train_gpt.py" + b"x = 1\n").hexdigest() != package_hash
