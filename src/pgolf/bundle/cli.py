"""``pgolf bundle``: write one self-contained ``train_gpt.py`` for a preset (+ ``--set``) configuration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pgolf.cli_vocab import add_deprecated_spelling, make_out_folder
from pgolf.config_cli import add_config_arguments, config_from_args


def _bundle(args: argparse.Namespace) -> int:
    import dataclasses

    from pgolf.bundle.build import build_bundle

    from pgolf.errors import PgolfError
    from pgolf.export.artifact import checked_bundle
    from pgolf.export.codecs import lrzip_available

    if args.artifact is not None:
        checked_bundle(args.artifact, "--artifact")  # one line, before the build
    if args.lrzip and not lrzip_available():
        raise PgolfError("--lrzip: the lrzip binary is not installed here (apt-get install lrzip)")
    make_out_folder(Path(args.output).parent)
    report = build_bundle(config_from_args(args), args.output, tree_shake=not args.no_shake, specialise=not args.no_specialise,
                          keep_checks=args.keep_checks, lrzip=True if args.lrzip else None)
    size = bundled_size(report, args.artifact)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "size": size.breakdown() if size else None}, sort_keys=True))
        return 0
    print(report.summary())
    tried = ", ".join(f"{codec} {size:,}" for codec, size in report.candidates)
    print(f"code bytes: raw {report.bytes_raw:,} -> minified {report.bytes_minified:,} -> wrapped {report.bytes_wrapped:,} ({tried})")
    if report.codec == "brotli":
        print("note: the script imports brotli, so it must be installed where it runs (add it to requirements.txt)")
    if report.codec == "lrzip-zpaq":
        print("note: the script decompresses itself with the lrzip binary, so lrzip must be installed where it runs")
    for line in size_lines(report, size, args.artifact):
        print(line)
    return 0


def bundled_size(report, artifact: str | None):
    """The size of ``artifact`` with this bundle as its code (the one accounting), or None without one."""
    from pgolf.export.artifact import size_report

    return size_report(artifact, [report.path]) if artifact is not None else None


def size_lines(report, size, artifact: str | None) -> list[str]:
    """The breakdown every verb prints; without --artifact only its bytes_code line and what it counts."""
    from pgolf.export.artifact import BUNDLE_KIND, CODE_KIND_NOTES, code_line

    if size is not None:
        return size.lines(artifact)
    return [code_line(report.bytes_wrapped, BUNDLE_KIND, f"bundle {Path(report.path).name}"), CODE_KIND_NOTES[BUNDLE_KIND],
            "(--artifact runs/<run_id>/model.pgolf adds a model: bytes_model, bytes_total and headroom with this bundle as the code)"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bundle", help="write a single-file train_gpt.py for one configuration",
        description="Inline the pgolf modules a training run needs (found from the import graph) into one script with "
        "the resolved config frozen in (the reference env vars still override it), minify it and wrap it as a "
        "self-extracting file (lzma, brotli or, with --lrzip, lrzip's ZPAQ, whichever is smallest, its payload in a 124-symbol bytes literal). "
        "Writes a readable copy beside it. "
        "Run it with python train_gpt.py or torchrun --standalone --nproc_per_node=N train_gpt.py; "
        "its size is the submission's code bytes.",
    )
    add_config_arguments(parser)
    parser.add_argument("--out", dest="output", default="train_gpt.py", metavar="PATH",
                        help="output script; its folder is created when missing (default: train_gpt.py)")
    add_deprecated_spelling(parser, ["-o", "--output"], "--out", "output")
    parser.add_argument("--no-shake", action="store_true", help="keep top-level definitions nothing reaches")
    parser.add_argument("--no-specialise", action="store_true",
                        help="keep the code of switches the config leaves off (and let their env vars change them)")
    parser.add_argument("--keep-checks", action="store_true",
                        help="keep the package's input checks (one-line errors for bad data, paths or env values); "
                             "by default a bundle strips them to save code bytes")
    parser.add_argument("--lrzip", action="store_true",
                        help="also try lrzip's ZPAQ (lrzip -z -L 9) for the code, its scripts 11 to 15%% smaller than brotli's for the record presets; "
                             "the script then needs the lrzip binary where it runs (tried by default when the "
                             "configuration's compressor is lrzip)")
    parser.add_argument("--artifact", metavar="PATH",
                        help="an artifact (model.pgolf): print its size with this bundle as the code bytes")
    parser.add_argument("--json", action="store_true", help="print the size report as JSON")
    parser.set_defaults(handler=_bundle)
