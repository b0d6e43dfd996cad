"""One byte accounting, shown the same way by every verb (issue 18, item 8).

Before this, one model was 624,838 bytes in ``train``, 534,267 in ``quant sweep`` and 256,449
bundled: each verb counted the code itself (train the modules its run imported, the sweep those
*its own* process imported, the bundle its shipped file), and ``quant inspect`` split an int8
artifact into header/metadata/values. Now every verb's printed and JSON size is the one function's
(:func:`pgolf.export.artifact.size_report` on the same artifact and the same code), under the same
labels in the same order, with the kind of its code count; and every check below recomputes the
numbers by brute force: the artifact read and ``len()``-ed, the code files read and encoded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pgolf.export.artifact import SIZE_CAP_BYTES, SIZE_FIELDS, recorded_size_report, size_report
from pgolf.train.loop import ARTIFACT_NAME, CHECKPOINT_NAME

SRC = Path(__file__).resolve().parents[1] / "src"
LABELS = [*SIZE_FIELDS]  # bytes_model, bytes_code, bytes_total, headroom: the printed order everywhere


def results_of(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def brute_force(artifact: Path, code: list[Path]) -> dict:
    """The size recomputed from scratch: the artifact's bytes and the code files' UTF-8 text."""
    model = len(artifact.read_bytes())
    code_bytes = sum(len(p.read_text(encoding="utf-8").encode("utf-8")) for p in code)
    return {"bytes_model": model, "bytes_code": code_bytes, "bytes_total": model + code_bytes,
            "headroom": SIZE_CAP_BYTES - model - code_bytes}


def the_run_counted(run: Path) -> dict:
    """Brute force over what the run counted: its artifact, and the module files its results list."""
    return brute_force(run / ARTIFACT_NAME, [SRC / f for f in results_of(run)["code_files"]])


def numbers(breakdown: dict) -> dict:
    return {k: breakdown[k] for k in LABELS}


def printed_block(out: str) -> list[str]:
    """The size block a verb printed: its four labelled lines (any indent), in printed order."""
    return [line.strip() for line in out.splitlines() if line.strip().split(" ", 1)[0] in LABELS]


def assert_printed(out: str, size) -> None:
    """``out`` shows ``size`` as :meth:`SizeReport.lines` does: the labels in order, the same numbers,
    the same code line (only the model's description is the verb's own), then the note on the code."""
    block, expected = printed_block(out), [line.strip() for line in size.lines()]
    assert [line.split()[0] for line in block] == LABELS, out
    assert [int(line.split()[1].replace(",", "")) for line in block] == [size.breakdown()[k] for k in LABELS]
    assert block[0].split()[:2] == expected[0].split()[:2] and block[1:] == expected[1:4]
    assert expected[-1] in out  # what the code count is and why a bundle's is smaller


def test_train_results_and_summary_are_the_one_accounting(finished_run, capsys):
    from pgolf.train.cli import print_summary

    results = results_of(finished_run)
    truth = the_run_counted(finished_run)
    assert numbers(results) == truth
    assert results["code_kind"] == "package" and results["code_source"].endswith("pgolf module files imported")
    assert size_report(finished_run / ARTIFACT_NAME, recorded=results).breakdown() == {
        **recorded_size_report(results).breakdown(), "code_source": results["code_source"] + ", by its run"}
    print_summary(results)
    out = capsys.readouterr().out
    assert_printed(out, recorded_size_report(results))
    log = (finished_run / "train.log").read_text()
    assert recorded_size_report(results).summary() in log.splitlines()[-10:]  # the log's size line: the same numbers


def test_quant_inspect_groups_an_int8_artifact_by_role_and_sizes_it_as_its_run(finished_run, run_pgolf, stock_bundle):
    artifact = finished_run / ARTIFACT_NAME
    code, out, err = run_pgolf(["quant", "inspect", str(artifact), "--groups-only", "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["roles"]) == {"embed", "attn", "mlp", "other", "container"}  # not header/metadata/values
    assert sum(doc["roles"].values()) == len(artifact.read_bytes())
    assert doc["size"] == size_report(artifact, recorded=results_of(finished_run)).breakdown()
    assert numbers(doc["size"]) == the_run_counted(finished_run)  # the run's code count, not this process's
    code, out, _ = run_pgolf(["quant", "inspect", str(artifact), "--groups-only"])
    assert code == 0 and all(f"{b:>12,}  {role}" in out for role, b in doc["roles"].items())
    assert_printed(out, size_report(artifact, recorded=results_of(finished_run)))
    bundle = stock_bundle("tiny_cpu")[0] / "train_gpt.py"
    code, out, _ = run_pgolf(["quant", "inspect", str(artifact), "--groups-only", "--bundle", str(bundle), "--json"])
    size = json.loads(out)["size"]
    assert size == size_report(artifact, [bundle]).breakdown() and size["code_kind"] == "bundle"
    assert numbers(size) == brute_force(artifact, [bundle])
    code, _, err = run_pgolf(["quant", "inspect", str(artifact), "--bundle", str(finished_run / "nope.py")])
    assert code == 2 and err.startswith("pgolf: error: --bundle ") and "file not found" in err


def test_quant_sweep_counts_the_code_its_checkpoints_run_counted(shared_data, finished_run, run_pgolf, tmp_path):
    checkpoint = finished_run / CHECKPOINT_NAME
    code, out, err = run_pgolf([
        "quant", "sweep", str(checkpoint), "--schemes", "int8,small=4096", "int6,small=4096", "--compressors", "zlib",
        "--val", str(shared_data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"),
        "--tokenizer", str(shared_data / "tokenizers" / "fineweb_1024_bpe.model"), "--max-tokens", "2048",
        "--out", str(tmp_path / "sweep"), "--json"])
    assert code == 0, err
    rows = json.loads(out.splitlines()[-1])["rows"]
    run = results_of(finished_run)
    for i, row in enumerate(rows):
        artifact = tmp_path / "sweep" / f"sweep_{i}_zlib.pgolf"
        one = size_report(artifact, recorded=run).breakdown()
        assert {k: row[k] for k in one} == one
        assert numbers(row) == brute_force(artifact, [SRC / f for f in run["code_files"]])
    # the same policy as the run's, and the same code: the sweep's row differs from train's total only
    # by the artifact's metadata (the run stores its config, the sweep only the policy)
    assert rows[0]["bytes_code"] == run["bytes_code"] and rows[0]["bytes_model"] <= run["bytes_model"]
    code, out, _ = run_pgolf(["quant", "sweep", str(checkpoint), "--schemes", "int8,small=4096", "--compressors", "zlib",
                              "--val", str(shared_data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"),
                              "--tokenizer", str(shared_data / "tokenizers" / "fineweb_1024_bpe.model"),
                              "--max-tokens", "2048", "--out", str(tmp_path / "sweep2")])
    head = [line for line in out.splitlines() if line.lstrip().startswith("bytes_model")][0].split()
    assert head[:4] == LABELS and "code counted as the package" in out


def test_report_shows_each_runs_size_as_the_one_function(finished_run, run_pgolf, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs / "w")  # the report indexes its runs folder: leave the shared one as it is
    run = runs / "w"
    code, out, err = run_pgolf(["report", str(run), "--runs-dir", str(runs), "--out", str(tmp_path / "rep"), "--json"])
    assert code == 0, err
    size = json.loads(out)["sizes"]["w"]
    assert size == size_report(run / ARTIFACT_NAME, recorded=results_of(run)).breakdown()
    assert numbers(size) == the_run_counted(finished_run)
    code, out, _ = run_pgolf(["report", str(run), "--runs-dir", str(runs), "--out", str(tmp_path / "rep2")])
    assert_printed(out, size_report(run / ARTIFACT_NAME, recorded=results_of(run)))
    page = (tmp_path / "rep2" / "index.html").read_text()
    assert "<th>bytes_model</th><th>bytes_code</th><th>code_kind</th><th>bytes_total</th><th>headroom</th>" in page
    from pgolf.experiments.read import load_run
    from pgolf.experiments.report import artifact_groups

    groups = artifact_groups(load_run(run))
    assert sum(v for k, v in groups.items() if k != "code") == len((run / ARTIFACT_NAME).read_bytes())
    assert sum(groups.values()) == size["bytes_total"]


@pytest.fixture()
def bundle_cli(stock_bundle, monkeypatch):
    """``pgolf bundle`` with its build replaced by a copy of the stock tiny_cpu bundle (a build takes
    10-40 s here; what is under test is how the verb sizes what it built)."""
    import dataclasses

    import pgolf.bundle.build

    folder, report = stock_bundle("tiny_cpu")

    def build(cfg, out, **_):
        shutil.copyfile(folder / "train_gpt.py", out)
        return dataclasses.replace(report, path=str(out))

    monkeypatch.setattr(pgolf.bundle.build, "build_bundle", build)
    return folder / "train_gpt.py"


def test_bundle_sizes_an_artifact_with_its_own_bytes_as_the_code(finished_run, bundle_cli, run_pgolf, tmp_path):
    artifact, script = finished_run / ARTIFACT_NAME, tmp_path / "train_gpt.py"
    code, out, err = run_pgolf(["bundle", "--preset", "tiny_cpu", "--out", str(script), "--artifact", str(artifact), "--json"])
    assert code == 0, err
    size = json.loads(out)["size"]
    assert size == size_report(artifact, [script]).breakdown() and size["code_kind"] == "bundle"
    assert numbers(size) == brute_force(artifact, [script])
    assert size["bytes_code"] < results_of(finished_run)["bytes_code"] / 10  # why the bundled total is so much smaller
    code, out, _ = run_pgolf(["bundle", "--preset", "tiny_cpu", "--out", str(script), "--artifact", str(artifact)])
    assert_printed(out, size_report(artifact, [script]))
    code, out, _ = run_pgolf(["bundle", "--preset", "tiny_cpu", "--out", str(script)])
    [line] = printed_block(out)  # no model: the bytes_code line alone, the same line as in the block
    assert line == size_report(artifact, [script]).lines()[1].strip() and "code counted as a bundle" in out
    code, _, err = run_pgolf(["bundle", "--preset", "tiny_cpu", "--out", str(script), "--artifact", str(tmp_path / "no")])
    assert code == 2 and "--artifact" in err and "file not found" in err


def test_submit_sizes_each_seed_with_the_bundle_it_ships(finished_run, stock_bundle, run_pgolf, tmp_path):
    bundle = stock_bundle("tiny_cpu")[0] / "train_gpt.py"
    argv = ["submit", str(finished_run), "--name", "Bytes", "--author", "A", "--github-id", "a", "--date", "2026-12-02",
            "--track", "non_record_16mb", "--bundle", str(bundle), "--records-dir"]
    code, out, err = run_pgolf([*argv, str(tmp_path / "records"), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    folder = Path(doc["path"])
    seed = str(json.loads((finished_run / "config.json").read_text())["train"]["seed"])
    shipped = folder / "train_gpt.py"
    one = size_report(finished_run / ARTIFACT_NAME, [shipped]).breakdown()
    assert doc["sizes"][seed] == one and one["code_kind"] == "bundle"
    assert numbers(one) == brute_force(finished_run / ARTIFACT_NAME, [bundle])
    row = json.loads((folder / "submission.json").read_text())["seed_results"][seed]
    assert (row["artifact_bytes"], row["bytes_model"], row["bytes_code"]) == (one["bytes_total"], one["bytes_model"], one["bytes_code"])
    code, out, _ = run_pgolf([*argv, str(tmp_path / "records2")])
    assert_printed(out, size_report(finished_run / ARTIFACT_NAME, [shipped]))
