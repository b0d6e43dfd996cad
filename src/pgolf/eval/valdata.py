"""The validation data a score is computed on: its tokens, and the bytes each target stands for.

Every scoring entry point (``pgolf train``, so bundles too, ``pgolf eval``, ``pgolf quant sweep``,
``pgolf data audit``) gets its val stream and byte table here, so each one:

* refuses shards whose manifest records another tokenizer (:func:`pgolf.data.identity.check_tokenizer`);
* scores a val set that has a byte sidecar on the sidecar's original-text bytes;
* refuses, in one line, a CaseOps val set (a CaseOps tokenizer, or a manifest recording the
  transform) without a sidecar: the tokenizer's byte rule would charge every case operator as
  3 bytes of text and report a val_bpb about 9% too low.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.errors import PgolfError
from pgolf.tokenizer.luts import TorchByteTable


@dataclass
class ValData:
    sp: object  # the SentencePieceProcessor
    tokens: np.ndarray  # the val stream, every target (its tail past the last whole window too)
    table: TorchByteTable
    files: list[Path]


def check_val_bytes(sp, files: list[Path]) -> None:
    """Refuse a CaseOps val set (its tokenizer or its manifest says so) whose shards have no byte sidecar."""
    from pgolf.data.identity import recorded_transform
    from pgolf.data.shards import SIDECAR_PREFIX
    from pgolf.data.sidecar import sidecars_of
    from pgolf.tokenizer.caseops import NAME, is_caseops_tokenizer

    if sidecars_of(files) is not None:
        return
    transform = recorded_transform(files) or (NAME if is_caseops_tokenizer(sp) else None)
    if transform is not None:
        raise PgolfError(
            f"{files[0]}: a {transform} val set needs its byte sidecar {SIDECAR_PREFIX}*.bin beside the shards "
            "(the tokenizer's byte rule would charge each case operator as text); "
            "build the data with `pgolf data prepare --transform caseops`"
        )


def scoring_table(sp, vocab_size: int, files: list[Path], tokens: np.ndarray,
                  device: torch.device | str = "cpu") -> TorchByteTable:
    """The byte table ``tokens`` (the stream of ``files``, or a prefix of it) are scored with."""
    from pgolf.data.sidecar import load_sidecar_bytes
    from pgolf.tokenizer.luts import build_byte_table

    check_val_bytes(sp, files)
    table = build_byte_table(sp, vocab_size).to_torch(device)
    counts = load_sidecar_bytes(files, tokens)
    return table if counts is None else table.with_stream_bytes(torch.from_numpy(counts))


def load_validation(tokenizer: str | os.PathLike, val_spec: str | os.PathLike, vocab_size: int, seq_len: int,
                    max_tokens: int = 0, device: torch.device | str = "cpu") -> ValData:
    """Tokenizer, val stream (all of it, or its first ``max_tokens`` targets; at least one window of
    ``seq_len``) and its byte table."""
    from pgolf.data.identity import check_tokenizer
    from pgolf.data.shards import load_tokens, resolve_shards
    from pgolf.eval.evaluate import val_stream
    from pgolf.tokenizer.spm import check_vocab_size, load_tokenizer

    sp = load_tokenizer(tokenizer)
    check_vocab_size(sp, vocab_size, str(tokenizer))
    files = resolve_shards(val_spec, "val")
    check_tokenizer(files, tokenizer)
    tokens = val_stream(load_tokens(val_spec, "val", vocab_size), seq_len, max_tokens)
    return ValData(sp, tokens, scoring_table(sp, vocab_size, files, tokens, device), files)
