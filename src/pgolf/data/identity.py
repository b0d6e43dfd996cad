"""What a folder of shards says about how it was made: its tokenizer and its text transform.

``pgolf data prepare`` writes ``manifest.json`` beside the shards, recording the tokenizer's
sha256 and the text transform (``caseops_v1`` or none). Every verb that reads shards with a
tokenizer calls :func:`check_tokenizer`: shards made with another tokenizer would give a
meaningless val_bpb (or train a model on the wrong ids), so a mismatch is a one-line error naming
both files. Shards without such a manifest (the official export, the shared samples) are accepted
as they are: nothing records their tokenizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pgolf.data.shards import file_sha256
from pgolf.errors import PgolfError

MANIFEST_NAME = "manifest.json"


def manifests_of(files: list[Path]) -> list[tuple[Path, dict]]:
    """(path, manifest) of every distinct folder of ``files`` with a ``pgolf data prepare`` manifest
    (one whose tokenizer entry has a sha256; another exporter's records no checkable tokenizer)."""
    found = []
    for folder in dict.fromkeys(Path(f).resolve().parent for f in files):
        path = folder / MANIFEST_NAME
        if not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            raise PgolfError(f"{path}: unreadable manifest ({type(exc).__name__})") from None
        tokenizer = manifest.get("tokenizer") if isinstance(manifest, dict) else None
        if isinstance(tokenizer, dict) and isinstance(tokenizer.get("sha256"), str):
            found.append((path, manifest))
    return found


def check_tokenizer(files: list[Path], tokenizer: str | os.PathLike) -> None:
    """Refuse ``tokenizer`` for shards whose manifest records another tokenizer's sha256."""
    digest = None
    for path, manifest in manifests_of(files):
        recorded = manifest["tokenizer"]
        digest = digest or file_sha256(tokenizer)
        if digest != recorded["sha256"]:
            raise PgolfError(
                f"{tokenizer} (sha256 {digest[:12]}) is not the tokenizer the shards of {path} were made with "
                f"({recorded.get('path', '?')}, sha256 {recorded['sha256'][:12]})"
            )


def recorded_transform(files: list[Path]) -> str | None:
    """The text transform a manifest of ``files`` records (None when none records one)."""
    transforms = [m.get("text_transform") for _, m in manifests_of(files)]
    return next((t for t in transforms if t not in (None, "none")), None)
