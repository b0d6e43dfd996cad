"""``pgolf quant inspect ARTIFACT``: bytes per tensor and per group, summing to the file size."""

from __future__ import annotations

import argparse
import os

from pgolf.export.artifact import SIZE_CAP_BYTES
from pgolf.export.codecs import CODECS
from pgolf.export.inspect import attribute_bytes, group_totals


def _inspect(args: argparse.Namespace) -> int:
    rows = attribute_bytes(args.artifact)
    size = os.path.getsize(args.artifact)
    with open(args.artifact, "rb") as f:
        codec = CODECS[f.read(10)[9]].name
    if not args.groups_only:
        print(f"{'file bytes':>12} {'stored':>12}  tensor")
        for r in rows:
            print(f"{r.file_bytes:>12,} {r.stored_bytes:>12,}  {r.key}")
        print()
    print(f"{'file bytes':>12}  group")
    for group, b in group_totals(rows).items():
        print(f"{b:>12,}  {group}")
    total = sum(r.file_bytes for r in rows)
    print(f"{total:>12,}  total ({codec}; file size {size:,}; model-only headroom {SIZE_CAP_BYTES - size:,} of {SIZE_CAP_BYTES:,})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("quant", help="inspect quantized artifacts")
    sub = p.add_subparsers(dest="quant_verb", metavar="ACTION", required=True)
    ins = sub.add_parser("inspect", help="bytes per tensor and per group, summing exactly to the file size")
    ins.add_argument("artifact")
    ins.add_argument("--groups-only", action="store_true", help="print only the per-group totals")
    ins.set_defaults(handler=_inspect)
