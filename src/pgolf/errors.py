"""The one exception type for bad user input.

Anything a user can get wrong (a missing file, a corrupt shard, a wrong vocab size, an artifact
over the size cap) raises :class:`PgolfError` with one line that names the thing and the problem.
The CLI turns it into ``pgolf: error: <message>`` and exit code 2, never a traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class PgolfError(Exception):
    """A user-facing error: the message is one line naming what and where."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (at most 200 characters), for embedding in a PgolfError."""
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
