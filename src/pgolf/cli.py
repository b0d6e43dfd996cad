"""The ``pgolf`` command line: one verb per job, each documented in ``pgolf VERB --help``.

Verbs register themselves from their own package (``pgolf.data.cli``, ``pgolf.train.cli``, ...),
each exposing ``register(subparsers)`` that adds a parser whose ``handler`` takes the parsed args and
returns an exit code. Parser modules import nothing heavy at import time, so ``pgolf --help`` is fast.
A :class:`~pgolf.errors.PgolfError` anywhere, or an OS error (a read-only or full disk), becomes one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pgolf import __version__
from pgolf.errors import EXIT_USAGE, PgolfError

VERB_MODULES = (
    "pgolf.data.cli",
    "pgolf.config_cli",
    "pgolf.model.cli",
    "pgolf.train.cli",
    "pgolf.eval.cli",
    "pgolf.export.cli",
    "pgolf.bench.cli",
    "pgolf.check.cli",
    "pgolf.demo",
    "pgolf.quant.cli",
    "pgolf.bundle.cli",
    "pgolf.submit.cli",
    "pgolf.experiments.cli",
    "pgolf.doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgolf",
        description="Parameter Golf toolkit: data, training, quantized artifacts and exact val_bpb.",
    )
    parser.add_argument("--version", action="version", version=f"pgolf {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(handler(args) or 0)
    except PgolfError as exc:
        print(f"pgolf: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pgolf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`pgolf config show | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a read-only, full or missing location: one line naming it, not a traceback
        from pgolf.files import os_error_line

        print(f"pgolf: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
