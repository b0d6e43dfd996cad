"""Size accounting: on-disk model bytes + counted code bytes against the 16,000,000-byte cap."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import pgolf
from pgolf.errors import PgolfError
from pgolf.export import artifact
from pgolf.export.artifact import (
    SIZE_CAP_BYTES,
    check_under_cap,
    code_files,
    count_code_bytes,
    export_model,
    make_size_report,
    size_report,
)
from pgolf.export.loading import load_weights
from pgolf.quant.int8 import dequantize, quantize_state_dict


REFERENCE_SCRIPT_BYTES = 47_686  # /work/shared/oracles/README.md: reference/train_gpt.py, blob 651beb2b89


@pytest.fixture()
def oracles() -> Path:
    root = Path(os.environ.get("PGOLF_ORACLES", Path(__file__).resolve().parents[2].parent / "shared" / "oracles"))
    if not (root / "reference" / "train_gpt.py").is_file():
        pytest.skip(f"oracles not found at {root} (set PGOLF_ORACLES to their folder)")
    return root


def imported_pgolf_files() -> dict[str, int]:
    """Every pgolf module file in sys.modules now and its size on disk, found here, not by pgolf."""
    files = {os.path.realpath(m.__file__) for n, m in list(sys.modules.items())
             if (n == "pgolf" or n.startswith("pgolf.")) and isinstance(getattr(m, "__file__", None), str)}
    return {f: os.path.getsize(f) for f in files}


def small_sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"w": torch.randn(300, 300, generator=g), "g.attn_scale": torch.randn(8, generator=g)}


def test_cap_is_decimal():
    assert SIZE_CAP_BYTES == 16_000_000


def test_code_files_are_the_imported_pgolf_modules():
    import pgolf.tokenizer.luts  # noqa: F401  (holds non-ASCII text: bytes, not characters, are counted)

    files = code_files()
    root = Path(pgolf.__file__).resolve().parent
    names = {str(f.relative_to(root.parent)) for f in files}
    assert {"pgolf/__init__.py", "pgolf/errors.py", "pgolf/quant/int8.py", "pgolf/export/artifact.py"} <= names
    assert all(f.suffix == ".py" and root in f.parents for f in files)
    assert len(set(files)) == len(files) == len(sorted(files))
    on_disk = imported_pgolf_files()  # the source files are LF-only UTF-8, so text bytes == file bytes
    assert {str(f) for f in files} == set(on_disk)
    assert count_code_bytes(files) == sum(on_disk.values())


def test_code_bytes_are_the_references_own_count(oracles):
    # the reference counts itself as len(Path(__file__).read_text(encoding="utf-8").encode("utf-8"))
    script = oracles / "reference" / "train_gpt.py"
    assert count_code_bytes([script]) == os.path.getsize(script) == REFERENCE_SCRIPT_BYTES


def test_code_bytes_are_utf8_text_bytes(tmp_path):
    f = tmp_path / "x.py"
    f.write_bytes("s = 'é€'\r\n".encode("utf-8"))
    # Read as text like the reference (universal newlines), then UTF-8 encoded.
    assert count_code_bytes([f]) == len("s = 'é€'\n".encode("utf-8")) == 12
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(PgolfError, match="bad.py: cannot count code bytes"):
        count_code_bytes([bad])


def test_size_report_measures_the_file(tmp_path):
    path = tmp_path / "m.pgolf"
    path.write_bytes(b"x" * 1234)
    code = tmp_path / "c.py"
    code.write_text("pass\n")
    r = size_report(path, [code])
    assert (r.bytes_model, r.bytes_code, r.bytes_total) == (1234, 5, 1239)
    assert r.headroom == SIZE_CAP_BYTES - 1239 and not r.over_cap
    assert r.code_files == (str(code),) and r.code_source == "bundle c.py" and r.code_kind == "bundle"
    line = r.summary()
    assert "\n" not in line and "1,239" in line and "1,234" in line and "15,998,761 bytes under" in line
    with pytest.raises(PgolfError, match="not found"):
        size_report(tmp_path / "nope")


def test_check_under_cap():
    check_under_cap(make_size_report(SIZE_CAP_BYTES - 10, 10, "x"))  # exactly at the cap is fine
    over = make_size_report(15_999_000, 2_345, "x")
    assert over.over_cap and over.headroom == -1_345
    assert "1,345 bytes OVER" in over.summary()
    with pytest.raises(PgolfError) as info:
        check_under_cap(over)
    assert str(info.value) == "artifact is 1345 bytes over the 16,000,000-byte cap (model 15999000 + code 2345)"


def test_export_model_writes_and_reports(tmp_path):
    path = tmp_path / "model.pgolf"
    report = export_model(small_sd(), path, {"seed": 1})
    assert report.bytes_model == os.path.getsize(path)
    assert report.bytes_code == sum(imported_pgolf_files().values())
    assert report.bytes_total == report.bytes_model + report.bytes_code
    assert "pgolf/export/artifact.py" in report.code_files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pgolf"]
    loaded, info = load_weights(path)
    assert info.meta == {"seed": 1}
    expect = dequantize(quantize_state_dict(small_sd()))
    assert all(torch.equal(loaded[k], expect[k]) for k in expect)


def test_export_over_cap_raises_and_leaves_no_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    # Random bytes pass through as-is and do not compress: the file alone is over the cap.
    sd = {"noise": torch.randint(0, 256, (SIZE_CAP_BYTES + 1,), dtype=torch.uint8, generator=g)}
    code = tmp_path / "code.py"
    code.write_text("x = 1\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PgolfError) as info:
        export_model(sd, out / "model.pgolf", {}, files=[code])
    msg = str(info.value)
    model = int(msg.split("(model ")[1].split(" ")[0])
    assert model > SIZE_CAP_BYTES
    over = model + 6 - SIZE_CAP_BYTES
    assert msg == f"artifact is {over} bytes over the 16,000,000-byte cap (model {model} + code 6)"
    assert list(out.iterdir()) == []


def test_export_over_cap_keeps_an_older_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pgolf"
    path.write_bytes(b"old")
    monkeypatch.setattr(artifact, "SIZE_CAP_BYTES", 100)
    with pytest.raises(PgolfError, match="bytes over"):
        export_model(small_sd(), path, {})
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.pgolf"]


def test_export_into_missing_folder(tmp_path):
    with pytest.raises(PgolfError, match="does not exist"):
        export_model(small_sd(), tmp_path / "no" / "m.pgolf", {})
