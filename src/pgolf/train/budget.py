"""The training time budget: what counts against ``MAX_WALLCLOCK_SECONDS`` and when a run breaks it.

The record track (``track_10min_16mb``) gives training 600 s. A run is in *record mode* when its
cap is on and at most those 600 s (:func:`record_mode`); it is then held to the track's rule.
Calibration on training data (the GPTQ Hessians, collected after the loop) is training-data access,
so it must end inside the cap as well: ``train_time + calibration <= cap``. That is what
``GPTQ_RESERVE_SECONDS`` is for; a reserve too small for the calibration (R44: 0.5 s, then 4.7 s
of Hessians, ~604 s in all) breaks the budget. A run with no calibration after the loop stops by
the reference's rule (the first step whose cumulative time reaches the cap), which the records
accept as it is, so only calibrated runs are judged here.

Over the budget is an error in record mode (the run says so in its log and results.json; ``pgolf
submit`` and ``pgolf check record`` refuse it for the record track) and a warning otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_TRACK_SECONDS = 600.0


def record_mode(cap_seconds: float) -> bool:
    """Whether a run with this MAX_WALLCLOCK_SECONDS is held to the record track's time rule."""
    return 0 < cap_seconds <= RECORD_TRACK_SECONDS


@dataclass(frozen=True)
class TimeBudget:
    cap_ms: float
    train_ms: float
    calibration_ms: float

    @property
    def total_ms(self) -> float:
        return self.train_ms + self.calibration_ms

    @property
    def over_ms(self) -> float:
        """How far training + calibration ran past the cap (0 when it fits or nothing was calibrated)."""
        return max(self.total_ms - self.cap_ms, 0.0) if self.calibration_ms > 0 else 0.0

    @property
    def record_mode(self) -> bool:
        return record_mode(self.cap_ms / 1000.0)

    @property
    def verdict(self) -> str:
        if self.over_ms <= 0:
            return "ok"
        return "error" if self.record_mode else "warning"

    def line(self) -> str:
        """The log line; ``pgolf check record`` reads it back (:data:`pgolf.check.track.LOG_BUDGET`)."""
        sums = (f"time_budget: train {self.train_ms:.0f}ms + calibration {self.calibration_ms:.0f}ms = "
                f"{self.total_ms:.0f}ms, cap {self.cap_ms:.0f}ms: ")
        if self.verdict == "ok":
            return sums + "ok"
        what = "ERROR, not a valid record-track run" if self.verdict == "error" else "WARNING"
        return sums + f"{what}: {self.over_ms:.0f}ms over MAX_WALLCLOCK_SECONDS; raise GPTQ_RESERVE_SECONDS"

    def as_dict(self) -> dict:
        return {"cap_s": self.cap_ms / 1000.0, "train_s": self.train_ms / 1000.0, "calibration_s": self.calibration_ms / 1000.0,
                "total_s": self.total_ms / 1000.0, "over_s": self.over_ms / 1000.0, "record_mode": self.record_mode,
                "verdict": self.verdict}


def time_budget(cap_seconds: float, train_ms: float, calibration_ms: float) -> TimeBudget | None:
    """The budget of a run with this cap (None without one: nothing to fit)."""
    if cap_seconds <= 0:
        return None
    return TimeBudget(1000.0 * cap_seconds, train_ms, calibration_ms)
