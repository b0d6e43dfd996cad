"""The byte audit: proof, on a real val stream, that val_bpb's byte count is the text's UTF-8 length.

val_bpb divides by a byte count that :func:`pgolf.tokenizer.luts.count_target_bytes` derives per
token from a lookup table, never from text. This audit checks that table-driven count against an
independent one, the UTF-8 length of what SentencePiece decodes:

* the scored targets of a stream are ``tokens[1:]``, each with ``prev`` the token before it;
* a document is a BOS (id 1) and the tokens up to the next BOS; its targets ``t1..tn`` must be
  charged exactly ``len(sp.decode([t1..tn]).encode("utf-8"))`` bytes;
* the BOS that opens the next document is itself a target, and must be charged 0 bytes, so the
  stream's total equals the sum over documents.

A stream may end inside a document (the shared val prefix does). If it ends inside a multi-byte
character spelled with byte-fallback tokens, SentencePiece cannot decode those last bytes; they are
then counted as their raw length, which is what the byte rule charges for them.

A CaseOps val set (its tokenizer has the case operators, or its manifest records the transform)
is scored on its byte sidecar, and its decoded text still holds the operators, so there the
reference is the original text instead: the source documents (``docs``, or the files the
manifest names), each one's UTF-8 length (a document the stream cuts off: the original bytes of
its tokens so far); without them, the byte sidecar itself. Charging the operators as text fails.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pgolf.data.shards import load_tokens, resolve_shards
from pgolf.errors import PgolfError

BOS_ID = 1
TARGET_CHUNK = 1 << 22  # targets per count_target_bytes call: bounds the int64 index tensors' memory
DECODE_BATCH_DOCS = 256
DEFAULT_REPORTED_MISMATCHES = 10


TEXT_DECODED, TEXT_SOURCE_DOCS, TEXT_SIDECAR = "decoded text", "source documents", "byte sidecar"


@dataclass(frozen=True)
class DocMismatch:
    doc: int
    tokens: int
    rule_bytes: int
    text_bytes: int


@dataclass
class AuditReport:
    tokenizer: str
    val: str
    files: list[str]
    docs: int
    tokens: int
    targets: int
    rule_bytes: int
    text_bytes: int  # the reference: UTF-8 bytes of the text the targets stand for
    text_source: str  # where the reference comes from: decoded text, source documents or byte sidecar
    boundary_bytes: int
    truncated_tail_bytes: int
    mismatched_docs: int
    mismatches: list[DocMismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatched_docs == 0 and self.rule_bytes == self.text_bytes

    @property
    def tokens_per_byte(self) -> float:
        """Scored targets per byte, the ``token_count / byte_count`` factor of val_bpb."""
        return self.targets / self.rule_bytes if self.rule_bytes else float("nan")

    def as_dict(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        data["tokens_per_byte"] = self.tokens_per_byte
        return data

    def lines(self) -> list[str]:
        out = [
            f"val {self.val}: {len(self.files)} shard(s), {self.docs} docs, {self.tokens} tokens, "
            f"{self.targets} scored targets",
            f"bytes val_bpb charges: {self.rule_bytes}; UTF-8 bytes of the text ({self.text_source}): {self.text_bytes}",
            f"bytes charged to BOS targets: {self.boundary_bytes} (must be 0)",
            f"tokens/byte: {self.tokens_per_byte:.6f}",
        ]
        if self.truncated_tail_bytes:
            out.append(f"stream ends inside a character: its last {self.truncated_tail_bytes} byte(s) counted raw")
        for m in self.mismatches:
            out.append(f"doc {m.doc} ({m.tokens} tokens): charged {m.rule_bytes} bytes, text {m.text_bytes} bytes")
        if self.mismatched_docs > len(self.mismatches):
            out.append(f"... and {self.mismatched_docs - len(self.mismatches)} more mismatched docs")
        verdict = "OK" if self.ok else "FAIL"
        out.append(f"{verdict}: {self.mismatched_docs} of {self.docs} docs disagree")
        return out


def target_bytes(tokens: np.ndarray, table) -> np.ndarray:
    """Bytes val_bpb charges each target ``tokens[1:]`` (int32, one per target); ``table`` a
    :class:`~pgolf.tokenizer.luts.ByteTable` or a (CPU) ``TorchByteTable``."""
    import torch

    from pgolf.tokenizer.luts import count_target_bytes

    torch_table = table.to_torch() if hasattr(table, "to_torch") else table
    out = np.empty(max(tokens.size - 1, 0), dtype=np.int32)
    for start in range(0, out.size, TARGET_CHUNK):
        stop = min(start + TARGET_CHUNK, out.size)
        prev = torch.from_numpy(tokens[start:stop].astype(np.int64))
        tgt = torch.from_numpy(tokens[start + 1 : stop + 1].astype(np.int64))
        out[start:stop] = count_target_bytes(prev, tgt, torch_table, torch.arange(start + 1, stop + 1)).numpy()
    return out


def document_bounds(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start (the BOS) and end (exclusive: the next BOS or the stream's end) of every document."""
    starts = np.flatnonzero(tokens == BOS_ID)
    ends = np.append(starts[1:], tokens.size)
    return starts, ends


def rule_bytes_per_doc(per_target: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sum of the bytes charged to each document's own targets (positions start+1 .. end-1)."""
    # Target j sits at stream position j+1, so a document's targets are per_target[start : end-1].
    cumulative = np.concatenate([[0], np.cumsum(per_target, dtype=np.int64)])
    return cumulative[ends - 1] - cumulative[starts]


def byte_fallback_value(sp, token_id: int) -> int | None:
    """The byte a ``<0xNN>`` piece stands for, or None for any other piece."""
    if not sp.is_byte(token_id):
        return None
    return int(sp.id_to_piece(token_id)[3:-1], 16)


def incomplete_utf8_tail(sp, ids: list[int]) -> int:
    """How many trailing byte-fallback tokens begin a UTF-8 character that the stream cuts off."""
    raw = bytearray()
    for token_id in reversed(ids):
        value = byte_fallback_value(sp, token_id)
        if value is None:
            break
        raw.insert(0, value)
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.end == len(raw) and exc.reason == "unexpected end of data":
            return len(raw) - exc.start
    return 0


def decoded_bytes_per_doc(sp, tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, int]:
    """UTF-8 length of each document as SentencePiece decodes it, and the raw tail bytes of the last one."""
    sizes = np.zeros(starts.size, dtype=np.int64)
    for first in range(0, starts.size, DECODE_BATCH_DOCS):
        last = min(first + DECODE_BATCH_DOCS, starts.size)
        docs = [tokens[starts[i] + 1 : ends[i]].tolist() for i in range(first, last)]
        for offset, text in enumerate(sp.decode(docs)):
            sizes[first + offset] = len(text.encode("utf-8"))
    tail = 0
    if starts.size:
        last_ids = tokens[starts[-1] + 1 : ends[-1]].tolist()
        tail = incomplete_utf8_tail(sp, last_ids)
        if tail:
            sizes[-1] = len(sp.decode(last_ids[:-tail]).encode("utf-8")) + tail
    return sizes, tail


def load_val_stream(val_spec: str | os.PathLike, vocab_size: int) -> tuple[list[Path], np.ndarray]:
    """The val shards concatenated in order; the stream must open with a BOS like every export."""
    files = resolve_shards(val_spec, "val")
    tokens = np.asarray(load_tokens(val_spec, "val", vocab_size=vocab_size))
    if tokens.size < 2:
        raise PgolfError(f"{val_spec}: val stream has {tokens.size} token(s), nothing to score")
    if int(tokens[0]) != BOS_ID:
        raise PgolfError(f"{val_spec}: val stream starts with token {int(tokens[0])}, not BOS={BOS_ID}")
    return files, tokens


def source_documents(docs: str | os.PathLike | None, files: list[Path], count: int) -> list[str] | None:
    """The first ``count`` documents of ``docs``, or of the sources the shards' manifest names (None if it names none that exist)."""
    from itertools import islice

    from pgolf.data.identity import manifests_of
    from pgolf.data.prepare import document_files, iter_documents

    if docs is not None:
        paths, where = document_files(docs), str(docs)
    else:
        named = [m.get("sources") for _, m in manifests_of(files)]
        if len(named) != 1 or not named[0] or not all(Path(p).is_file() for p in named[0]):
            return None
        paths, where = [Path(p) for p in named[0]], "the manifest's sources"
    texts = list(islice(iter_documents(paths), count))
    if len(texts) < count:
        raise PgolfError(f"{where}: {len(texts)} documents, but the val stream holds {count}")
    return texts


def original_bytes_per_doc(sp, tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, texts: list[str]) -> np.ndarray:
    """UTF-8 length of each source document; the last one, if the stream cuts it, only up to its last token."""
    from pgolf.tokenizer.caseops import encode_caseops, original_token_bytes

    sizes = np.array([len(text.encode("utf-8")) for text in texts], dtype=np.int64)
    kept = int(ends[-1] - starts[-1] - 1)
    transformed = encode_caseops(texts[-1])
    encoded = sp.encode(transformed, out_type="offset_mapping")
    if len(encoded["ids"]) > kept:
        sizes[-1] = int(original_token_bytes(transformed, encoded["offsets"][:kept]).sum())
    return sizes


def original_text_bytes(sp, tokens, files, starts, ends, docs, val_spec) -> tuple[np.ndarray, str]:
    """Per document, the original (untransformed) text's bytes of a CaseOps val set, and where they come from."""
    from pgolf.data.sidecar import load_sidecar_bytes

    texts = source_documents(docs, files, int(starts.size))
    if texts is not None:
        return original_bytes_per_doc(sp, tokens, starts, ends, texts), TEXT_SOURCE_DOCS
    counts = load_sidecar_bytes(files, tokens)
    if counts is None:
        raise PgolfError(f"{val_spec}: a CaseOps val set with neither a byte sidecar nor source documents (--docs) to compare with")
    return rule_bytes_per_doc(counts[1:], starts, ends), TEXT_SIDECAR


def audit(
    tokenizer: str | os.PathLike,
    val_spec: str | os.PathLike,
    *,
    table=None,
    docs: str | os.PathLike | None = None,
    max_reported: int = DEFAULT_REPORTED_MISMATCHES,
) -> AuditReport:
    """Compare the bytes val_bpb charges with the text's UTF-8 bytes, per document and in total.

    ``table`` replaces the byte table the val set is scored with (to show that a wrong rule is
    caught); by default it is :func:`pgolf.eval.valdata.scoring_table`'s, the one every score uses.
    ``docs``: the source documents of a CaseOps val set (default: those its manifest names).
    """
    from pgolf.data.identity import check_tokenizer, recorded_transform
    from pgolf.eval.valdata import scoring_table
    from pgolf.tokenizer.caseops import is_caseops_tokenizer
    from pgolf.tokenizer.spm import load_tokenizer

    sp = load_tokenizer(tokenizer)
    vocab = int(sp.vocab_size())
    check_tokenizer(resolve_shards(val_spec, "val"), tokenizer)  # before the ids: the likelier cause
    files, tokens = load_val_stream(val_spec, vocab)
    caseops = is_caseops_tokenizer(sp) or recorded_transform(files) is not None
    if docs is not None and not caseops:
        raise PgolfError(f"{docs}: source documents are for CaseOps val sets; {val_spec} is compared with its decoded text")
    table = scoring_table(sp, vocab, files, tokens) if table is None else table
    size = int(table.base_bytes.shape[0])
    if size < vocab:
        raise PgolfError(f"{tokenizer}: byte table has {size} entries for a {vocab}-token vocab")

    per_target = target_bytes(tokens, table)
    starts, ends = document_bounds(tokens)
    rule = rule_bytes_per_doc(per_target, starts, ends)
    if caseops:
        (text, source), tail = original_text_bytes(sp, tokens, files, starts, ends, docs, val_spec), 0
    else:
        (text, tail), source = decoded_bytes_per_doc(sp, tokens, starts, ends), TEXT_DECODED
    bad = np.flatnonzero(rule != text)
    return AuditReport(
        tokenizer=str(tokenizer),
        val=str(val_spec),
        files=[str(f) for f in files],
        docs=int(starts.size),
        tokens=int(tokens.size),
        targets=int(per_target.size),
        rule_bytes=int(per_target.sum(dtype=np.int64)),
        text_bytes=int(text.sum()),
        text_source=source,
        # Each later document's BOS is the target right before its position.
        boundary_bytes=int(per_target[starts[1:] - 1].sum(dtype=np.int64)),
        truncated_tail_bytes=tail,
        mismatched_docs=int(bad.size),
        mismatches=[
            DocMismatch(int(i), int(ends[i] - starts[i]), int(rule[i]), int(text[i])) for i in bad[:max_reported]
        ],
    )
