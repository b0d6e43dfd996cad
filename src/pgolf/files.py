"""Writing output files: the one atomic writer, the check before work starts, and OS errors as one line.

Every file pgolf writes goes through :func:`atomic_target` (or :func:`atomic_write`, built on it): the
data lands in a temporary file beside the target, which is renamed onto it only when complete, so
a full disk or a crash never leaves a half-written file under the real name. An OS error while
writing becomes a :class:`~pgolf.errors.PgolfError` naming the path. Verbs call
:func:`writable_problem` on their output location before doing any work, so a read-only or missing
location costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pgolf.errors import PgolfError, one_line


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` for an OS error (just the reason where it names no file)."""
    reason = exc.strerror or one_line(exc)
    return reason if exc.filename is None else f"{exc.filename}: {reason}"


def write_failure(exc: OSError, path: str | os.PathLike) -> PgolfError:
    return PgolfError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name; renamed onto ``path``
    when the block succeeds, removed when it fails. Keeps the suffix (savefig and np.save read it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp{path.suffix}")  # 64 random bits: never taken
    try:
        open(tmp, "xb").close()  # made as a plain open() makes files: permissions as the umask allows
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise write_failure(exc, path) if isinstance(exc, OSError) else exc


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, synced to disk before the rename."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def make_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and its parents if needed; an OS error names it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(exc, folder) from None
    return folder


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def writable_problem(folder: str | os.PathLike, what: str = "output folder") -> str | None:
    """Why files cannot be created in ``folder`` (or in the folder it would be created under), or None.

    Creates nothing that stays: it makes and removes one probe file. A probe, not the permission
    bits: root ignores those, while a read-only mount or a full inode table stops root too.
    """
    folder = Path(folder)
    base = _nearest_existing(folder.absolute())
    if not base.is_dir():
        return f"{what} {folder}: {base} is not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".pgolf-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{what} {folder}: cannot write there ({exc.strerror or one_line(exc)})"
    return None


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> None:
    problem = writable_problem(folder, what)
    if problem:
        raise PgolfError(problem)


def space_problem(folder: str | os.PathLike, need_bytes: int, what: str) -> str | None:
    """Why ``need_bytes`` will not fit under ``folder`` (for ``what``), or None."""
    base = _nearest_existing(Path(folder).absolute())
    free = shutil.disk_usage(base).free
    if free >= need_bytes:
        return None
    return f"{base}: {free / 1e6:,.0f} MB free, {what} needs about {need_bytes / 1e6:,.0f} MB"
