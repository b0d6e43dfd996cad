"""Load weights from any file pgolf accepts, sniffed by content, never by running code.

Three formats, told apart by their first bytes:

* a pgolf artifact (``PGOLF\\x00AR`` magic): read and dequantized by the container code;
* a torch zip file (``PK\\x03\\x04``), e.g. the reference's ``final_model.pt``: a state dict loaded
  with ``torch.load(weights_only=True)``;
* a zlib stream, e.g. the reference's ``final_model.int8.ptz``: inflated with a size cap, then a
  ``torch.load(weights_only=True)`` of the ``int8_clean_per_row_v1`` dict, dequantized as the
  reference does;
* any other record's own artifact (lzma, zstd, brotli or R44's per-group lrzip; torch zip,
  byte-shuffled or PR #160's QGv3; each record's quantisation): read by
  :mod:`pgolf.export.record_artifact`, which also reads the zlib streams.

``weights_only=True`` restricts unpickling to tensors and plain containers, so a pickle that
would call a function (``os.system`` via ``__reduce__``) is refused before anything runs. Raw
pickles and every other file are refused outright. Zip members must not declare more bytes than
the file holds (``torch.save`` stores them uncompressed), which keeps a zip bomb from inflating.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from pgolf.errors import PgolfError, one_line
from pgolf.export.container import MAX_PAYLOAD_BYTES, is_artifact_header, read_artifact
from pgolf.export.record_artifact import is_record_artifact_head, is_zlib_header, read_record_artifact
from pgolf.quant.int8 import QUANT_FORMAT, dequantize
from pgolf.quant.policy import quantized_count

FORMAT_ARTIFACT = "pgolf-artifact"
FORMAT_TORCH = "torch-state-dict"
FORMAT_REFERENCE_INT8 = "reference-int8-zlib"
FORMAT_RECORD = "record-artifact"  # any other record's own .ptz (the exact layers: WeightsInfo.meta)
COMPILE_PREFIX = "_orig_mod."
_ZIP_MAGIC = b"PK\x03\x04"
_SNIFF_BYTES = 4096  # enough for a brotli stream to show what it holds


@dataclass(frozen=True)
class WeightsInfo:
    """Where weights came from: the file, its sniffed format and any stored metadata."""

    path: str
    format: str
    meta: dict[str, Any] = field(default_factory=dict)
    quantized_tensors: int | None = None  # a pgolf artifact's tensors stored as integer codes (None: not known)


def sniff_format(path: str | os.PathLike[str]) -> str:
    """The format of the weights file at ``path`` (one of the FORMAT_* names) or PgolfError."""
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if is_artifact_header(head):
        return FORMAT_ARTIFACT
    if head.startswith(_ZIP_MAGIC):
        return FORMAT_TORCH
    if is_zlib_header(head):
        return FORMAT_REFERENCE_INT8
    if is_record_artifact_head(head):
        return FORMAT_RECORD
    raise PgolfError(f"{path}: not a pgolf artifact, torch zip state dict, reference .ptz or record artifact")


def _check_zip(stream: BinaryIO, total_bytes: int, source: str) -> None:
    try:
        with zipfile.ZipFile(stream) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise PgolfError(f"{source}: corrupt torch zip file ({one_line(exc)})") from None
    if declared > total_bytes:
        raise PgolfError(f"{source}: zip members declare {declared} bytes but the file has {total_bytes}")
    stream.seek(0)


def _torch_error_line(exc: Exception) -> str:
    # torch's weights-only refusal wraps the one useful line ("unsupported GLOBAL posix.system")
    # in boilerplate that even suggests weights_only=False; keep just that line.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))]
    return (useful or lines or [type(exc).__name__])[0][:200]


def _torch_load(stream: BinaryIO | str, source: str) -> object:
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PgolfError(f"{source}: refused, it needs unsafe unpickling ({_torch_error_line(exc)})") from None
    except Exception as exc:  # corrupt archives surface as several error types: one answer
        raise PgolfError(f"{source}: unreadable torch file ({_torch_error_line(exc)})") from None


def _strip_compile_prefix(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    # torch.compile wraps the module, so its state dict keys gain "_orig_mod.".
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        key = name.removeprefix(COMPILE_PREFIX)
        if key in out:
            raise PgolfError(f"{source}: {name!r} collides with {key!r} once {COMPILE_PREFIX!r} is stripped")
        out[key] = t
    return out


def _as_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict):
        raise PgolfError(f"{source}: expected a state dict, found {type(obj).__name__}")
    for name, t in obj.items():
        if not isinstance(name, str) or not isinstance(t, Tensor):
            raise PgolfError(f"{source}: entry {name!r} is not a name -> tensor pair")
    return _strip_compile_prefix(obj, source)


def _load_torch_zip(path: Path) -> tuple[dict[str, Tensor], WeightsInfo]:
    with open(path, "rb") as f:
        _check_zip(f, path.stat().st_size, str(path))
    state = _as_state_dict(_torch_load(str(path), str(path)), str(path))
    return state, WeightsInfo(str(path), FORMAT_TORCH)


def _load_record_artifact(path: Path, max_bytes: int) -> tuple[dict[str, Tensor], WeightsInfo]:
    art = read_record_artifact(path, max_bytes)
    state = _strip_compile_prefix(art.state, str(path))
    if (art.compressor, art.serialisation, art.quant_format) == ("zlib", "torch", QUANT_FORMAT):
        return state, WeightsInfo(str(path), FORMAT_REFERENCE_INT8, {"quant_format": QUANT_FORMAT})
    return state, WeightsInfo(str(path), FORMAT_RECORD, {"record_format": art.format})


def load_weights(
    path: str | os.PathLike[str], max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[dict[str, Tensor], WeightsInfo]:
    """Load a float state dict from a pgolf artifact, a torch ``.pt``, or a reference's or record's ``.ptz``.

    ``max_bytes`` caps any decompressed payload. Every failure is a PgolfError naming the file.
    """
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == FORMAT_ARTIFACT:
        quantized, meta = read_artifact(path, max_bytes)
        return dequantize(quantized), WeightsInfo(str(path), FORMAT_ARTIFACT, meta, quantized_count(quantized))
    if fmt == FORMAT_TORCH:
        return _load_torch_zip(path)
    return _load_record_artifact(path, max_bytes)
