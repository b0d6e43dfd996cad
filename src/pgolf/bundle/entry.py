"""Entry module of a bundled ``train_gpt.py``: frozen config, reference env vars on top, one run.

The bundler replaces ``FROZEN_CONFIG`` with the resolved configuration as a literal (or, having made
the resolved values the schema's defaults, sets ``PRESET`` to its name), so the shipped
script trains exactly the configuration it was built for, while the reference environment variable
names (``SEED``, ``ITERATIONS``, ``DATA_PATH``, ...) still override it, as in a record's script.
:data:`pgolf.config.FOLDED_FIELDS` holds (by section and field) the switches the bundler folded into the
code (:mod:`pgolf.bundle.specialise`): their env vars can only repeat the built-in value, anything
else is refused with one line.
The size accounting counts the shipped script itself (:data:`pgolf.export.artifact.CODE_FILES_ENV`),
and the run logs the config the script was built with, so the environment's changes to it show.
"""

from __future__ import annotations

import json
import os
import sys

from pgolf.config import FOLDED_FIELDS, Config, apply_env, from_dict, parse_value, validate
from pgolf.errors import EXIT_USAGE, PgolfError
from pgolf.export.artifact import CODE_FILES_ENV
from pgolf.runtime import TELEMETRY
from pgolf.train.loop import train

FROZEN_CONFIG: dict = {}  # the bundler writes the resolved config here, or
PRESET = ""  # where it folded the whole config into the schema's defaults, only the preset's name here
FOLDED_ENV: dict = {}  # {field: env name, or its prefix} of the folded switches whose env name is not the field's, upper-cased


def folded_env(name: str, envs: dict) -> str:
    """The env name of folded field ``name``: ``envs``' entry, where one ending in ``_`` is a prefix of
    the field's name upper-cased (``PGOLF_`` for ``loader``: ``PGOLF_LOADER``), else the name upper-cased."""
    env = envs.get(name, "")
    return env + name.upper() if env[-1:] in "_" else env  # "" is in "_": no entry


def check_folded(folded: dict, envs: dict, environ=os.environ) -> None:
    """Refuse an env var that sets a folded switch (``folded``: section -> field -> value, the values
    the code was specialised to) to another value; ``envs``: env names that differ from the field's."""
    for values in folded.values():
        for name, value in values.items():
            env = folded_env(name, envs)
            if env in environ and parse_value(environ[env], type(value), env) != value:
                raise PgolfError(
                    f"{env}={environ[env]!r}: this train_gpt.py was bundled "
                    f"with {env}={value!r} folded into its code; rebuild it with `pgolf bundle ... --set {env}=...`"
                )


def count_itself() -> None:
    """Make the size accounting count this script, with any other files PGOLF_CODE_FILES already names
    (a sidecar, say): an empty or unrelated value must not leave the shipped code uncounted."""
    named = [os.path.abspath(p) for p in os.environ.get(CODE_FILES_ENV, "").split(os.pathsep) if p]
    os.environ[CODE_FILES_ENV] = os.pathsep.join(dict.fromkeys([os.path.abspath(__file__), *named]))


def main() -> dict:
    if FROZEN_CONFIG or PRESET:  # bundled: the shipped script is the code, and in a bundle __file__ is train_gpt.py
        count_itself()
    check_folded(FOLDED_FIELDS, FOLDED_ENV)
    cfg = Config(preset=PRESET) if PRESET else from_dict(FROZEN_CONFIG)
    frozen = cfg.to_dict()  # logged by the run: what the environment changed shows (pgolf submit judges it)
    apply_env(cfg)
    validate(cfg)
    results = train(cfg, runs_dir=os.environ.get("PGOLF_RUNS_DIR", "runs"), frozen=frozen)
    if TELEMETRY and os.environ.get("RANK", "0") == "0":  # results.json holds them
        print(json.dumps(results, sort_keys=True))
    return results


if __name__ == "__main__":
    try:
        main()
    except PgolfError as exc:  # bad input: one line, as the pgolf CLI does
        print(f"train_gpt.py: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
