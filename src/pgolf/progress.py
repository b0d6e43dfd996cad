"""The pgolf CLI's display of its long phases (evaluation, compile warm-up, export, the demo's data), on stderr.

On a terminal a phase that counts its work (tokens scored) shows a transient tqdm bar. Elsewhere (a
log file, a pipe, a test's capture), and for a phase that counts nothing (a compile warm-up), a phase
still running after :data:`DELAY_S` seconds gets one line then (``eval: standard windows, 8,140
windows of 128 ...``) and one when it ends (``eval: standard windows: done in 41.2 s``), so a
redirected log is never silent for minutes and a short phase prints nothing. stdout is never
written: a verb's ``--json`` stays its last stdout line.

``PGOLF_PROGRESS`` chooses: ``bar`` (a bar even off a terminal), ``lines`` (the two lines for every
phase, at once), ``off``; unset or ``auto``: a bar on a terminal, else the delayed lines. (The
training steps' own bar, in :mod:`pgolf.train.loop`, follows the terminal alone.)

No module of the bundled training path imports this one: ``pgolf train`` hands a :class:`RunPhases`
to the training loop (:attr:`pgolf.train.loop.Session.watch`), and a bundle runs without a display.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
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


class Phase:
    """One phase on show. ``update(n)`` counts ``n`` more of ``total`` (call it per batch, never per token
    or window); reaching ``total`` ends the phase, as :meth:`close` does (closing twice is harmless)."""

    def __init__(self, label: str, total: int, unit: str, detail: str, mode: str):
        self.label, self.total, self.n = label, total, 0
        self.t0 = time.perf_counter()
        self.bar, self.timer = None, None
        self.printed = False  # the start line is out
        self.closed = False  # no start line may follow
        if mode == "bar" and total:  # without a total a bar cannot move: the delayed lines say more
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit=unit, unit_scale=True, file=sys.stderr, leave=False,
                            dynamic_ncols=True, disable=False)
        elif mode != "off":
            detail = detail or (f"{total:,} {unit}{'s' if total != 1 else ''}" if total else "")
            self.start_line = f"{label}{', ' + detail if detail else ''} ..."
            if mode == "lines":
                self._show()
            else:
                self.timer = threading.Timer(DELAY_S, self._show)
                self.timer.daemon = True
                self.timer.start()

    def _show(self) -> None:
        with _lock:
            if not self.closed and not self.printed:
                self.printed = True
                print(self.start_line, file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        if self.total and self.n >= self.total:
            self.close()

    def close(self, finished: bool = True) -> None:
        with _lock:  # against the timer: after this, it prints nothing
            if self.closed:
                return
            self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.bar is not None:
            self.bar.close()
        if not self.printed:
            return
        seconds = time.perf_counter() - self.t0
        end = f"done in {seconds:.1f} s" if finished else f"stopped after {seconds:.1f} s"
        print(f"{self.label}: {end}", file=sys.stderr, flush=True)


def start(label: str, total: int = 0, unit: str = "token", detail: str = "") -> Phase:
    """Show phase ``label`` on stderr until it is closed or counts ``total`` ``unit``.

    ``detail`` (e.g. ``8,140 windows of 128``; default: the total, ``1,040,256 tokens``) goes into the start line.
    """
    return Phase(label, total, unit, detail, display_mode())


@contextmanager
def phase(label: str, total: int = 0, unit: str = "token", detail: str = "") -> Iterator[Phase]:
    """:func:`start` for the duration of a block; a block that raises ends it as stopped."""
    shown = start(label, total, unit, detail)
    try:
        yield shown
    except BaseException:
        shown.close(finished=False)
        raise
    shown.close()


class RunPhases:
    """What ``pgolf train`` hands its loop as :attr:`pgolf.train.loop.Session.watch`: the phases of a run,
    one after another. ``display(name, stream)`` starts phase ``name``, ending the one before; with the
    val ``stream`` it scores, it counts this rank's share of the stream's targets and ends itself there.
    ``display("")`` only ends the phase on show. Names are the loop's (``validation``, ``sliding``, ...),
    ``labels`` spells them out. ``context(name, phase)``: a context manager held open while phase
    ``name`` runs (one that counts what the phase's ledgers record, say), or None."""

    def __init__(self, prefix: str, labels: dict[str, str], world_size: int = 1, context=None):
        self.prefix, self.labels, self.world_size, self.context = prefix, labels, world_size, context
        self.current: Phase | None = None
        self.held = ExitStack()

    def __call__(self, name: str, stream=None) -> Phase | None:
        self.end()
        if not name:
            return None
        total = 0 if stream is None else (len(stream) - 1) // self.world_size  # rank 0's share, about
        self.current = start(f"{self.prefix}{self.labels.get(name, name)}", total)
        held = self.context(name, self.current) if self.context is not None else None
        if held is not None:
            self.held.enter_context(held)
        return self.current

    def end(self, finished: bool = True) -> None:
        self.held.close()
        if self.current is not None:
            self.current.close(finished)
            self.current = None
