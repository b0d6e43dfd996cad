"""Loading SentencePiece models with clear errors, and checking them against a model's vocab size."""

from __future__ import annotations

import os
from pathlib import Path

from pgolf.errors import PgolfError


def load_tokenizer(path: str | os.PathLike):
    """Load a SentencePiece ``.model`` file; a missing or unreadable file is a one-line PgolfError."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: tokenizer file not found")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except Exception as exc:  # sentencepiece raises bare OSError/RuntimeError with C++ text
        raise PgolfError(f"{path}: not a loadable SentencePiece model ({type(exc).__name__})") from None


def check_vocab_size(sp, vocab_size: int, where: str) -> None:
    """The tokenizer's vocab must equal the model's, as the reference script insists."""
    actual = int(sp.vocab_size())
    if actual != vocab_size:
        raise PgolfError(f"{where}: tokenizer vocab size {actual} does not match VOCAB_SIZE={vocab_size}")
