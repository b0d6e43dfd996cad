"""Checking shards before anything trains or scores on them.

For each shard: header (magic, version), exact file size, and every token id below the vocab size
(from ``vocab_size``, or from the tokenizer when only that is given). A tokenizer and a vocab size
given together must agree, and the tokenizer must use BOS=1, the id every document starts with.
Shards whose ``manifest.json`` records another tokenizer are refused, and a val shard's byte
sidecar (``fineweb_val_bytes_*.bin``) must hold one count per token. One line per shard reports its tokens, documents (BOS count: a shard that starts mid-document, as
train shards may, holds one more document fragment than that) and largest id; then a summary.
The first problem found is a :class:`PgolfError` naming the file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from pgolf.data.shards import check_token_range, read_header, read_shard, resolve_shards
from pgolf.data.sidecar import sidecar_path
from pgolf.errors import PgolfError

BOS_ID = 1


@dataclass(frozen=True)
class ShardSummary:
    path: str
    tokens: int
    docs: int
    max_id: int

    def line(self) -> str:
        return f"{self.path}: {self.tokens} tokens, {self.docs} docs, max id {self.max_id}"


@dataclass
class VerifyReport:
    shards: list[ShardSummary] = field(default_factory=list)
    vocab_size: int | None = None

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def docs(self) -> int:
        return sum(s.docs for s in self.shards)

    @property
    def max_id(self) -> int:
        return max((s.max_id for s in self.shards), default=-1)

    def summary(self) -> str:
        bound = f"< vocab size {self.vocab_size}" if self.vocab_size is not None else "(no vocab size to check against)"
        return f"OK: {len(self.shards)} shards, {self.tokens} tokens, {self.docs} docs, max id {self.max_id} {bound}"

    def as_dict(self) -> dict:
        return {
            "shards": [asdict(s) for s in self.shards],
            "tokens": self.tokens,
            "docs": self.docs,
            "max_id": self.max_id,
            "vocab_size": self.vocab_size,
        }


def expand_shard_specs(specs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, globs and directories (every ``fineweb_*_*.bin`` inside) to an ordered list of shard paths."""
    paths: list[Path] = []
    for spec in specs:
        # split="*" makes a directory yield both its train and its val shards
        paths.extend(resolve_shards(spec, split="*"))
    if not paths:
        raise PgolfError("no shard paths given")
    return paths


def expected_vocab_size(tokenizer: str | os.PathLike | None, vocab_size: int | None) -> int | None:
    """The vocab size ids are checked against, after checking tokenizer and vocab size agree."""
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
        raise PgolfError(f"vocab size must be a positive integer, got {vocab_size!r}")
    if tokenizer is None:
        return vocab_size
    from pgolf.tokenizer.spm import check_vocab_size, load_tokenizer

    sp = load_tokenizer(tokenizer)
    if vocab_size is not None:
        check_vocab_size(sp, vocab_size, str(tokenizer))
    if int(sp.bos_id()) != BOS_ID:
        raise PgolfError(
            f"{tokenizer}: tokenizer bos_id is {int(sp.bos_id())}, the challenge's shards use BOS={BOS_ID}"
        )
    return int(sp.vocab_size())


def summarize_shard(path: Path, vocab_size: int | None) -> ShardSummary:
    """Validate one shard (header, size, id range) and count its tokens, documents and largest id."""
    tokens = read_shard(path)
    if vocab_size is not None:
        check_token_range(tokens, vocab_size, str(path))
    sidecar = sidecar_path(path)
    if sidecar is not None and sidecar.is_file() and read_header(sidecar) != tokens.size:
        raise PgolfError(f"{sidecar}: {read_header(sidecar)} byte counts for the {tokens.size} tokens of {path}")
    max_id = int(tokens.max()) if tokens.size else -1
    docs = int(np.count_nonzero(tokens == BOS_ID))
    return ShardSummary(str(path), int(tokens.size), docs, max_id)


def verify(
    paths: Iterable[str | os.PathLike] | str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    out: TextIO | None = None,
) -> VerifyReport:
    """Check every shard of ``paths``; print a line per shard and a summary to ``out`` (stdout by default)."""
    out = sys.stdout if out is None else out
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = expand_shard_specs(paths)
    report = VerifyReport(vocab_size=expected_vocab_size(tokenizer, vocab_size))
    if tokenizer is not None:
        from pgolf.data.identity import check_tokenizer

        check_tokenizer(files, tokenizer)
    for file in files:
        summary = summarize_shard(file, report.vocab_size)
        report.shards.append(summary)
        print(summary.line(), file=out, flush=True)
    print(report.summary(), file=out)
    return report
