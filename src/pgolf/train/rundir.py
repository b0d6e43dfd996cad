"""A run's directory, ``runs/<run_id>/``: the self-describing record of one training run.

``train.log`` opens with a header (source hash, commit, versions, device, resolved config) and then
holds every log line; ``metrics.jsonl`` one JSON object per logged event; ``config.json`` the
resolved config; ``results.json`` the final numbers, written atomically; ``status.json`` the run's
state: ``running`` (with pid and host) while it trains, then ``finished``, ``interrupted`` or
``failed`` with the reason, also the log's last line. Only rank 0 writes.

A folder that holds a run is never reused: :func:`reuse_problem` refuses it, and only an explicit
replace (``pgolf train --replace``, ``PGOLF_REPLACE_RUN=1``) deletes it first (:func:`clear_run_dir`).
A run cannot be resumed: its training starts again from step 0.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from pgolf.errors import PgolfError, one_line
from pgolf.files import append_line, make_folder, write_failure, write_json_atomic  # noqa: F401 (write_json_atomic: re-exported)

STATUS = "status.json"
RUN_FILES = ("train.log", "metrics.jsonl", "config.json", "results.json", STATUS)
REPLACE_ENV = "PGOLF_REPLACE_RUN"


def replace_requested(flag: bool | None = None) -> bool:
    """An explicit ``flag``, else PGOLF_REPLACE_RUN=1."""
    return flag if flag is not None else os.environ.get(REPLACE_ENV, "") == "1"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def run_state(path: Path) -> tuple[str, str] | None:
    """(status, detail) of the run in ``path``, None when it holds none.

    ``died``: recorded as running, but its process on this host is gone (killed, out of memory);
    ``unfinished``: no outcome recorded at all (a pgolf from before status files, or a copied folder).
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


TRAIN_ADVICE = f"choose another RUN_ID, or replace it (pgolf train --replace, {REPLACE_ENV}=1: deleted, then trained again from step 0)"


def reuse_problem(path: Path, replace: bool, advice: str = TRAIN_ADVICE) -> str | None:
    """Why a new run may not start in ``path``, or None (absent or empty, or a run to be replaced)."""
    if not path.exists():
        return None
    if not path.is_dir():
        return f"{path}: exists and is not a folder"
    state = run_state(path)
    if state is None:
        return None if not any(path.iterdir()) else f"{path}: exists, holds files and is not a run; choose another RUN_ID"
    status, detail = state
    if status == "running":
        return f"{path}: a run is training there now ({detail or 'running'}); choose another RUN_ID"
    if replace:
        return None
    what = "a finished run" if status == "finished" else f"a run that did not finish ({status}{' ' + detail if detail else ''})"
    return f"{path}: already holds {what}; {advice}"


def clear_run_dir(path: Path) -> None:
    """Delete the run in ``path`` (checked by :func:`reuse_problem`): moved aside first, so no mix remains."""
    if not path.exists():
        return
    aside = path.with_name(f".{path.name}.replaced-{secrets.token_hex(3)}")
    try:
        path.rename(aside)
    except OSError as exc:
        raise write_failure(exc, path) from None
    shutil.rmtree(aside, ignore_errors=True)


class RunDir:
    def __init__(self, path: Path, enabled: bool = True, echo: bool = True, replace: bool = False):
        self.path = path
        self.enabled = enabled
        self.echo = echo
        self.step = 0  # the last step logged: where an interrupted run stopped
        if enabled:
            if replace:
                clear_run_dir(path)
            make_folder(path)
            self.set_status("running", f"pid {os.getpid()} on {socket.gethostname()}", pid=os.getpid(), host=socket.gethostname())

    def log(self, msg: str, console: bool = True) -> None:
        if not self.enabled:
            return
        if console and self.echo:
            print(msg, flush=True)
        append_line(self.path / "train.log", msg)

    def metric(self, **fields: Any) -> None:
        if not self.enabled:
            return
        fields.setdefault("time", time.time())
        self.step = fields.get("step", self.step)
        append_line(self.path / "metrics.jsonl", json.dumps(fields, sort_keys=True))

    def write_json(self, name: str, data: Any) -> None:
        if self.enabled:
            write_json_atomic(self.path / name, data)

    def set_status(self, status: str, detail: str = "", **extra: Any) -> None:
        self.write_json(STATUS, {"status": status, "detail": detail, "step": self.step, "time": time.time(), **extra})

    def record_outcome(self, exc: BaseException | None = None) -> None:
        """How the run ended (finished; interrupted; failed: reason), in the log and status.json."""
        if exc is None:
            self._record("finished", "")
        elif isinstance(exc, KeyboardInterrupt):
            self._record("interrupted", f"at step {self.step}")
        else:
            self._record("failed", f"at step {self.step}: {one_line(exc)}")

    def _record(self, status: str, detail: str) -> None:
        try:
            self.log(f"run {status}{' ' + detail if detail else ''}", console=status == "interrupted")
            self.set_status(status, detail)
        except (OSError, PgolfError):  # a full disk: the error that stopped the run is the one to report
            if status == "finished":
                raise

    def header(self, facts: dict[str, Any], config_json: str) -> None:
        self.log("=" * 80, console=False)
        for key, value in facts.items():
            self.log(f"{key}: {value}", console=False)
        self.log("config:", console=False)
        self.log(config_json, console=False)
        self.log("=" * 80, console=False)
