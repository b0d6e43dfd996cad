"""Artifact size accounting: the one place that says how many bytes a submission costs.

The challenge caps code bytes + compressed model bytes at 16,000,000 (decimal) bytes.

* ``bytes_model`` is the exact on-disk size of the artifact file (``os.path.getsize``).
* ``bytes_code`` is the size of the shipped single-file bundle when one is named, either with
  ``files=`` or with the ``PGOLF_CODE_FILES`` environment variable (``os.pathsep``-separated; a
  bundled ``train_gpt.py`` sets it to itself, and ``pgolf train`` honours it too). Otherwise it is
  the UTF-8 size of the source of every ``pgolf``
  module imported in this process (``sys.modules``: the package ``__init__`` files included,
  CLI modules included when loaded, so the count errs on the high side). Each file is read as
  text and re-encoded, exactly as the reference counts its own script. :func:`code_files` lists
  them so output can say what was counted. A training run measures again once its evaluation
  phases have run (``pgolf.train.loop.final_size``): modules imported after the export count too.

:func:`export_model` quantizes, writes the container to a temp file beside the target, measures
that file, and only then either renames it into place or deletes it and raises: an over-cap
artifact is never left on disk (an older file already at the target is left untouched).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.export.container import write_artifact
from pgolf.files import atomic_target
from pgolf.quant.int8 import QuantizedState
from pgolf.quant.policy import quantize_state_dict_policy

SIZE_CAP_BYTES = 16_000_000
PACKAGE = "pgolf"
CODE_FILES_ENV = "PGOLF_CODE_FILES"


@dataclass(frozen=True)
class SizeReport:
    """Bytes of one artifact against the cap; ``headroom`` is negative when over."""

    bytes_model: int
    bytes_code: int
    bytes_total: int
    headroom: int
    code_source: str
    code_files: tuple[str, ...] = ()

    @property
    def over_cap(self) -> bool:
        return self.headroom < 0

    def summary(self) -> str:
        """One line, e.g. for logs: total = model + code, and the headroom or overshoot."""
        state = f"{self.headroom:,} bytes under" if self.headroom >= 0 else f"{-self.headroom:,} bytes OVER"
        return (
            f"artifact {self.bytes_total:,} bytes = model {self.bytes_model:,} + code {self.bytes_code:,} "
            f"({self.code_source}); {state} the {SIZE_CAP_BYTES:,}-byte cap"
        )


def bundle_files() -> tuple[Path, ...] | None:
    """The shipped code files named by ``PGOLF_CODE_FILES``, or None when it is unset."""
    named = os.environ.get(CODE_FILES_ENV, "")
    return tuple(Path(p) for p in named.split(os.pathsep) if p) or None


def code_files() -> tuple[Path, ...]:
    """Source files of the ``pgolf`` modules imported now, sorted, each once."""
    found: set[Path] = set()
    for name, module in list(sys.modules.items()):
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.endswith(".py"):
            found.add(Path(file).resolve())
    return tuple(sorted(found))


def count_code_bytes(files: Iterable[str | os.PathLike[str]] | None = None) -> int:
    """UTF-8 bytes of ``files`` (default :func:`code_files`), read as text like the reference."""
    total = 0
    for f in code_files() if files is None else files:
        try:
            total += len(Path(f).read_text(encoding="utf-8").encode("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise PgolfError(f"{f}: cannot count code bytes ({type(exc).__name__})") from None
    return total


def _display_name(path: Path) -> str:
    # "pgolf/quant/int8.py" reads better than an absolute path in a log line.
    parts = path.parts
    if PACKAGE in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index(PACKAGE) :])
    return str(path)


def make_size_report(bytes_model: int, bytes_code: int, code_source: str, files: Iterable[str] = ()) -> SizeReport:
    """A SizeReport from already-measured byte counts."""
    total = bytes_model + bytes_code
    return SizeReport(bytes_model, bytes_code, total, SIZE_CAP_BYTES - total, code_source, tuple(files))


def size_report(
    artifact_path: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]] | None = None
) -> SizeReport:
    """Measure an artifact file plus the code (default: the imported pgolf modules)."""
    path = Path(artifact_path)
    if not path.is_file():
        raise PgolfError(f"{path}: artifact file not found")
    bundle = bundle_files() if files is None else None
    if bundle is not None:
        paths, source = bundle, f"bundle {', '.join(p.name for p in bundle)}"
    elif files is None:
        paths = code_files()
        source = f"{len(paths)} pgolf module files imported"
    else:
        paths = tuple(Path(f) for f in files)
        source = f"{len(paths)} given code files"
    return make_size_report(
        os.path.getsize(path), count_code_bytes(paths), source, (_display_name(p) for p in paths)
    )


def check_under_cap(report: SizeReport) -> None:
    """Raise PgolfError with the overshoot when the artifact exceeds 16,000,000 bytes."""
    if report.bytes_total > SIZE_CAP_BYTES:
        raise PgolfError(
            f"artifact is {report.bytes_total - SIZE_CAP_BYTES} bytes over the {SIZE_CAP_BYTES:,}-byte cap "
            f"(model {report.bytes_model} + code {report.bytes_code})"
        )


def export_model(
    state_dict: Mapping[str, Tensor],
    path: str | os.PathLike[str],
    meta: dict[str, Any],
    *,
    files: Iterable[str | os.PathLike[str]] | None = None,
    codec: str = "zlib",
    policy: str = "int8",
    shuffle: bool = False,
    quantized: QuantizedState | None = None,
    v1_only: bool = False,
    stream_shuffle: int = 0,
    serializer: str = "pgolf",
) -> SizeReport:
    """Quantize by ``policy`` (or take an already ``quantized`` state), write the artifact to
    ``path`` with ``codec`` (``"auto"``: smallest) and return its size report.

    Raises PgolfError (leaving no new file) when model + code is over the cap.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise PgolfError(f"{path}: folder {path.parent} does not exist")
    if quantized is None:
        quantized = quantize_state_dict_policy(state_dict, policy)
    with atomic_target(path) as tmp:
        write_artifact(tmp, quantized, meta, codec, shuffle=shuffle, v1_only=v1_only, stream_shuffle=stream_shuffle,
                       serializer=serializer)
        report = size_report(tmp, files)
        check_under_cap(report)
    return report
