"""Entry module of a bundled ``train_gpt.py``: frozen config, reference env vars on top, one run.

The bundler replaces ``FROZEN_CONFIG`` with the resolved configuration as a literal, so the shipped
script trains exactly the configuration it was built for, while the reference environment variable
names (``SEED``, ``ITERATIONS``, ``DATA_PATH``, ...) still override it, as in a record's script.
The size accounting counts the shipped script itself (:data:`pgolf.export.artifact.CODE_FILES_ENV`).
"""

from __future__ import annotations

import json
import os

from pgolf.config import apply_env, from_dict, validate
from pgolf.export.artifact import CODE_FILES_ENV
from pgolf.train.loop import train

FROZEN_CONFIG: dict = {}  # the bundler writes the resolved config here


def main() -> dict:
    if FROZEN_CONFIG:  # bundled: the shipped script is the code, and in a bundle __file__ is train_gpt.py
        os.environ.setdefault(CODE_FILES_ENV, os.path.abspath(__file__))
    cfg = from_dict(FROZEN_CONFIG)
    apply_env(cfg)
    validate(cfg)
    results = train(cfg, runs_dir=os.environ.get("PGOLF_RUNS_DIR", "runs"))
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(results, sort_keys=True))
    return results


if __name__ == "__main__":
    main()
