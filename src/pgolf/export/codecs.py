"""Compressors for the artifact container, each with a capped, fully checked decompressor.

ids (stored in the header byte 9): 1 zlib level 9, 2 lzma (LZMA1, .lzma format, the smallest of presets 9
and 9 extreme under three literal-context settings, :data:`LZMA_PROPERTIES`; xz streams, what older pgolf
wrote, read too), 3 zstd level 22,
4 brotli quality 11, 5 lrzip (``lrzip -L 9``, only when the ``lrzip`` binary is installed), 6
lrzip-zpaq (``lrzip -z -L 9``, lrzip's ZPAQ back end: R44's per-group compressor, a few hundred KB/s),
7 stored (no compression: a payload that compressed its own parts, pgolf.export.pergroup).
``auto`` tries ids 1-5 only (:func:`available_codecs`): ZPAQ is two orders of magnitude slower
and ``stored`` never wins on a real payload.
Every decompressor returns at most ``max_bytes`` bytes and raises a one-line PgolfError for
corrupt, truncated or trailing data, so hostile input cannot force a large allocation (``stored``
returns its input: the container has checked its length against the cap and the per-group reader
checks each stream's code count).
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import brotli
import zstandard

from pgolf.errors import PgolfError, one_line

ZLIB_LEVEL = 9
ZSTD_LEVEL = 22
BROTLI_QUALITY = 11
LZMA_PRESETS = (9, 9 | lzma.PRESET_EXTREME)
# (lc, pb): literal context bits and position bits. xz's default (3, 2) suits text and 4-byte-aligned
# data; quantized codes are single bytes, where no alignment (pb 0) and more or no literal context
# often code smaller: 3,927 bytes (0.34%) less on PR #160's QGv3 payload of 1.15 MB, 0.05-0.08% on
# int6 and int8 codes of Gaussian weights. Which one wins varies with the codes, so each is tried.
LZMA_PROPERTIES = ((3, 2), (4, 0), (0, 0))
LZMA_MEMLIMIT = 1 << 28  # decoder memory: preset 9 needs 65 MiB; a forged dictionary size is refused
AUTO = "auto"


def zlib_decompress_capped(data: bytes, max_bytes: int, source: str) -> bytes:
    """Inflate one complete zlib stream of at most ``max_bytes``; PgolfError on anything else."""
    inflater = zlib.decompressobj()
    try:
        # max_length bounds the output buffer, so a bomb stops at max_bytes + 1 bytes.
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise PgolfError(f"{source}: corrupt zlib data ({one_line(exc)})") from None
    if len(out) > max_bytes:
        raise PgolfError(f"{source}: zlib data inflates to more than {max_bytes} bytes")
    if not inflater.eof:
        raise PgolfError(f"{source}: truncated zlib data")
    if inflater.unused_data:
        raise PgolfError(f"{source}: {len(inflater.unused_data)} unexpected bytes after the zlib data")
    return out


def _lzma_try(data: bytes, preset: int, lc: int, pb: int) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_ALONE,
                         filters=[{"id": lzma.FILTER_LZMA1, "preset": preset, "lc": lc, "lp": 0, "pb": pb}])


def lzma_smallest(data: bytes) -> tuple[tuple[int, int, int], bytes]:
    """The smallest of :func:`_lzma_try` over every (preset, lc, pb), with that setting."""
    tries = [(p, lc, pb) for p in LZMA_PRESETS for lc, pb in LZMA_PROPERTIES]
    with ThreadPoolExecutor(max_workers=min(len(tries), os.cpu_count() or 1)) as pool:
        return min(zip(tries, pool.map(lambda t: _lzma_try(data, *t), tries)), key=lambda r: len(r[1]))


def _lzma_compress(data: bytes) -> bytes:
    # LZMA1 in the .lzma format: none of xz's block, index and LZMA2 chunk headers (about 180 bytes a
    # megabyte on quantized codes) and no check (the container's CRC32 covers the payload). Its header
    # names lc, lp, pb and the dictionary, so every setting decodes alike and the smallest is kept (on
    # quantized codes the extreme preset is often the larger). The tries run in threads, side by side
    # where there are cores for them (lzma releases the GIL): on 2 cores 1.3-1.7x the time of the
    # default setting's two tries (benchmarks/results/lzma_settings.json).
    return lzma_smallest(data)[1]


def lzma_decompress_capped(data: bytes, max_bytes: int, source: str) -> bytes:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_AUTO, memlimit=LZMA_MEMLIMIT)  # .lzma or xz
    try:
        out = d.decompress(data, max_bytes + 1)
    except lzma.LZMAError as exc:
        raise PgolfError(f"{source}: corrupt lzma data ({one_line(exc)})") from None
    if len(out) > max_bytes:
        raise PgolfError(f"{source}: lzma data inflates to more than {max_bytes} bytes")
    if not d.eof:
        raise PgolfError(f"{source}: truncated lzma data")
    if d.unused_data:
        raise PgolfError(f"{source}: {len(d.unused_data)} unexpected bytes after the lzma data")
    return out


def _zstd_compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False).compress(data)


def zstd_decompress_capped(data: bytes, max_bytes: int, source: str) -> bytes:
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise PgolfError(f"{source}: corrupt zstd frame header ({one_line(exc)})") from None
    # The frame must declare its size, and that size must fit the cap, before any output exists.
    if declared < 0 or declared > max_bytes:
        raise PgolfError(f"{source}: zstd frame declares {declared} bytes (cap {max_bytes})")
    d = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = d.decompress(data)
    except zstandard.ZstdError as exc:
        raise PgolfError(f"{source}: corrupt zstd data ({one_line(exc)})") from None
    if len(out) != declared or not d.eof:
        raise PgolfError(f"{source}: truncated zstd data")
    if d.unused_data:
        raise PgolfError(f"{source}: {len(d.unused_data)} unexpected bytes after the zstd data")
    return out


def brotli_decompress_capped(data: bytes, max_bytes: int, source: str) -> bytes:
    d = brotli.Decompressor()
    try:
        out = d.process(data, output_buffer_limit=max_bytes + 1)
        if len(out) > max_bytes:
            raise PgolfError(f"{source}: brotli data inflates to more than {max_bytes} bytes")
        if not d.is_finished():
            raise PgolfError(f"{source}: truncated brotli data")
    except brotli.error as exc:
        raise PgolfError(f"{source}: corrupt brotli data ({one_line(exc)})") from None
    return out


def lrzip_available() -> bool:
    return shutil.which("lrzip") is not None


def _run_lrzip(args: list[str], data: bytes, out_name: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.write_bytes(data)
        out = Path(tmp) / out_name
        subprocess.run(["lrzip", "-q", "-f", *args, "-o", str(out), str(src)], check=True, capture_output=True, timeout=600)
        return out.read_bytes()


def _lrzip_compress(data: bytes) -> bytes:
    if not lrzip_available():
        raise PgolfError("compressor lrzip: the lrzip binary is not installed")
    return _run_lrzip(["-L", "9"], data, "out.lrz")


def _lrzip_zpaq_compress(data: bytes) -> bytes:
    # R44's exact invocation, lrzip -z -L 9 (-q and -f change no output byte)
    if not lrzip_available():
        raise PgolfError("compressor lrzip-zpaq: the lrzip binary is not installed")
    return _run_lrzip(["-z", "-L", "9"], data, "out.lrz")


def lrzip_decompress_capped(data: bytes, max_bytes: int, source: str) -> bytes:
    if not lrzip_available():
        raise PgolfError(f"{source}: compressed with lrzip, but the lrzip binary is not installed")
    try:
        out = _run_lrzip(["-d"], data, "out")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise PgolfError(f"{source}: corrupt lrzip data ({type(exc).__name__})") from None
    if len(out) > max_bytes:
        raise PgolfError(f"{source}: lrzip data inflates to more than {max_bytes} bytes")
    return out


@dataclass(frozen=True)
class Codec:
    """A compressor: its id in the header, and both directions."""

    codec_id: int
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int, str], bytes]  # (data, max_bytes, source) -> payload
    available: Callable[[], bool] = lambda: True


ZLIB_CODEC = Codec(1, "zlib", lambda data: zlib.compress(data, ZLIB_LEVEL), zlib_decompress_capped)
LZMA_CODEC = Codec(2, "lzma", _lzma_compress, lzma_decompress_capped)
ZSTD_CODEC = Codec(3, "zstd", _zstd_compress, zstd_decompress_capped)
BROTLI_CODEC = Codec(4, "brotli", lambda data: brotli.compress(data, quality=BROTLI_QUALITY), brotli_decompress_capped)
LRZIP_CODEC = Codec(5, "lrzip", _lrzip_compress, lrzip_decompress_capped, lrzip_available)
LRZIP_ZPAQ_CODEC = Codec(6, "lrzip-zpaq", _lrzip_zpaq_compress, lrzip_decompress_capped, lrzip_available)
# stored: the container checks the length (capped) and CRC; a per-group stream, its code count
STORED_CODEC = Codec(7, "stored", bytes, lambda data, max_bytes, source: data)
CODECS: dict[int, Codec] = {c.codec_id: c for c in (ZLIB_CODEC, LZMA_CODEC, ZSTD_CODEC, BROTLI_CODEC, LRZIP_CODEC)}
CODEC_IDS = {c.name: c.codec_id for c in CODECS.values()}
# Not candidates of auto (the module docstring says why), and a table apart.
MORE_NAMES = ("lrzip-zpaq", "stored")
MORE_CODECS: dict[int, Codec] = {c.codec_id: c for c in (LRZIP_ZPAQ_CODEC, STORED_CODEC)}


def codec_named(name: str) -> Codec:
    """The compressor called ``name`` (not ``"auto"``); PgolfError when unknown or not installed.

    Each compressor is spelled out by its name, not looked up in a table: where ``name`` is a literal
    (a bundle built for one PGOLF_COMPRESSOR), the other compressors are then unreachable and are not
    shipped (about 400 code bytes).
    """
    if name == "zlib":
        return ZLIB_CODEC
    if name == "lzma":
        c = LZMA_CODEC
    elif name == "zstd":
        c = ZSTD_CODEC
    elif name == "brotli":
        c = BROTLI_CODEC
    elif name == "lrzip":
        c = LRZIP_CODEC
    elif name == "lrzip-zpaq":
        c = LRZIP_ZPAQ_CODEC
    elif name == "stored":
        c = STORED_CODEC
    else:
        raise PgolfError(f"unknown compressor {name!r} (known: {', '.join(sorted([*CODEC_IDS, *MORE_NAMES]))}, {AUTO})")
    if not c.available():
        raise PgolfError(f"compressor {name!r} is not available on this machine")
    return c


def codec_or_stored(name: str) -> Codec:
    """:func:`codec_named`, but ``stored`` (the container of a per-group payload) without it: a per-group
    bundle then calls :func:`codec_named` with its group compressor's name alone, which folds."""
    return STORED_CODEC if name == "stored" else codec_named(name)


def codec_by_id(codec_id: int) -> Codec | None:
    """The compressor with header id ``codec_id``, or None."""
    return CODECS.get(codec_id) or MORE_CODECS.get(codec_id)


def every_codec() -> list[Codec]:
    """Every compressor, in id order."""
    return [CODECS.get(i) or MORE_CODECS[i] for i in sorted({*CODECS, *MORE_CODECS})]


def available_codecs() -> list[str]:
    """Names of the compressors ``auto`` tries on this machine (the usable ones of ids 1-5), in id order."""
    return [c.name for c in CODECS.values() if c.available()]


def compress_best(payload: bytes, names: list[str] | None = None) -> tuple[Codec, bytes]:
    """The smallest compression of ``payload`` among ``names`` (default: all available); ties go to the lower id."""
    best: tuple[Codec, bytes] | None = None
    for name in names or available_codecs():
        c = CODECS[CODEC_IDS[name]]
        out = c.compress(payload)
        if best is None or len(out) < len(best[1]):
            best = (c, out)
    if best is None:
        raise PgolfError("no compressor to choose from")
    return best
