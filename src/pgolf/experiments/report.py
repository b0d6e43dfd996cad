"""``pgolf report``: PNG plots and one static HTML page comparing runs.

Plots: train loss and val_bpb against step and against training wallclock (from metrics.jsonl),
val_bpb by phase (last validation before quantization vs the artifact's round trip), and artifact
bytes by tensor group (embed/head/attn/mlp/other/container, exact per
:mod:`pgolf.export.inspect`, plus code). Written into one folder with ``index.html``. A run that did
not finish (interrupted, failed) has its curves up to where it stopped and its status in the table;
the phase and size plots show the finished runs (and are left out when there are none).
"""

from __future__ import annotations

import html
from pathlib import Path

from pgolf.export.artifact import CODE_KIND_NOTES, SIZE_CAP_BYTES, SizeReport, recorded_size_report, size_report
from pgolf.experiments.read import Run, config_differences
from pgolf.files import atomic_target, atomic_write, check_writable, make_folder


def _save(fig, path: Path) -> None:
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def _series(run: Run, event: str, key: str) -> tuple[list, list, list]:
    rows = [r for r in run.metrics() if r.get("event") == event and key in r]
    return [r["step"] for r in rows], [r["train_time_ms"] / 1000.0 for r in rows], [r[key] for r in rows]


def _curves(plt, runs: list[Run], event: str, key: str, label: str, path: Path) -> None:
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        steps, seconds, values = _series(run, event, key)
        style = {"marker": "o"} if event == "val" else {}
        by_step.plot(steps, values, label=run.run_id, **style)
        by_time.plot(seconds, values, label=run.run_id, **style)
    by_step.set_xlabel("step")
    by_time.set_xlabel("training wallclock (s)")
    for ax in (by_step, by_time):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    fig.suptitle(f"{label} vs step and vs wallclock")
    _save(fig, path)
    plt.close(fig)


def phase_bars(results: dict) -> list[tuple[str, float, str]]:
    """(label, val_bpb, colour) per phase of a run: before quantization, the round trip, and a final
    sliding/TTT phase when the run had one."""
    post = results.get("post_quant", {}).get("val_bpb", results["val_bpb"])
    bars = [("before quantization", results["pre_quant"]["val_bpb"], "tab:blue"), ("artifact round trip", post, "tab:orange")]
    final_phase = results.get("final_phase", "standard")
    if final_phase != "standard":
        bars.append((f"artifact, {final_phase}", results["val_bpb"], "tab:green"))
    return bars


def _phases(plt, runs: list[Run], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(runs) + 2), 4))
    width = 0.27
    labelled: set[str] = set()
    for i, run in enumerate(runs):
        bars = phase_bars(run.results)
        for j, (label, value, color) in enumerate(bars):
            x = i + (j - (len(bars) - 1) / 2) * width
            ax.bar(x, value, width, color=color, label=None if label in labelled else label)
            labelled.add(label)
        ax.text(i + (len(bars) - 1) / 2 * width, bars[-1][1], f"{bars[-1][1]:.4f}", ha="center", va="bottom", fontsize=8)
    values = [v for r in runs for _, v, _ in phase_bars(r.results)]
    span = max(values) - min(values)
    ax.set_ylim(min(values) - max(span, 0.01), max(values) + max(span, 0.01) * 0.5)
    ax.set_xticks(range(len(runs)), [r.run_id for r in runs], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("val_bpb")
    ax.set_title("val_bpb by phase")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


GROUP_COLORS = {"embed": "tab:blue", "head": "tab:cyan", "attn": "tab:orange", "mlp": "tab:green", "other": "tab:purple",
                "container": "tab:gray", "model": "tab:olive", "code": "tab:red"}


def run_size(run: Run) -> SizeReport:
    """The run's size as every verb shows it: its artifact file measured now, its code as the run counted
    it (results.json); the recorded numbers alone when the artifact is not in the run folder."""
    from pgolf.train.loop import ARTIFACT_NAME

    artifact = run.path / ARTIFACT_NAME
    return size_report(artifact, recorded=run.results) if artifact.is_file() else recorded_size_report(run.results)


def artifact_groups(run: Run) -> dict[str, int]:
    """The run's artifact bytes by tensor role (exact, :func:`pgolf.export.inspect.role_totals`) plus
    ``code`` (:func:`run_size`'s); one ``model`` total when the artifact file is not in the run folder."""
    from pgolf.export.inspect import attribute_bytes, ordered_roles, role_totals
    from pgolf.train.loop import ARTIFACT_NAME

    artifact, size = run.path / ARTIFACT_NAME, run_size(run)
    groups = ordered_roles(role_totals(attribute_bytes(artifact))) if artifact.is_file() else {"model": size.bytes_model}
    return {**groups, "code": size.bytes_code}


def _sizes(plt, runs: list[Run], path: Path) -> dict[str, dict[str, int]]:
    table = {run.run_id: artifact_groups(run) for run in runs}
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(runs) + 3), 4))
    labelled: set[str] = set()
    for i, (run_id, groups) in enumerate(table.items()):
        bottom = 0.0
        for group in GROUP_COLORS:
            if groups.get(group):
                ax.bar(i, groups[group] / 1e6, bottom=bottom, color=GROUP_COLORS[group],
                       label=None if group in labelled else group)
                labelled.add(group)
                bottom += groups[group] / 1e6
        ax.text(i, bottom, f"{sum(groups.values()):,}", ha="center", va="bottom", fontsize=8)
    top = max(sum(g.values()) for g in table.values())
    if top > SIZE_CAP_BYTES / 2:  # the cap line would flatten a small model's bars to nothing
        ax.axhline(SIZE_CAP_BYTES / 1e6, color="black", linestyle="--", label="16,000,000-byte cap")
    ax.set_xticks(range(len(runs)), list(table), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("bytes (MB, decimal)")
    ax.set_title(f"artifact bytes by tensor group (cap {SIZE_CAP_BYTES:,})")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    _save(fig, path)
    plt.close(fig)
    return table


PLOTS = ("train_loss.png", "val_bpb.png", "bpb_by_phase.png", "artifact_bytes.png")


def _groups_table(groups: dict[str, dict[str, int]]) -> str:
    names = [g for g in GROUP_COLORS if any(g in row for row in groups.values())]
    head = "".join(f"<th>{g}</th>" for g in ("run", *names, "total"))
    rows = "".join(
        f"<tr><td>{html.escape(run_id)}</td>" + "".join(f"<td>{_fmt(row.get(g, 0))}</td>" for g in names)
        + f"<td>{_fmt(sum(row.values()))}</td></tr>" for run_id, row in groups.items())
    return f"<h2>Artifact bytes by tensor group</h2><table><tr>{head}</tr>{rows}</table>"


def _sizes_table(sizes: dict[str, SizeReport]) -> str:
    """Each run's size under the labels and in the order of every verb, and what its code count is."""
    fields = ("bytes_model", "bytes_code", "code_kind", "bytes_total", "headroom")
    head = "".join(f"<th>{f}</th>" for f in ("run", *fields))
    rows = "".join(f"<tr><td>{html.escape(run_id)}</td>" + "".join(
        f"<td>{html.escape(_fmt(size.breakdown()[f]))}</td>" for f in fields) + "</tr>" for run_id, size in sizes.items())
    notes = "".join(f"<p>{html.escape(CODE_KIND_NOTES[kind])}.</p>" for kind in dict.fromkeys(s.code_kind for s in sizes.values()))
    return f"<h2>Artifact size (cap {SIZE_CAP_BYTES:,} bytes)</h2><table><tr>{head}</tr>{rows}</table>{notes}"


def _html(runs: list[Run], groups: dict[str, dict[str, int]], plots: list[str], sizes: dict[str, SizeReport]) -> str:
    cols = ("status", "val_bpb", "val_loss", "quant_gap_bpb", "steps", "step_avg_ms", "train_time_s", "eval_time_s", "device")
    head = "".join(f"<th>{c}</th>" for c in ("run",) + cols)
    body = []
    for run in runs:
        values = {**run.results, "status": " ".join(filter(None, (run.status, run.detail)))}
        cells = "".join(f"<td>{html.escape(_fmt(values.get(c)))}</td>" for c in cols)
        body.append(f"<tr><td>{html.escape(run.run_id)}</td>{cells}</tr>")
    diffs = config_differences(runs[0].config, runs[-1].config) if len(runs) > 1 else {}
    diff_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(repr(a))}</td><td>{html.escape(repr(b))}</td></tr>" for k, (a, b) in diffs.items())
    images = "".join(f'<p><img src="{p}" alt="{p}"></p>' for p in plots)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>pgolf report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}</style></head><body><h1>pgolf report</h1>"
        f"<table><tr>{head}</tr>{''.join(body)}</table>"
        + (f"<h2>Config: {html.escape(runs[0].run_id)} vs {html.escape(runs[-1].run_id)}</h2><table>{diff_rows}</table>" if diffs else "")
        + (_sizes_table(sizes) if sizes else "")
        + (_groups_table(groups) if groups else "")
        + f"{images}</body></html>\n"
    )


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def write_report(runs: list[Run], out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    check_writable(out, "report folder")  # before any plotting
    make_folder(out)
    _curves(plt, runs, "train", "train_loss", "train loss (nats)", out / PLOTS[0])
    _curves(plt, runs, "val", "val_bpb", "val_bpb", out / PLOTS[1])
    finished = [r for r in runs if r.results]
    groups = {}
    if finished:
        _phases(plt, finished, out / PLOTS[2])
        groups = _sizes(plt, finished, out / PLOTS[3])
    plots = list(PLOTS if finished else PLOTS[:2])
    page = out / "index.html"
    atomic_write(page, _html(runs, groups, plots, report_sizes(runs)).encode())
    return [out / p for p in plots] + [page]


def report_sizes(runs: list[Run]) -> dict[str, SizeReport]:
    """:func:`run_size` of each finished run, by run id."""
    return {run.run_id: run_size(run) for run in runs if run.results}
