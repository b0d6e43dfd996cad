"""``pgolf data``: verify, prepare, download and byte-audit token shards.

Only argparse is imported here; each handler imports its worker module (and through it numpy,
torch, sentencepiece or huggingface_hub) when it runs, so ``pgolf --help`` stays fast.
"""

from __future__ import annotations

import argparse
import io
import json
import sys

from pgolf.cli_vocab import add_json_flag
from pgolf.errors import EXIT_USAGE

DEFAULT_DOWNLOAD_DIR = "data"


def register(subparsers) -> None:
    """Add ``pgolf data`` and its four subcommands to the top-level subparsers."""
    parser = subparsers.add_parser(
        "data",
        help="verify, prepare, download and byte-audit token shards",
        description="Work with the challenge's token shards (256 x int32 header, then uint16 tokens).",
    )
    parser.set_defaults(handler=_make_help_handler(parser))
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND")
    _add_verify(commands)
    _add_prepare(commands)
    _add_download(commands)
    _add_audit(commands)


def _make_help_handler(parser: argparse.ArgumentParser):
    def show_help(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return show_help


def _add_verify(commands) -> None:
    p = commands.add_parser(
        "verify",
        help="check shard headers, sizes and token ids",
        description="Check each shard's header, size and token ids; print tokens, docs and max id per shard.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="shard files, globs, or directories of fineweb_*_*.bin")
    p.add_argument("--tokenizer", help="SentencePiece .model whose vocab size the ids must stay below")
    p.add_argument("--vocab-size", type=int, help="vocab size the ids must stay below (must match --tokenizer if both)")
    add_json_flag(p, "every shard's tokens, documents and largest id")
    p.set_defaults(handler=run_verify)


def _add_prepare(commands) -> None:
    from_defaults = "(default: %(default)s, as in the challenge's export)"
    p = commands.add_parser(
        "prepare",
        help="tokenize documents into val/train shards",
        description=(
            "Tokenize documents into fineweb_{val,train}_NNNNNN.bin shards plus manifest.json. Input: a .jsonl "
            'file (one {"text": ...} per line), a .txt file (documents separated by blank lines), or a '
            "directory of such files. A tokenizer is trained on the train documents unless --tokenizer is given."
        ),
    )
    p.add_argument("--docs", required=True, metavar="FILE|DIR", help="documents: .jsonl, .txt, or a directory of them")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for shards, tokenizer and manifest, created when missing")
    p.add_argument("--tokenizer", help="existing SentencePiece .model to tokenize with (no training)")
    p.add_argument(
        "--vocab-size", type=int, help="vocab size of the tokenizer to train (or to check --tokenizer against)"
    )
    p.add_argument("--val-docs", type=int, default=50_000, help=f"first K documents form the val split {from_defaults}")
    p.add_argument("--shard-tokens", type=int, default=10**8, help=f"tokens per shard {from_defaults}")
    p.add_argument(
        "--transform", choices=("none", "caseops"),
        help="text transform before tokenizing (default: the tokenizer's; caseops also writes the val byte sidecars "
        "fineweb_val_bytes_*.bin that val_bpb counts the original bytes from)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_flag(p, "the manifest written")
    p.set_defaults(handler=run_prepare)


def _add_download(commands) -> None:
    p = commands.add_parser(
        "download",
        help="download the published challenge shards from the Hugging Face Hub",
        description=(
            "Download the challenge's published export (repo MATCHED_FINEWEB_REPO_ID, default "
            "willdepueoai/parameter-golf) into OUT/datasets/fineweb10B_VARIANT and OUT/tokenizers; files "
            "already present and verified are skipped; every file is checksum-verified."
        ),
    )
    p.add_argument("--variant", default="sp1024", help="byte260 or spNNNN, e.g. sp1024 (default: %(default)s)")
    p.add_argument("--train-shards", type=int, required=True, help="number of train shards (each 1e8 tokens) to fetch")
    p.add_argument("--out", default=DEFAULT_DOWNLOAD_DIR, metavar="DIR", help="local data root (default: %(default)s)")
    p.add_argument("--with-docs", action="store_true", help="also fetch docs_selected.jsonl and its sidecar manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json_flag(p, "what was downloaded and skipped")
    p.set_defaults(handler=run_download)


def _add_audit(commands) -> None:
    p = commands.add_parser(
        "audit",
        help="prove the val_bpb byte count equals the text's UTF-8 length",
        description=(
            "Count the bytes val_bpb charges over every scored target of a val stream and compare them, "
            "per document and in total, with the UTF-8 length of the decoded text; for a CaseOps val set, with "
            "the original text (the source documents, else its byte sidecar). Exit code 1 on any mismatch."
        ),
    )
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model the val shards were made with")
    p.add_argument("--val", required=True, metavar="PATH", help="val shard, glob, or directory of fineweb_val_*.bin")
    p.add_argument("--docs", metavar="FILE|DIR", help="a CaseOps val set's source documents (default: its manifest's)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run_audit)


def run_verify(args: argparse.Namespace) -> int:
    from pgolf.data.verify import verify

    report = verify(args.paths, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                    out=io.StringIO() if args.json else None)
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from pgolf.data.prepare import prepare

    result = prepare(
        args.docs,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        val_docs=args.val_docs,
        shard_tokens=args.shard_tokens,
        progress=not args.quiet and not args.json,
        transform=args.transform,
    )
    if args.json:
        print(json.dumps({"out": str(result.out_dir), "manifest_path": str(result.manifest_path), "manifest": result.manifest},
                         sort_keys=True))
        return 0
    stats = result.manifest["stats"]
    print(
        f"{result.out_dir}: {stats['docs_val']} val docs ({stats['tokens_val']} tokens, {stats['files_val']} shards), "
        f"{stats['docs_train']} train docs ({stats['tokens_train']} tokens, {stats['files_train']} shards); "
        f"manifest {result.manifest_path}"
    )
    return 0


def run_download(args: argparse.Namespace) -> int:
    from pgolf.data.download import download

    result = download(
        variant=args.variant,
        train_shards=args.train_shards,
        out=args.out,
        with_docs=args.with_docs,
        progress=not args.quiet and not args.json,
    )
    if args.json:
        print(json.dumps({"repo_id": result.repo_id, "commit": result.commit, "out": str(result.out),
                          "dataset_dir": str(result.dataset_dir), "tokenizer_files": [str(p) for p in result.tokenizer_files],
                          "downloaded": result.downloaded, "skipped": result.skipped,
                          "bytes_downloaded": result.bytes_downloaded}, sort_keys=True))
        return 0
    print(result.summary())
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from pgolf.data.audit import audit

    report = audit(args.tokenizer, args.val, docs=args.docs)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1
