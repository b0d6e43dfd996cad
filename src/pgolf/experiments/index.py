"""The runs index: one SQLite file, ``<runs_dir>/index.sqlite``, a row per finished run.

The run directories stay the source of truth; the index is a cache over them. :func:`sync` adds
every finished run (one with ``results.json``) it does not know yet, so runs trained anywhere (the
package, a bundle, another machine's copied folder) appear without a registration step.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.experiments.read import RESULTS, Run, load_run

INDEX_NAME = "index.sqlite"
COLUMNS = (
    ("run_id", "TEXT PRIMARY KEY"), ("path", "TEXT"), ("preset", "TEXT"), ("seed", "INTEGER"),
    ("val_bpb", "REAL"), ("val_loss", "REAL"), ("pre_quant_val_bpb", "REAL"), ("bytes_total", "INTEGER"),
    ("steps", "INTEGER"), ("train_time_s", "REAL"), ("step_avg_ms", "REAL"), ("device", "TEXT"),
    ("world_size", "INTEGER"), ("git_commit", "TEXT"), ("finished", "REAL"), ("sweep", "TEXT"),
    ("config_json", "TEXT"), ("results_json", "TEXT"),
)


def connect(runs_dir: str | Path) -> sqlite3.Connection:
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(runs_dir / INDEX_NAME)
    db.row_factory = sqlite3.Row
    db.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(f'{n} {t}' for n, t in COLUMNS)})")
    return db


def _row(run: Run, sweep: str | None) -> dict:
    r = run.results
    return {
        "run_id": run.run_id, "path": str(run.path.resolve()), "preset": run.config.get("preset"), "seed": run.seed,
        "val_bpb": r.get("val_bpb"), "val_loss": r.get("val_loss"), "pre_quant_val_bpb": (r.get("pre_quant") or {}).get("val_bpb"),
        "bytes_total": r.get("bytes_total"), "steps": r.get("steps"), "train_time_s": r.get("train_time_s"),
        "step_avg_ms": r.get("step_avg_ms"), "device": r.get("device"), "world_size": r.get("world_size"),
        "git_commit": r.get("git_commit"), "finished": (run.path / RESULTS).stat().st_mtime, "sweep": sweep,
        "config_json": json.dumps(run.config, sort_keys=True), "results_json": json.dumps(r, sort_keys=True),
    }


def register(runs_dir: str | Path, run_dir: str | Path, sweep: str | None = None) -> None:
    """Add or refresh one finished run (keeping its sweep tag unless a new one is given)."""
    run = load_run(run_dir)
    row = _row(run, sweep)
    with closing(connect(runs_dir)) as db, db:
        if sweep is None:
            old = db.execute("SELECT sweep FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
            row["sweep"] = old["sweep"] if old else None
        names = ", ".join(row)
        db.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))


def sync(runs_dir: str | Path) -> int:
    """Register finished runs under ``runs_dir`` that the index lacks; return how many were added."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return 0
    with closing(connect(runs_dir)) as db:
        known = {r["run_id"] for r in db.execute("SELECT run_id FROM runs")}
    added = 0
    for child in sorted(runs_dir.iterdir()):
        if child.name not in known and (child / RESULTS).is_file() and (child / "config.json").is_file():
            register(runs_dir, child)
            added += 1
    return added


def rows(runs_dir: str | Path, sort: str = "finished", sweep: str | None = None) -> list[sqlite3.Row]:
    if sort not in {n for n, _ in COLUMNS}:
        raise PgolfError(f"--sort {sort!r}: not a column ({', '.join(n for n, _ in COLUMNS[:15])})")
    sync(runs_dir)
    order = "DESC" if sort == "finished" else "ASC"
    where, args = ("WHERE sweep = ?", (sweep,)) if sweep else ("", ())
    with closing(connect(runs_dir)) as db:
        return db.execute(f"SELECT * FROM runs {where} ORDER BY {sort} {order}", args).fetchall()


def resolve(runs_dir: str | Path, name: str) -> Run:
    """A run by directory path or by run id (an id prefix works when unique)."""
    path = Path(name)
    if (path / RESULTS).is_file():
        return load_run(path)
    sync(runs_dir)
    with closing(connect(runs_dir)) as db:
        found = db.execute("SELECT path FROM runs WHERE run_id LIKE ? ORDER BY run_id", (name.replace("%", "") + "%",)).fetchall()
    if not found:
        raise PgolfError(f"run {name!r}: not a run directory and not in {Path(runs_dir) / INDEX_NAME}")
    exact = [r for r in found if Path(r["path"]).name == name]
    if len(found) > 1 and not exact:
        raise PgolfError(f"run {name!r}: ambiguous ({', '.join(Path(r['path']).name for r in found[:5])})")
    return load_run((exact or found)[0]["path"])
