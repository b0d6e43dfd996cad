"""Turning raw documents into challenge-format shards: read docs, train or load a tokenizer, tokenize, shard.

Input documents come from a ``.jsonl`` file, a ``.txt`` file, or a directory of such files:

* ``.jsonl``: one JSON object per line with a ``"text"`` string; blank lines are skipped, every
  other line is one document (an empty ``"text"`` is kept as an empty document, as the challenge's
  exporter keeps it).
* ``.txt``: documents are separated by one or more blank lines (lines holding only whitespace);
  a document is its block of lines joined with ``\\n``.
* a directory: its ``*.jsonl`` and ``*.txt`` files (not sub-directories), in sorted name order.

Each document becomes ``[BOS=1] + sp.encode(text)`` with no EOS, exactly as the exporter writes
them. The first ``val_docs`` documents form the val split, the rest the train split; each split is
cut into ``fineweb_{split}_NNNNNN.bin`` shards of ``shard_tokens`` tokens (the last one shorter),
and, as in the exporter, a document may straddle two shards of its split.

With ``transform="caseops"`` (the default when the tokenizer is a CaseOps one, see
:mod:`pgolf.tokenizer.caseops`) every document is case-transformed before it is encoded, and each
val shard gets its per-token byte sidecar ``fineweb_val_bytes_NNNNNN.bin`` (:mod:`pgolf.data.sidecar`):
the original text's UTF-8 bytes of every token, which val_bpb is then charged with. pgolf does
not train CaseOps tokenizers: give one (e.g. the R44 record's).

When no tokenizer is given, one is trained (``tokenizer.model``/``.vocab`` in ``out_dir``) on the
*train* documents only, so val text never shapes the vocabulary (the exporter trained on the first
docs of its file, val included). Everything is written into a staging folder inside ``out_dir`` and
moved into place only once complete; ``manifest.json`` is written last.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgolf.data.shards import MAX_VOCAB, file_sha256, write_bytes_atomic, write_shard
from pgolf.errors import PgolfError
from pgolf.data.sidecar import write_sidecar
from pgolf.files import check_writable, make_folder, write_failure
from pgolf.tokenizer.caseops import NAME as CASEOPS_NAME
from pgolf.tokenizer.caseops import encode_caseops, is_caseops_tokenizer, original_token_bytes

BOS_ID = 1
DEFAULT_VAL_DOCS = 50_000  # the challenge's NUM_VAL_DOCS
DEFAULT_SHARD_TOKENS = 10**8  # the challenge's SHARD_SIZE
DOC_SUFFIXES = (".jsonl", ".txt")
ENCODE_BATCH_DOCS = 512
NO_TRANSFORM, CASEOPS = "none", "caseops"
TRANSFORMS = (NO_TRANSFORM, CASEOPS)
TXT_RULE = "one document per block of lines separated by blank lines"


@dataclass
class ShardRecord:
    file: str
    tokens: int
    sha256: str
    sidecar: dict | None = None  # {"file", "sha256"} of its byte sidecar


@dataclass
class SplitStats:
    docs: int = 0
    tokens: int = 0
    shards: list[ShardRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Prepared:
    out_dir: Path
    manifest_path: Path
    manifest: dict


# ---------------------------------------------------------------------------------------------
# Reading documents


def document_files(spec: str | os.PathLike) -> list[Path]:
    """The input files of ``--docs``: the file itself, or a directory's .jsonl/.txt files in name order."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DOC_SUFFIXES)
        if not files:
            raise PgolfError(f"{path}: no .jsonl or .txt files in this directory")
        return files
    if not path.exists():
        raise PgolfError(f"{path}: documents file or directory not found")
    if path.suffix not in DOC_SUFFIXES:
        raise PgolfError(f"{path}: unsupported documents file type {path.suffix!r} (expected .jsonl or .txt)")
    return [path]


def iter_documents(files: list[Path]) -> Iterator[str]:
    """Every document's text, file after file, in order."""
    for path in files:
        yield from (_iter_jsonl_docs(path) if path.suffix == ".jsonl" else _iter_txt_docs(path))


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open("r", encoding="utf-8") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError as exc:
        raise PgolfError(f"{path}: not UTF-8 text (bad byte at offset {exc.start} of a read block)") from None
    except OSError as exc:
        raise PgolfError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _iter_jsonl_docs(path: Path) -> Iterator[str]:
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PgolfError(f"{path}:{lineno}: bad JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise PgolfError(f'{path}:{lineno}: expected a JSON object with a "text" string')
        yield record["text"]


def _iter_txt_docs(path: Path) -> Iterator[str]:
    block: list[str] = []
    for _, line in _iter_lines(path):
        if line.strip():
            block.append(line.rstrip("\n"))
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def count_documents(files: list[Path]) -> int:
    """Count documents, which also validates every line before anything is trained or written."""
    return sum(1 for _ in iter_documents(files))


# ---------------------------------------------------------------------------------------------
# Sharding


class ShardWriter:
    """Packs one split's token stream into fixed-size shards, writing each as soon as it is full.

    With ``sidecar``, each document comes with its tokens' original byte counts, written beside
    each shard as its byte sidecar, cut at the same places.
    """

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, sidecar: bool = False):
        self.out_dir = out_dir
        self.split = split
        self.buffer = np.empty(shard_tokens, dtype=np.uint16)
        self.byte_buffer = np.empty(shard_tokens, dtype=np.uint16) if sidecar else None
        self.fill = 0
        self.stats = SplitStats()

    def add_document(self, tokens: np.ndarray, byte_counts: np.ndarray | None = None) -> None:
        if (byte_counts is None) != (self.byte_buffer is None):
            raise ValueError(f"{self.split}: byte counts must come with every document of a sidecar split, and only then")
        self.stats.docs += 1
        self.stats.tokens += int(tokens.size)
        pos = 0
        while pos < tokens.size:
            take = min(self.buffer.size - self.fill, tokens.size - pos)
            self.buffer[self.fill : self.fill + take] = tokens[pos : pos + take]
            if self.byte_buffer is not None:
                self.byte_buffer[self.fill : self.fill + take] = byte_counts[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self.buffer.size:
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        name = f"fineweb_{self.split}_{len(self.stats.shards):06d}.bin"
        path = self.out_dir / name
        write_shard(path, self.buffer[: self.fill])
        sidecar = None
        if self.byte_buffer is not None:
            written = write_sidecar(path, self.byte_buffer[: self.fill])
            sidecar = {"file": written.name, "sha256": file_sha256(written)}
        self.stats.shards.append(ShardRecord(name, self.fill, file_sha256(path), sidecar))
        self.fill = 0


def document_tokens(ids: list[int]) -> np.ndarray:
    """``[BOS] + ids`` as uint16: the exporter's document layout (no EOS)."""
    doc = np.empty(len(ids) + 1, dtype=np.uint16)
    doc[0] = BOS_ID
    doc[1:] = ids
    return doc


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def document_byte_counts(transformed: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """The sidecar values of one document: 0 for its BOS, then each token's original bytes."""
    counts = np.zeros(len(offsets) + 1, dtype=np.int64)
    counts[1:] = original_token_bytes(transformed, offsets)
    return counts


def encode_batch(sp, texts: list[str], with_spans: int, threads: int) -> list[tuple[list[int], list | None]]:
    """(ids, each piece's character span or None) of each text; spans for the first ``with_spans`` only."""
    head = sp.encode(texts[:with_spans], out_type="offset_mapping", num_threads=threads) if with_spans else []
    tail = sp.encode(texts[with_spans:], out_type=int, num_threads=threads) if len(texts) > with_spans else []
    return [(e["ids"], e["offsets"]) for e in head] + [(ids, None) for ids in tail]


def tokenize_into_shards(sp, docs: Iterator[str], staging: Path, val_docs: int, shard_tokens: int, bar,
                         transform: str = NO_TRANSFORM) -> dict:
    """Encode every document and write both splits' shards into ``staging``; return per-split stats.

    ``transform="caseops"``: documents are case-transformed first, and val shards get byte sidecars.
    """
    caseops = transform == CASEOPS
    writers = {"val": ShardWriter(staging, "val", shard_tokens, sidecar=caseops),
               "train": ShardWriter(staging, "train", shard_tokens)}
    index = 0
    threads = os.cpu_count() or 1
    for batch in _batches(docs, ENCODE_BATCH_DOCS):
        texts = [encode_caseops(text) for text in batch] if caseops else batch
        spans_for = min(max(val_docs - index, 0), len(texts)) if caseops else 0
        for text, (ids, spans) in zip(texts, encode_batch(sp, texts, spans_for, threads)):
            split = "val" if index < val_docs else "train"
            counts = document_byte_counts(text, spans) if spans is not None else None
            writers[split].add_document(document_tokens(ids), counts)
            index += 1
        bar.update(len(batch))
    for writer in writers.values():
        writer.flush()
    return {split: writer.stats for split, writer in writers.items()}


# ---------------------------------------------------------------------------------------------
# The whole job


def prepare(
    docs: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    val_docs: int = DEFAULT_VAL_DOCS,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
    transform: str | None = None,
) -> Prepared:
    """Build ``out_dir`` with val/train shards, the tokenizer (if trained) and ``manifest.json``.

    ``transform``: ``"none"``, ``"caseops"``, or None for the one the tokenizer calls for.
    """
    out_dir = Path(out_dir)
    _check_counts(val_docs, shard_tokens, out_dir)
    check_writable(out_dir)  # before the long passes over the docs
    if tokenizer is None and vocab_size is None:
        raise PgolfError(f"{out_dir}: give a tokenizer or a vocab size to train one")
    files = document_files(docs)
    transform = _resolve_transform(transform, tokenizer, vocab_size, out_dir)
    num_docs = count_documents(files)
    _check_split(num_docs, val_docs, docs)

    make_folder(out_dir)
    try:
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".prepare-"))
    except OSError as exc:
        raise write_failure(exc, out_dir) from None
    try:
        tokenizer_path, trained = _tokenizer_for(tokenizer, vocab_size, files, val_docs, staging, progress)
        sp = _load_checked_tokenizer(tokenizer_path, vocab_size if tokenizer is not None else None)
        stats = _tokenize_with_progress(sp, files, num_docs, staging, val_docs, shard_tokens, progress, transform)
        # A trained tokenizer is recorded where it will live, relative to the manifest.
        recorded_path = "tokenizer.model" if trained else str(tokenizer_path.resolve())
        manifest = build_manifest(
            files, sp, tokenizer_path, recorded_path, trained, stats, val_docs=val_docs, shard_tokens=shard_tokens,
            transform=transform,
        )
        manifest_path = out_dir / "manifest.json"
        _write_json_atomic(staging / manifest_path.name, manifest)  # complete before anything is published
        _publish(staging, out_dir, trained)
        os.replace(staging / manifest_path.name, manifest_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Prepared(out_dir, manifest_path, manifest)


def _resolve_transform(transform: str | None, tokenizer, vocab_size, out_dir: Path) -> str:
    """The text transform to apply, checked against the tokenizer (loaded here: fail before a long pass over the docs)."""
    if transform is not None and transform not in TRANSFORMS:
        raise PgolfError(f"{out_dir}: unknown text transform {transform!r} (expected one of {', '.join(TRANSFORMS)})")
    if tokenizer is None:
        if transform == CASEOPS:
            raise PgolfError(f"{out_dir}: --transform caseops needs --tokenizer, a CaseOps tokenizer (pgolf does not train one)")
        return NO_TRANSFORM
    caseops_tokenizer = is_caseops_tokenizer(_load_checked_tokenizer(tokenizer, vocab_size))
    if transform is None:
        return CASEOPS if caseops_tokenizer else NO_TRANSFORM
    if caseops_tokenizer != (transform == CASEOPS):
        has = "has" if caseops_tokenizer else "lacks"
        raise PgolfError(f"{tokenizer}: the tokenizer {has} the CaseOps operator pieces, which --transform {transform} contradicts")
    return transform


def _check_counts(val_docs: int, shard_tokens: int, out_dir: Path) -> None:
    if isinstance(val_docs, bool) or not isinstance(val_docs, int) or val_docs < 0:
        raise PgolfError(f"{out_dir}: val docs must be a non-negative integer, got {val_docs!r}")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise PgolfError(f"{out_dir}: shard tokens must be a positive integer, got {shard_tokens!r}")


def _check_split(num_docs: int, val_docs: int, docs: str | os.PathLike) -> None:
    if num_docs == 0:
        raise PgolfError(f"{docs}: no documents found")
    if val_docs >= num_docs:
        raise PgolfError(
            f"{docs}: {num_docs} documents, but {val_docs} are asked for val; "
            "the train split needs at least one (lower --val-docs)"
        )


def _load_checked_tokenizer(path: str | os.PathLike, vocab_size: int | None):
    from pgolf.tokenizer.spm import check_vocab_size, load_tokenizer

    sp = load_tokenizer(path)
    if vocab_size is not None:
        check_vocab_size(sp, vocab_size, str(path))
    if int(sp.bos_id()) != BOS_ID:
        raise PgolfError(f"{path}: tokenizer bos_id is {int(sp.bos_id())}, the challenge's shards need BOS={BOS_ID}")
    if int(sp.vocab_size()) > MAX_VOCAB:
        raise PgolfError(f"{path}: vocab size {int(sp.vocab_size())} does not fit uint16 shards")
    return sp


def _tokenizer_for(tokenizer, vocab_size, files, val_docs, staging, progress) -> tuple[Path, bool]:
    if tokenizer is not None:
        return Path(tokenizer), False
    from itertools import islice

    from pgolf.tokenizer.train import train_tokenizer

    if progress:
        print(f"training a {vocab_size}-piece SentencePiece BPE on the train documents...", file=sys.stderr)
    train_docs = islice(iter_documents(files), val_docs, None)
    model = train_tokenizer(train_docs, staging / "tokenizer", vocab_size)
    _check_trained_size(model, vocab_size, files)
    return model, True


def _check_trained_size(model: Path, vocab_size: int, files: list[Path]) -> None:
    """hard_vocab_limit=False lets a small corpus yield fewer pieces; a model's VOCAB_SIZE must match exactly."""
    from pgolf.tokenizer.spm import load_tokenizer

    actual = int(load_tokenizer(model).vocab_size())
    if actual != vocab_size:
        raise PgolfError(
            f"{files[0]}: the train documents only yield a {actual}-piece tokenizer, not {vocab_size} "
            "(lower --vocab-size or add text)"
        )


def _tokenize_with_progress(sp, files, num_docs, staging, val_docs, shard_tokens, progress, transform) -> dict:
    from tqdm import tqdm

    with tqdm(total=num_docs, unit="doc", desc="tokenize", file=sys.stderr, disable=not progress) as bar:
        return tokenize_into_shards(sp, iter_documents(files), staging, val_docs, shard_tokens, bar, transform)


def _publish(staging: Path, out_dir: Path, trained: bool) -> None:
    """Move the finished shards (and trained tokenizer) into place and drop shards of an older run."""
    new_shards = {p.name for p in staging.glob("fineweb_*.bin")}
    for stale in out_dir.glob("fineweb_*.bin"):
        if stale.name not in new_shards:  # a leftover would silently join the next glob
            stale.unlink()
    for name in sorted(new_shards):
        os.replace(staging / name, out_dir / name)
    if trained:
        os.replace(staging / "tokenizer.vocab", out_dir / "tokenizer.vocab")
        os.replace(staging / "tokenizer.model", out_dir / "tokenizer.model")


def build_manifest(
    files, sp, tokenizer_path: Path, recorded_path: str, trained: bool, stats: dict, *, val_docs: int, shard_tokens: int,
    transform: str = NO_TRANSFORM,
) -> dict:
    """Everything needed to reproduce and check the output: counts, checksums and options."""
    from pgolf.tokenizer.train import CHALLENGE_SPM_OPTIONS

    vocab_size = int(sp.vocab_size())
    splits = {
        split: {
            "docs": s.docs,
            "tokens": s.tokens,
            "shards": [{"file": r.file, "tokens": r.tokens, "sha256": r.sha256, **({"sidecar": r.sidecar} if r.sidecar else {})}
                       for r in s.shards],
        }
        for split, s in stats.items()
    }
    totals = {
        "docs_total": stats["val"].docs + stats["train"].docs,
        "docs_val": stats["val"].docs,
        "docs_train": stats["train"].docs,
        "files_total": len(stats["val"].shards) + len(stats["train"].shards),
        "files_val": len(stats["val"].shards),
        "files_train": len(stats["train"].shards),
        "tokens_total": stats["val"].tokens + stats["train"].tokens,
        "tokens_val": stats["val"].tokens,
        "tokens_train": stats["train"].tokens,
    }
    return {
        "format": "header 256 x <i4 (magic 20240520, version 1, num_tokens), then <u2 tokens; "
        "each doc = [BOS=1] + sp.encode(text); no EOS",
        "sources": [str(Path(p).resolve()) for p in files],
        "vocab_size": vocab_size,
        "bos_id": BOS_ID,
        "append_eos": False,
        # what val_bpb counts: with caseops_v1, the original text's bytes from fineweb_val_bytes_*.bin
        "text_transform": CASEOPS_NAME if transform == CASEOPS else NO_TRANSFORM,
        "tokenizer": {
            "path": recorded_path,
            "sha256": file_sha256(tokenizer_path),
            "vocab_size": vocab_size,
            "trained": trained,
            **({"trained_on": "train documents", "spm_options": CHALLENGE_SPM_OPTIONS} if trained else {}),
        },
        "options": {"val_docs": val_docs, "shard_tokens": shard_tokens, "txt_rule": TXT_RULE},
        "stats": totals,
        "splits": splits,
    }


def _write_json_atomic(path: Path, payload: dict) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
