"""What ``pgolf train`` does around a run: refuse what would fail or overwrite, and record how it ends.

Before anything is written, :func:`train_recorded` runs the preflight (:mod:`pgolf.train.preflight`)
and refuses a run folder that already holds a run: a finished run is never overwritten, and one that
did not finish is not appended to. Only an explicit replace (``pgolf train --replace``,
``PGOLF_REPLACE_RUN=1``) deletes it first; a run is never resumed, it trains again from step 0.

While it trains, the run's ``status.json`` says ``running`` (with pid and host); at the end
``finished``, ``interrupted`` (Ctrl-C) or ``failed`` with the reason, which is also the last line
of its ``train.log``. :func:`run_state` reads that back for ``pgolf runs`` and ``pgolf report``.
Rank 0 shows the run's long phases on stderr (:mod:`pgolf.progress`).

Kept out of the bundled ``train_gpt.py`` (it is not on the path of :func:`pgolf.train.loop.train`),
so it costs the submission no code bytes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from pgolf.config import Config
from pgolf.errors import PgolfError, one_line
from pgolf.files import write_failure
from pgolf.train.rundir import RunDir

STATUS = "status.json"
RUN_FILES = ("train.log", "metrics.jsonl", "config.json", "results.json", STATUS)
REPLACE_ENV = "PGOLF_REPLACE_RUN"
TRAIN_ADVICE = f"choose another RUN_ID, or replace it (pgolf train --replace, {REPLACE_ENV}=1: deleted, then trained again from step 0)"


def replace_requested(flag: bool = False) -> bool:
    """``--replace``, or PGOLF_REPLACE_RUN=1."""
    return flag or os.environ.get(REPLACE_ENV, "") == "1"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


def run_state(path: Path) -> tuple[str, str] | None:
    """(status, detail) of the run in ``path``; None when it holds none.

    ``died``: recorded as running, but its process on this host is gone (killed, out of memory);
    ``unfinished``: no outcome recorded (a bundle's run, or one from a pgolf before status files).
    """
    try:
        status = json.loads((path / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = None
    finished = (path / "results.json").is_file()
    if isinstance(status, dict) and status.get("status") and not (finished and status["status"] == "running"):
        state, detail = str(status["status"]), str(status.get("detail", ""))
        if state == "running" and status.get("host") == socket.gethostname() and not _alive(int(status.get("pid", 0))):
            return "died", f"process {status.get('pid')} ended without recording an outcome"
        return state, detail
    if finished:
        return "finished", ""
    if any((path / name).exists() for name in RUN_FILES):
        return "unfinished", "no outcome recorded"
    return None


def reuse_problem(path: Path, replace: bool, advice: str = TRAIN_ADVICE) -> str | None:
    """Why a new run may not start in ``path``, or None (absent, empty, or a run to be replaced)."""
    if not path.exists():
        return None
    if not path.is_dir():
        return f"{path}: exists and is not a folder"
    state = run_state(path)
    if state is None:
        return None if not any(path.iterdir()) else f"{path}: exists, holds files and is not a run; choose another RUN_ID"
    status, detail = state
    if status == "running":
        return f"{path}: a run is training there now ({detail}); choose another RUN_ID"
    if replace:
        return None
    what = "a finished run" if status == "finished" else f"a run that did not finish ({status}{' ' + detail if detail else ''})"
    return f"{path}: already holds {what}; {advice}"


def clear_run_dir(path: Path) -> None:
    """Delete the run in ``path``: renamed aside first, so no mix of old and new files can remain."""
    if not path.exists():
        return
    aside = path.with_name(f".{path.name}.replaced-{secrets.token_hex(3)}")
    try:
        path.rename(aside)
    except OSError as exc:
        raise write_failure(exc, path) from None
    shutil.rmtree(aside, ignore_errors=True)


def last_step(run: RunDir) -> int:
    """The last step metrics.jsonl records: where a run that stopped got to."""
    try:
        with open(run.path / "metrics.jsonl", "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            lines = f.read().splitlines()
        return int(json.loads(lines[-1]).get("step", 0)) if lines else 0
    except (OSError, ValueError, AttributeError):
        return 0


def set_status(run: RunDir, status: str, detail: str = "", **extra) -> None:
    run.write_json(STATUS, {"status": status, "detail": detail, "time": time.time(), **extra})


def record_outcome(run: RunDir, exc: BaseException | None = None) -> None:
    """How the run ended (finished; interrupted; failed: reason), in train.log and status.json."""
    if exc is None:
        status, detail = "finished", ""
    elif isinstance(exc, KeyboardInterrupt):
        status, detail = "interrupted", f"at step {last_step(run)}"
    else:
        status, detail = "failed", f"at step {last_step(run)}: {one_line(exc)}"
    try:
        run.log(f"run {status}{' ' + detail if detail else ''}", console=status == "interrupted")
        set_status(run, status, detail, step=last_step(run))
    except (OSError, PgolfError):  # a full disk: the error that stopped the run is the one to report
        if exc is None:
            raise


def train_recorded(cfg: Config, runs_dir: str | Path = "runs", replace: bool = False, echo: bool = True) -> dict:
    """:func:`pgolf.train.loop.train` with the preflight first and the outcome recorded.

    Every rank checks before the process group forms (``init_runtime``'s barrier), so no rank can
    see the folder rank 0 is about to create; only rank 0 replaces and records.
    """
    from pgolf.progress import display_mode
    from pgolf.runtime import pick_device
    from pgolf.train.loop import setup, train
    from pgolf.train.preflight import checkpoint_bytes, disk_problem, first_problem

    display_mode()  # a bad PGOLF_PROGRESS is refused before anything is written
    runs_dir = Path(runs_dir)
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = pick_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    problem = first_problem(cfg, runs_dir, world_size, device, replace) or disk_problem(runs_dir, checkpoint_bytes(cfg))
    if problem:
        raise PgolfError(problem)
    if replace and rank == 0 and cfg.train.run_id:
        clear_run_dir(runs_dir / cfg.train.run_id)
    s = setup(cfg, runs_dir, echo=echo)
    if s.rt.is_master:  # its long phases (validation, round trip, warm-up) shown on stderr
        s.watch = run_phases(s.rt.world_size)
    set_status(s.run, "running", f"pid {os.getpid()} on {socket.gethostname()}", pid=os.getpid(), host=socket.gethostname())
    try:
        results = train(cfg, session=s)
    except BaseException as exc:
        if s.watch is not None:
            s.watch.end(finished=False)
        record_outcome(s.run, exc)
        if isinstance(exc, OSError):  # a write error that names no file: name the run's folder
            raise write_failure(exc, s.run.path) from None
        raise
    if s.watch is not None:
        s.watch.end()
    record_outcome(s.run)
    return results


def run_phases(world_size: int):
    """The display of a run's long phases (pgolf.progress), the loop's phase names spelled out; the
    sliding and TTT phases count what their ledgers record."""
    from pgolf.eval.ledger import counting_into
    from pgolf.eval.phases import PHASE_LABELS
    from pgolf.progress import RunPhases

    def ledger_counting(name: str, shown):
        return counting_into(shown) if name in PHASE_LABELS else None

    labels = {"round trip": "round trip of the artifact", **PHASE_LABELS}
    return RunPhases("train: ", labels, world_size, ledger_counting)
