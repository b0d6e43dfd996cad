"""CaseOps: the reversible case transform of the CaseOps records (R40+), and the original bytes of each token.

A CaseOps tokenizer never sees an ASCII capital. Before tokenizing, every maximal run of ASCII
letters (a word) is lowercased and its case is spelt with operator characters (private-use code
points, each a single piece of the tokenizer):

* an all-lowercase word is unchanged;
* a word of two or more letters, all capitals, becomes ``ALLCAPS`` + the word in lowercase;
* any other word with a capital becomes ``TITLE`` (only if its first letter is a capital) + its
  first letter lowercased, then every later letter lowercased, each capital among them preceded by
  ``CAPNEXT``: ``McDonald`` -> ``TITLE m c CAPNEXT d onald``, ``iPhone`` -> ``i CAPNEXT p hone``;
* an operator character that occurs in the text itself is kept, preceded by ``ESC``.

:func:`decode_caseops` inverts it exactly. The operators stand for no byte of the original text,
so val_bpb must not charge them: :func:`original_token_bytes` gives each token the UTF-8 bytes of
the original text it spells (operators 0, an escaped literal its own bytes), which is what the
per-token byte sidecar (:mod:`pgolf.data.sidecar`) stores.
"""

from __future__ import annotations

import re

import numpy as np

from pgolf.errors import PgolfError

NAME = "caseops_v1"  # the records' "lossless_caps_caseops_v1"
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)

_WORD_OR_OPERATOR = re.compile(r"[A-Za-z]+|[\ue001-\ue004]")


def _encode_word(word: str) -> str:
    if word.islower():
        return word
    lower = word.lower()
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    head = TITLE if word[0].isupper() else ""
    return head + lower[0] + "".join(CAPNEXT + c.lower() if c.isupper() else c for c in word[1:])


def _encode_match(match: re.Match) -> str:
    piece = match.group()
    return ESC + piece if piece in OPERATORS else _encode_word(piece)


def encode_caseops(text: str) -> str:
    """The CaseOps form of ``text``: lowercase ASCII words with case operators (see the module docstring)."""
    return _WORD_OR_OPERATOR.sub(_encode_match, text)


def _is_ascii_letter(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def decode_caseops(text: str) -> str:
    """The original text of a CaseOps string; a malformed one (an operator with nothing to act on) is an error."""
    out: list[str] = []
    i, n = 0, len(text)
    upper_word = False  # inside a word opened by ALLCAPS
    while i < n:
        ch = text[i]
        if ch == ESC:
            if i + 1 == n:
                raise PgolfError("CaseOps text ends with an ESC operator")
            out.append(text[i + 1])
            upper_word = False
            i += 2
            continue
        if ch in (TITLE, ALLCAPS, CAPNEXT):
            if i + 1 == n or not _is_ascii_letter(text[i + 1]):
                raise PgolfError(f"CaseOps operator U+{ord(ch):04X} at {i} is not followed by a letter")
            out.append(text[i + 1].upper())
            upper_word = ch == ALLCAPS  # TITLE and CAPNEXT raise one letter, ALLCAPS the whole word
            i += 2
            continue
        if _is_ascii_letter(ch):
            out.append(ch.upper() if upper_word else ch)
        else:
            out.append(ch)
            upper_word = False
        i += 1
    return "".join(out)


def char_original_bytes(transformed: str) -> np.ndarray:
    """UTF-8 bytes of the original text that each character of a CaseOps string stands for (int64).

    An operator stands for nothing (0); every other character for its own UTF-8 length (a
    lowercased letter for its one capital byte, an escaped operator for its three bytes).
    """
    codes = np.frombuffer(transformed.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
    sizes = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
    operator = (codes >= 0xE001) & (codes <= 0xE004)
    if (codes == 0xE004).any():  # rare: a literal operator in the text; find which ESCs escape
        operator = _operators_with_escapes(transformed)
    sizes[operator] = 0
    return sizes


def _operators_with_escapes(transformed: str) -> np.ndarray:
    operator = np.zeros(len(transformed), dtype=np.bool_)
    i = 0
    while i < len(transformed):
        ch = transformed[i]
        if ch == ESC:
            operator[i] = True
            i += 2  # the escaped character is a literal
            continue
        operator[i] = ch in OPERATORS
        i += 1
    return operator


def original_token_bytes(transformed: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Original UTF-8 bytes of each token of ``transformed``, from its [begin, end) character span.

    ``offsets`` are SentencePiece's spans of each piece in its input
    (``sp.encode(text, out_type="offset_mapping")["offsets"]``): characters the tokenizer drops
    belong to no piece and are charged to none; the leading bytes of a character spelt with
    byte-fallback pieces have empty spans, so the whole character is charged to its last piece.
    """
    cumulative = np.concatenate([[0], np.cumsum(char_original_bytes(transformed))])
    if not offsets:
        return np.zeros(0, dtype=np.int64)
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return cumulative[spans[:, 1]] - cumulative[spans[:, 0]]


def is_caseops_tokenizer(sp) -> bool:
    """The tokenizer has each CaseOps operator as a piece of its own (the records' reserved symbols)."""
    return all(sp.id_to_piece(int(sp.piece_to_id(op))) == op for op in OPERATORS)
