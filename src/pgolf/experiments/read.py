"""One run directory, read without executing anything: results, config, status, log and metrics.

:func:`load_run` wants a finished run (the score is what its callers compare); :func:`load_any_run`
also takes one that was interrupted, failed or is still training, with empty results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.train.lifecycle import run_state

RESULTS = "results.json"
CONFIG = "config.json"
LOG = "train.log"
METRICS = "metrics.jsonl"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PgolfError(f"{path}: not found (is {path.parent} a finished run directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PgolfError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PgolfError(f"{path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class Run:
    path: Path
    results: dict
    config: dict
    status: str = "finished"  # or running, interrupted, failed, died, unfinished (pgolf.train.lifecycle.run_state)
    detail: str = ""

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def seed(self) -> int:
        return int(self.config["train"]["seed"])

    def metric(self, name: str) -> float:
        if name not in self.results:
            raise PgolfError(f"{self.path / RESULTS}: has no {name!r}")
        return float(self.results[name])

    def metrics(self) -> list[dict]:
        """Rows of metrics.jsonl (train steps and validations)."""
        path = self.path / METRICS
        if not path.is_file():
            return []
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise PgolfError(f"{path}:{i}: not valid JSON") from None
        return rows


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if path.is_file() and path.name == RESULTS:
        path = path.parent
    if not path.is_dir():
        raise PgolfError(f"{path}: run directory not found")
    return Run(path, _read_json(path / RESULTS), _read_json(path / CONFIG))


def load_any_run(path: str | Path) -> Run:
    """A run in any state; PgolfError when ``path`` holds none."""
    path = Path(path)
    if path.is_file() and path.name in (RESULTS, CONFIG):
        path = path.parent
    state = run_state(path) if path.is_dir() else None
    if state is None:
        raise PgolfError(f"{path}: not a run directory (no {LOG}, {CONFIG}, {RESULTS} or status.json)")
    results = _read_json(path / RESULTS) if (path / RESULTS).is_file() else {}
    config = _read_json(path / CONFIG) if (path / CONFIG).is_file() else {}
    return Run(path, results, config, *state)


def flatten_config(config: dict) -> dict[str, object]:
    """``{"model": {"num_layers": 9}}`` -> ``{"model.num_layers": 9}``."""
    flat: dict[str, object] = {}
    for section, values in config.items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        else:
            flat[section] = values
    return flat


# Fields that name a run or where its files live, not what it trains: runs that differ only here
# are the same configuration (seeds of one submission, the same data on another machine).
IDENTITY_FIELDS = ("train.seed", "train.run_id", "data.data_path", "data.tokenizer_path", "data.train_files", "data.val_files", "preset")


def config_differences(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> dict[str, tuple[object, object]]:
    fa, fb = flatten_config(a), flatten_config(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if k not in ignore and fa.get(k) != fb.get(k)}
