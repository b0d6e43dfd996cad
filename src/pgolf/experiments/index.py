"""The runs index: one SQLite file, ``<runs_dir>/index.sqlite``, a row per run directory.

The run directories stay the source of truth; the index is a cache over them. Every read first
:func:`sync`\\ s it with the disk: a run it does not know is added, one whose files changed since
(a replaced run, a finished one that was running) is read again, and one whose folder is gone is
dropped. So runs trained anywhere (the package, a bundle, another machine's copied folder) appear
without a registration step, and the index never shows a score the disk no longer holds. Runs that
did not finish are listed too, with their status (``interrupted``, ``failed``, ...) and its reason.
Where the runs folder cannot be written (read-only, full), the index is built in memory instead.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.experiments.read import CONFIG, RESULTS, Run, load_any_run
from pgolf.train.lifecycle import STATUS, run_state

INDEX_NAME = "index.sqlite"
COLUMNS = (
    ("run_id", "TEXT PRIMARY KEY"), ("path", "TEXT"), ("preset", "TEXT"), ("seed", "INTEGER"),
    ("val_bpb", "REAL"), ("val_loss", "REAL"), ("pre_quant_val_bpb", "REAL"), ("bytes_total", "INTEGER"),
    ("steps", "INTEGER"), ("train_time_s", "REAL"), ("step_avg_ms", "REAL"), ("device", "TEXT"),
    ("world_size", "INTEGER"), ("git_commit", "TEXT"), ("finished", "REAL"), ("sweep", "TEXT"),
    ("config_json", "TEXT"), ("results_json", "TEXT"), ("status", "TEXT"), ("detail", "TEXT"), ("signature", "TEXT"),
)


def _prepare(db: sqlite3.Connection) -> sqlite3.Connection:
    db.row_factory = sqlite3.Row
    db.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(f'{n} {t}' for n, t in COLUMNS)})")
    have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    for name, kind in COLUMNS:  # an index written by an older pgolf
        if name not in have:
            db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
    return db


def _in_memory(runs_dir: Path) -> sqlite3.Connection:
    """A private copy of the index (empty when there is none to read), for a runs folder pgolf cannot write."""
    db = sqlite3.connect(":memory:")
    try:
        with closing(sqlite3.connect(f"{(runs_dir / INDEX_NAME).absolute().as_uri()}?mode=ro", uri=True)) as disk:
            disk.backup(db)
    except sqlite3.Error:
        pass
    return _prepare(db)


def connect(runs_dir: str | Path) -> sqlite3.Connection:
    """The index, synced with the disk; in memory where ``runs_dir`` cannot be written."""
    runs_dir = Path(runs_dir)
    db = None
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        db = _prepare(sqlite3.connect(runs_dir / INDEX_NAME))
        _sync(db, runs_dir)
        return db
    except (OSError, sqlite3.Error):  # read-only or full: the cache is rebuilt, not kept
        if db is not None:
            db.close()
    db = _in_memory(runs_dir)
    _sync(db, runs_dir)
    return db


def _signature(path: Path) -> str:
    """Changes when the run's state does: where it is, and its status, results and config files."""
    stamps = []
    for name in (STATUS, RESULTS, CONFIG):
        try:
            st = (path / name).stat()
            stamps.append(f"{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            stamps.append("-")
    return "|".join([str(path.resolve()), *stamps])


def _row(run: Run, sweep: str | None, signature: str) -> dict:
    r = run.results
    stamp = next((run.path / n for n in (RESULTS, STATUS, CONFIG) if (run.path / n).is_file()), run.path)
    seed = (run.config.get("train") or {}).get("seed")
    return {
        "run_id": run.run_id, "path": str(run.path.resolve()), "preset": run.config.get("preset"), "seed": seed,
        "val_bpb": r.get("val_bpb"), "val_loss": r.get("val_loss"), "pre_quant_val_bpb": (r.get("pre_quant") or {}).get("val_bpb"),
        "bytes_total": r.get("bytes_total"), "steps": r.get("steps"), "train_time_s": r.get("train_time_s"),
        "step_avg_ms": r.get("step_avg_ms"), "device": r.get("device"), "world_size": r.get("world_size"),
        "git_commit": r.get("git_commit"), "finished": stamp.stat().st_mtime, "sweep": sweep,
        "config_json": json.dumps(run.config, sort_keys=True), "results_json": json.dumps(r, sort_keys=True),
        "status": run.status, "detail": run.detail, "signature": signature,
    }


def _put(db: sqlite3.Connection, run_dir: Path, sweep: str | None) -> None:
    """Write one run's row, keeping its sweep tag unless a new one is given."""
    run = load_any_run(run_dir)
    row = _row(run, sweep, _signature(run.path))
    if sweep is None:
        old = db.execute("SELECT sweep FROM runs WHERE run_id = ?", (run.run_id,)).fetchone()
        row["sweep"] = old["sweep"] if old else None
    db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))


def _sync(db: sqlite3.Connection, runs_dir: Path) -> None:
    known = {r["run_id"]: r["signature"] for r in db.execute("SELECT run_id, signature FROM runs")}
    on_disk = set()
    if runs_dir.is_dir():
        for child in sorted(runs_dir.iterdir()):
            if child.name.startswith(".") or not child.is_dir() or run_state(child) is None:
                continue
            on_disk.add(child.name)
            if known.get(child.name) != _signature(child):
                try:
                    _put(db, child, None)
                except PgolfError:  # a file being rewritten right now, or corrupt: listed once it reads
                    on_disk.discard(child.name)
    gone = [run_id for run_id in known if run_id not in on_disk]
    db.executemany("DELETE FROM runs WHERE run_id = ?", [(g,) for g in gone])
    db.commit()


def register(runs_dir: str | Path, run_dir: str | Path, sweep: str | None = None) -> None:
    """Add or refresh one run (any state), tagging it with ``sweep`` when given."""
    with closing(connect(runs_dir)) as db:
        _put(db, Path(run_dir), sweep)
        db.commit()


def sync(runs_dir: str | Path) -> None:
    """Bring the index in line with the run directories under ``runs_dir``."""
    connect(runs_dir).close()


def rows(runs_dir: str | Path, sort: str = "finished", sweep: str | None = None) -> list[sqlite3.Row]:
    if sort not in {n for n, _ in COLUMNS}:
        raise PgolfError(f"--sort {sort!r}: not a column ({', '.join(n for n, _ in COLUMNS[:15])}, status)")
    order = "DESC" if sort == "finished" else "ASC"
    where, args = ("WHERE sweep = ?", (sweep,)) if sweep else ("", ())
    with closing(connect(runs_dir)) as db:
        return db.execute(f"SELECT * FROM runs {where} ORDER BY {sort} {order}", args).fetchall()


def resolve(runs_dir: str | Path, name: str, finished: bool = True) -> Run:
    """A run by directory path or by run id (an id prefix works when unique); ``finished=False`` also
    takes one that was interrupted, failed or is still training."""
    path = Path(name)
    if path.is_dir() and run_state(path) is not None:
        return _wanted(load_any_run(path), finished)
    with closing(connect(runs_dir)) as db:
        found = db.execute("SELECT path FROM runs WHERE run_id LIKE ? ORDER BY run_id", (name.replace("%", "") + "%",)).fetchall()
    if not found:
        raise PgolfError(f"run {name!r}: not a run directory and not in {Path(runs_dir) / INDEX_NAME}")
    exact = [r for r in found if Path(r["path"]).name == name]
    if len(found) > 1 and not exact:
        raise PgolfError(f"run {name!r}: ambiguous ({', '.join(Path(r['path']).name for r in found[:5])})")
    return _wanted(load_any_run((exact or found)[0]["path"]), finished)


def _wanted(run: Run, finished: bool) -> Run:
    if finished and not run.results:
        raise PgolfError(f"run {run.run_id}: {run.status}{' (' + run.detail + ')' if run.detail else ''}, so it has no "
                         f"results; `pgolf report` and `pgolf runs show` read it")
    return run
