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

The code count has a *kind*: ``bundle`` (shipped files were named) or ``package`` (the imported
modules). The two differ by an order of magnitude for the same model, and both are right for what
they count: a package count is the raw source of every pgolf module the process imported (the CLI
of every verb included), so it depends on which verb ran and errs high; a bundle is only the code
its configuration runs, inlined, specialised, minified and compressed (``pgolf bundle``), and is
what a submission counts. :data:`CODE_KIND_NOTES` says so wherever a size is printed.

Every verb that shows a size builds it here (:func:`size_report`, or :func:`recorded_size_report`
for the numbers a run recorded) and prints it with :meth:`SizeReport.lines`: the same four labels
(:data:`SIZE_FIELDS`) in the same order, then the note on the code count. Verbs that read a run
rather than run one (``quant inspect``, ``quant sweep``, ``report``) take the code count the run
recorded (``results.json`` beside the file), unless told to count a bundle; ``submit`` counts the
bundle it ships.

:func:`export_model` quantizes, writes the container to a temp file beside the target, measures
that file, and only then either renames it into place or deletes it and raises: an over-cap
artifact is never left on disk (an older file already at the target is left untouched).
"""

from __future__ import annotations

import json
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
from pgolf.runtime import BUNDLED

SIZE_CAP_BYTES = 16_000_000
PACKAGE = "pgolf"
CODE_FILES_ENV = "PGOLF_CODE_FILES"
PACKAGE_KIND, BUNDLE_KIND = "package", "bundle"
SIZE_FIELDS = ("bytes_model", "bytes_code", "bytes_total", "headroom")  # the printed order, everywhere
CODE_KIND_NOTES = {
    PACKAGE_KIND: "code counted as the package: the raw source of every pgolf module the process imported (the CLI of "
    "every verb included), so it depends on what ran and errs high; a submission counts its bundle instead "
    "(pgolf bundle: only the code its configuration runs, minified and compressed, about a twentieth of a "
    "package training run's count)",
    BUNDLE_KIND: "code counted as a bundle: the shipped single file, what a submission counts; far smaller than a "
    "package count (the raw source of every imported pgolf module), as it holds only the code its configuration "
    "runs, minified and compressed",
}
RESULTS_NAME = "results.json"  # a run's record (pgolf.train.rundir), read for the code count it made


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

    @property
    def code_kind(self) -> str:
        """``bundle`` or ``package`` (:data:`CODE_KIND_NOTES`), from what was counted."""
        return code_kind_of(self.code_source)

    def breakdown(self) -> dict[str, int | str]:
        """The fields every verb's JSON carries, in :data:`SIZE_FIELDS` order with the code's kind and source."""
        return {"bytes_model": self.bytes_model, "bytes_code": self.bytes_code, "code_kind": self.code_kind,
                "code_source": self.code_source, "bytes_total": self.bytes_total, "headroom": self.headroom}

    def lines(self, model: str = "the artifact file") -> list[str]:
        """The printed breakdown, the same in every verb: four labelled lines, then what the code count is."""
        cap = f"{'under' if self.headroom >= 0 else 'OVER'} the {SIZE_CAP_BYTES:,}-byte cap"
        return [
            f"{'bytes_model':<12}{self.bytes_model:>13,}  {model}",
            code_line(self.bytes_code, self.code_kind, self.code_source),
            f"{'bytes_total':<12}{self.bytes_total:>13,}  bytes_model + bytes_code",
            f"{'headroom':<12}{self.headroom:>13,}  {cap}",
            CODE_KIND_NOTES[self.code_kind],
        ]

    def summary(self) -> str:
        """One line, e.g. for logs: total = model + code, and the headroom or overshoot."""
        state = f"{self.headroom:,} bytes under" if self.headroom >= 0 else f"{-self.headroom:,} bytes OVER"
        return (
            f"artifact {self.bytes_total:,} bytes = model {self.bytes_model:,} + code {self.bytes_code:,} "
            f"({self.code_source}); {state} the {SIZE_CAP_BYTES:,}-byte cap"
        )


def code_line(bytes_code: int, kind: str, source: str) -> str:
    """The ``bytes_code`` line of :meth:`SizeReport.lines` (``pgolf bundle`` prints it alone, without a model)."""
    detail = source[len("bundle "):] if source.startswith("bundle ") else source
    return f"{'bytes_code':<12}{bytes_code:>13,}  {kind}: {detail}"


def code_kind_of(source: str) -> str:
    """The kind of a code count from what it counted: a bundle's source names it ``bundle NAME``."""
    return BUNDLE_KIND if source.startswith("bundle ") else PACKAGE_KIND


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


def count_code_bytes(files: Iterable[str | os.PathLike[str]]) -> int:
    """UTF-8 bytes of ``files`` (e.g. :func:`code_files`), read as text like the reference."""
    total = 0
    for f in files:
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
    """A SizeReport from already-measured byte counts: the one place that adds them up and takes them from the cap."""
    total = bytes_model + bytes_code
    return SizeReport(bytes_model, bytes_code, total, SIZE_CAP_BYTES - total, code_source, tuple(files))


def _counted_code(files: Iterable[str | os.PathLike[str]] | None) -> tuple[tuple[Path, ...], str]:
    """The code files a size report counts (see the module docstring) and how to name them."""
    bundle = bundle_files() if files is None else tuple(Path(f) for f in files)
    if bundle is not None or BUNDLED:  # given files are the shipped code: a bundle (which names itself)
        return bundle, f"bundle {', '.join(p.name for p in bundle)}"
    paths = code_files()
    return paths, f"{len(paths)} pgolf module files imported"


def size_report(
    artifact_path: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]] | None = None,
    recorded: Mapping[str, Any] | None = None,
) -> SizeReport:
    """Measure an artifact file plus the code: ``files`` (the shipped bundle) when given; else the
    count a run ``recorded`` (its results.json: what that run counted, not what this process imported);
    else the bundle ``PGOLF_CODE_FILES`` names; else the pgolf modules imported now."""
    path = Path(artifact_path)
    if not path.is_file():
        raise PgolfError(f"{path}: artifact file not found")
    if files is None and recorded is not None:
        source = str(recorded["code_source"])
        return make_size_report(os.path.getsize(path), int(recorded["bytes_code"]), f"{source}, by its run",
                                recorded.get("code_files", ()))
    paths, source = _counted_code(files)
    return make_size_report(
        os.path.getsize(path), count_code_bytes(paths), source, (_display_name(p) for p in paths)
    )


def recorded_size_report(results: Mapping[str, Any]) -> SizeReport:
    """The size a run recorded (its results.json), through the same arithmetic as a fresh measurement."""
    return make_size_report(int(results["bytes_model"]), int(results["bytes_code"]), str(results["code_source"]),
                            results.get("code_files", ()))


def recorded_beside(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The results of the run whose folder holds ``path`` (its artifact or checkpoint), when it
    recorded a size; else None (a loose file)."""
    results = Path(path).parent / RESULTS_NAME
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and {"bytes_code", "code_source"} <= set(data) else None


def checked_bundle(path: str | os.PathLike[str] | None, flag: str = "--bundle") -> Path | None:
    """A ``--bundle`` (or other ``flag``) argument, refused in one line before any work when the file is not there."""
    if path is not None and not Path(path).is_file():
        raise PgolfError(f"{flag} {path}: file not found")
    return None if path is None else Path(path)


def size_for(artifact_path: str | os.PathLike[str], bundle: str | os.PathLike[str] | None = None,
             run_file: str | os.PathLike[str] | None = None) -> SizeReport:
    """The size a verb reading ``artifact_path`` shows: with ``bundle`` that bundle is the code; else
    the code count of the run that ``run_file`` (default: the artifact) belongs to, from the
    results.json beside it; else this process's imported modules (a loose file: no run counted its code)."""
    if bundle is not None:
        return size_report(artifact_path, [bundle])
    return size_report(artifact_path, recorded=recorded_beside(run_file or artifact_path))


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


def prune_to_fit_artifact(
    quantized: QuantizedState, meta: dict[str, Any], target_bytes: int, scope: str, *,
    files: Iterable[str | os.PathLike[str]] | None = None, codec: str = "zlib", shuffle: bool = False,
):
    """R24's selective +-1 pruning (pgolf.quant.prune) against this module's byte count: each
    candidate state costs its encoded artifact (as :func:`export_model` writes it) plus the code."""
    from pgolf.export.container import encode_artifact
    from pgolf.quant.prune import parse_scope, prune_to_fit

    code_bytes = count_code_bytes(_counted_code(files)[0])  # pgolf.quant.prune is imported: it counts

    def size_of(q: QuantizedState) -> int:
        return len(encode_artifact(q, meta, codec, shuffle=shuffle)) + code_bytes

    return prune_to_fit(quantized, size_of, target_bytes, parse_scope(scope))
