"""Training a SentencePiece BPE tokenizer with exactly the challenge's options.

The options are those of the challenge's exporter (``download_hf_docs_and_tokenize.py``): BPE,
byte fallback, split digits, ``nmt_nfkc`` normalization, no dummy prefix, 0.999 character
coverage, ids pad=0 / bos=1 / eos=2 / unk=3, and a soft vocab limit. Like the exporter, every
training text has NUL characters replaced by spaces and is stripped, and empty texts are skipped;
SentencePiece itself skips sentences longer than its ``max_sentence_length`` (4192 bytes) default,
which the exporter leaves unchanged too.

Training is deterministic: the model is written from memory (``model_writer``), so no temporary
path ends up inside the model proto, and the same text and vocab size give byte-identical files.
The ``.model`` and ``.vocab`` files are each written atomically.
"""

from __future__ import annotations

import io
import itertools
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from pgolf.data.shards import write_bytes_atomic
from pgolf.errors import PgolfError

MIN_VOCAB_SIZE = 261  # 4 special ids + 256 byte-fallback pieces leave no room for anything below
MAX_VOCAB_SIZE = 1 << 16  # token ids are stored as uint16 in shards

CHALLENGE_SPM_OPTIONS: dict[str, object] = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}

TextSource = str | os.PathLike | Iterable[str] | Iterable[os.PathLike]


def train_tokenizer(text_iter_or_files: TextSource, out_prefix: str | os.PathLike, vocab_size: int) -> Path:
    """Train a challenge-style SentencePiece BPE; write ``<out_prefix>.model`` and ``.vocab``; return the model path.

    ``text_iter_or_files`` is either an iterable of texts (each one a training sentence, e.g. one
    document), or a path (a ``str`` or ``os.PathLike``), or an iterable of ``os.PathLike`` paths, to
    text files read one sentence per line as SentencePiece's own ``--input`` does.
    """
    import sentencepiece as spm

    out_prefix = Path(out_prefix)
    check_trainable_vocab_size(vocab_size, out_prefix)
    sentences = _nonempty_or_fail(_clean_texts(_texts_from(text_iter_or_files)), out_prefix)
    model_bytes = _train_model_bytes(spm, sentences, vocab_size, out_prefix)
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    model_path = out_prefix.parent / f"{out_prefix.name}.model"
    vocab_path = out_prefix.parent / f"{out_prefix.name}.vocab"
    write_bytes_atomic(vocab_path, vocab_file_text(sp).encode("utf-8"))
    write_bytes_atomic(model_path, model_bytes)
    return model_path


def check_trainable_vocab_size(vocab_size: int, where: str | os.PathLike) -> None:
    """A byte-fallback BPE needs more than 260 ids, and shards hold ids below 2**16."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise PgolfError(f"{where}: vocab size must be an integer, got {vocab_size!r}")
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise PgolfError(
            f"{where}: vocab size {vocab_size} out of range [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] "
            "(byte fallback needs 260 ids; shards store uint16)"
        )


def vocab_file_text(sp) -> str:
    """The ``.vocab`` text SentencePiece writes: ``piece<TAB>score`` per id, scores as C++ ``ostream`` prints floats."""
    # C++ streams print floats like printf("%g"); Python's "g" format matches it, "-0" included.
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))


def _texts_from(source: TextSource) -> Iterator[str]:
    if isinstance(source, (str, os.PathLike)):
        return _lines_of_files([Path(source)])
    items = iter(source)
    first = next(items, None)
    if first is None:
        return iter(())
    rest = itertools.chain([first], items)
    if isinstance(first, os.PathLike):
        return _lines_of_files(Path(p) for p in rest)
    return rest


def _lines_of_files(paths: Iterable[Path]) -> Iterator[str]:
    paths = list(paths)
    for path in paths:  # fail before training starts, not halfway through it
        if not path.is_file():
            raise PgolfError(f"{path}: tokenizer training text file not found")
    return _read_lines(paths)


def _read_lines(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            for line in f:
                yield line.rstrip("\n")


def _clean_texts(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if not isinstance(text, str):
            raise PgolfError(f"tokenizer training input must be texts or paths, got {type(text).__name__}")
        # Same cleaning as the challenge's exporter before it hands docs to SentencePiece.
        cleaned = text.replace("\x00", " ").strip()
        if cleaned:
            yield cleaned


def _nonempty_or_fail(sentences: Iterator[str], out_prefix: Path) -> Iterator[str]:
    first = next(sentences, None)
    if first is None:
        raise PgolfError(f"{out_prefix}: no training text (every input text is empty)")
    return itertools.chain([first], sentences)


class _ErrorKeepingIterator:
    """Remembers an exception raised by the wrapped iterator: SentencePiece turns it into a RuntimeError."""

    def __init__(self, items: Iterator[str]):
        self.items = items
        self.error: BaseException | None = None

    def __iter__(self) -> _ErrorKeepingIterator:
        return self

    def __next__(self) -> str:
        try:
            return next(self.items)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise


def _train_model_bytes(spm, sentences: Iterator[str], vocab_size: int, out_prefix: Path) -> bytes:
    writer = io.BytesIO()
    source = _ErrorKeepingIterator(sentences)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=source,
            model_writer=writer,
            vocab_size=vocab_size,
            minloglevel=2,  # SentencePiece logs every training step to stderr otherwise
            **CHALLENGE_SPM_OPTIONS,
        )
    except RuntimeError as exc:
        if source.error is not None:
            raise source.error from None
        raise PgolfError(f"{out_prefix}: SentencePiece training failed: {_sentencepiece_reason(exc)}") from None
    return writer.getvalue()


def _sentencepiece_reason(exc: Exception) -> str:
    """Turn SentencePiece's ``INTERNAL: file.cc(N) [condition] message`` into a readable line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "sentences_.empty()" in text:
        return "no usable sentence (all longer than SentencePiece's 4192-byte max_sentence_length?)"
    message = re.sub(r"^.*?\]\s*", "", text)
    return message or text
