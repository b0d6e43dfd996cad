"""Per-seed scores from the command line: run directories, submission.json files (or the records
folders holding them) and plain numbers, in any mix."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.experiments.read import load_run


@dataclass(frozen=True)
class Score:
    source: str
    val_bpb: float | None
    val_loss: float | None
    plain: float | None = None  # a bare number on the command line, in the units of --metric

    def get(self, metric: str) -> float | None:
        if self.plain is not None:
            return self.plain
        return self.val_bpb if metric == "val_bpb" else self.val_loss


def _as_number(item: str) -> float | None:
    try:
        value = float(item)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _from_submission(path: Path) -> list[Score]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PgolfError(f"{path}: cannot read submission.json ({type(exc).__name__})") from None
    seeds = data.get("seed_results") if isinstance(data, dict) else None
    if not isinstance(seeds, dict) or not seeds:
        raise PgolfError(f"{path}: has no per-seed scores (seed_results); pass the numbers instead")
    out = []
    for seed, row in seeds.items():
        if not isinstance(row, dict) or "val_bpb" not in row and "val_loss" not in row:
            raise PgolfError(f"{path}: seed_results[{seed!r}] has neither val_bpb nor val_loss")
        out.append(Score(f"{path}#{seed}", _opt(row.get("val_bpb")), _opt(row.get("val_loss"))))
    return out


def _opt(value) -> float | None:
    return None if value is None else float(value)


def read_scores(items: list[str]) -> list[Score]:
    scores: list[Score] = []
    for item in items:
        number = _as_number(item)
        if number is not None:
            scores.append(Score(item, None, None, plain=number))
            continue
        path = Path(item)
        if path.is_dir() and (path / "submission.json").is_file() and not (path / "results.json").is_file():
            path = path / "submission.json"
        if path.is_file() and path.name.endswith(".json") and path.name != "results.json":
            scores += _from_submission(path)
            continue
        run = load_run(path)
        scores.append(Score(str(run.path), _opt(run.results.get("val_bpb")), _opt(run.results.get("val_loss"))))
    return scores
