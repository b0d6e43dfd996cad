"""The pgolf CLI's display of its long phases (evaluation, compile warm-up, export, the demo's data), on stderr.

On a terminal a phase that counts its work (tokens scored, steps) shows a transient tqdm bar.
Elsewhere (a log file, a pipe, a test's capture), and for a phase that counts nothing (an export), a
phase still running after :data:`DELAY_S` seconds gets one line then (``eval: standard windows, 8,140
windows of 128 ...``) and one when it ends (``eval: standard windows: done in 41.2 s``), so a
redirected log is never silent for minutes and a short phase prints nothing. stdout is never
written: a verb's ``--json`` stays its last stdout line.

``PGOLF_PROGRESS`` chooses: ``bar`` (a bar even off a terminal), ``lines`` (the two lines for every
phase, at once), ``off``; unset or ``auto``: a bar on a terminal, else the delayed lines. (The
training steps' own bar, in :mod:`pgolf.train.loop`, follows the terminal alone.)

No module of the bundled training path imports this one: ``pgolf train`` hands :func:`phase` to the
training loop (:attr:`pgolf.train.loop.Session.watch`), and a bundle runs without a display.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from pgolf.errors import PgolfError

ENV = "PGOLF_PROGRESS"
MODES = ("auto", "bar", "lines", "off")
DELAY_S = 3.0  # off a terminal, a phase shorter than this prints nothing
_lock = threading.Lock()  # the delayed start line comes from a timer thread


def display_mode() -> str:
    """``bar``, ``lines``, ``delayed`` (auto off a terminal) or ``off``, from PGOLF_PROGRESS and stderr."""
    mode = os.environ.get(ENV, "").strip().lower() or "auto"
    if mode not in MODES:
        raise PgolfError(f"{ENV}={mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    isatty = getattr(sys.stderr, "isatty", None)
    return "bar" if isatty is not None and isatty() else "delayed"


class _Silent:
    """What a phase yields without a bar: ``update`` costs a call and nothing else."""

    def update(self, n: int = 1) -> None:
        pass


class _Lines(_Silent):
    """The start line (at once, or from a timer after ``delay`` seconds) and, if it was printed, the end line."""

    def __init__(self, start_line: str, label: str, delay: float):
        self.start_line, self.label, self.shown = start_line, label, False
        self.t0 = time.perf_counter()
        self.timer = None
        if delay <= 0:
            self._show()
        else:
            self.timer = threading.Timer(delay, self._show)
            self.timer.daemon = True
            self.timer.start()

    def _show(self) -> None:
        with _lock:
            if not self.shown:
                self.shown = True
                print(self.start_line, file=sys.stderr, flush=True)

    def close(self, finished: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with _lock:
            if self.shown:
                seconds = time.perf_counter() - self.t0
                end = f"done in {seconds:.1f} s" if finished else f"stopped after {seconds:.1f} s"
                print(f"{self.label}: {end}", file=sys.stderr, flush=True)
            self.shown = True  # a timer that fires after this prints nothing


@contextmanager
def phase(label: str, total: int = 0, unit: str = "token", detail: str = "") -> Iterator[_Silent]:
    """Show phase ``label`` on stderr while the block runs; yields an object whose ``update(n)`` advances
    the bar by ``n`` of ``total`` ``unit`` (call it per batch, never per token or window).

    ``detail`` (e.g. ``8,140 windows of 128``; default: the total, ``1,040,256 tokens``) goes into the start line.
    """
    mode = display_mode()
    if mode == "off":
        yield _Silent()
        return
    if mode == "bar" and total:  # without a total a bar cannot move: the delayed lines say more
        from tqdm import tqdm

        with tqdm(total=total or None, desc=label, unit=unit, unit_scale=True, file=sys.stderr, leave=False,
                  dynamic_ncols=True, disable=False) as bar:
            yield bar
        return
    detail = detail or (f"{total:,} {unit}{'s' if total != 1 else ''}" if total else "")
    lines = _Lines(f"{label}{', ' + detail if detail else ''} ...", label, 0.0 if mode == "lines" else DELAY_S)
    finished = False
    try:
        yield lines
        finished = True
    finally:
        lines.close(finished)
