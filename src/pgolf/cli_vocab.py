"""The flag vocabulary every verb shares: one spelling per concept, old spellings as hidden aliases.

* ``--out PATH``: where this verb writes its output (a file or a folder), created when missing;
* ``--runs-dir``, ``--records-dir``, ``--work-dir``: a root under which a verb files named things;
* ``--name``: a name, and the run id prefix of the runs a verb starts;
* ``--stride``: the sliding-window stride;
* ``--json``: the verb's result as JSON, the last line on stdout.

Exit codes: 0 when all is well, 1 when a check or test ran and failed, 2 for bad input
(:mod:`pgolf.errors`). An old spelling still works and prints one warning line on stderr.
Only argparse is imported here, so ``pgolf --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys


class _DeprecatedSpelling(argparse.Action):
    """Stores into the new flag's ``dest`` and says, once per use, which spelling to use instead."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"pgolf: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_spelling(parser: argparse.ArgumentParser, old: list[str], new: str, dest: str, **kwargs) -> None:
    """Accept ``old`` option strings as a hidden alias of ``new`` (storing into ``dest``)."""
    parser.add_argument(*old, dest=dest, action=_DeprecatedSpelling, new=new, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)


def add_json_flag(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON (the last stdout line)")


def make_out_folder(folder, flag: str = "--out"):
    """Create an output folder (and its parents) when missing; a failure is one line naming it."""
    from pathlib import Path

    from pgolf.errors import PgolfError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PgolfError(f"{flag} {folder}: not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PgolfError(f"{flag} {folder}: cannot create the folder ({exc.strerror or type(exc).__name__})") from None
    return folder
