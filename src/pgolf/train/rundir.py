"""A run's directory, ``runs/<run_id>/``: the self-describing record of one training run.

``train.log`` opens with a header (source hash, commit, versions, device, resolved config) and then
holds every log line; ``metrics.jsonl`` one JSON object per logged event; ``config.json`` the
resolved config; ``results.json`` the final numbers, written atomically. Only rank 0 writes.
``pgolf train`` adds ``status.json`` and refuses to reuse a run's folder (:mod:`pgolf.train.lifecycle`).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from pgolf.files import write_json_atomic


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class RunDir:
    def __init__(self, path: Path, enabled: bool = True, echo: bool = True):
        self.path = path
        self.enabled = enabled
        self.echo = echo
        if enabled:
            path.mkdir(parents=True, exist_ok=True)

    def log(self, msg: str, console: bool = True) -> None:
        if not self.enabled:
            return
        if console and self.echo:
            print(msg, flush=True)
        with open(self.path / "train.log", "a", encoding="utf-8") as f:
            print(msg, file=f)

    def metric(self, **fields: Any) -> None:
        if not self.enabled:
            return
        fields.setdefault("time", time.time())
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(fields, sort_keys=True) + "\n")

    def write_json(self, name: str, data: Any) -> None:
        if self.enabled:
            write_json_atomic(self.path / name, data)

    def header(self, facts: dict[str, Any], config_json: str) -> None:
        self.log("=" * 80, console=False)
        for key, value in facts.items():
            self.log(f"{key}: {value}", console=False)
        self.log("config:", console=False)
        self.log(config_json, console=False)
        self.log("=" * 80, console=False)
