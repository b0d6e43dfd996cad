"""``pgolf quant inspect ARTIFACT`` (bytes per tensor and per group, summing to the file size) and
``pgolf quant sweep CHECKPOINT`` (policies x compressors by round trip; see pgolf.quant.sweep)."""

from __future__ import annotations

import argparse
import json
import sys

from pgolf.cli_vocab import add_json_flag, make_out_folder
from pgolf.config_cli import add_config_arguments


def _inspect(args: argparse.Namespace) -> int:
    from pgolf.export.artifact import checked_bundle, size_for  # imported here: `pgolf --help` must not import torch
    from pgolf.export.codecs import CODECS
    from pgolf.export.inspect import attribute_bytes, group_totals, ordered_roles, role_totals

    checked_bundle(args.bundle)
    rows = attribute_bytes(args.artifact)
    size = size_for(args.artifact, args.bundle)
    with open(args.artifact, "rb") as f:
        codec = CODECS[f.read(10)[9]].name
    total = sum(r.file_bytes for r in rows)
    roles, groups = ordered_roles(role_totals(rows)), group_totals(rows)
    if args.json:
        print(json.dumps({"artifact": args.artifact, "codec": codec, "file_bytes": size.bytes_model, "attributed_bytes": total,
                          "roles": roles, "groups": groups, "size": size.breakdown(),
                          "tensors": [] if args.groups_only else [vars(r) for r in rows]}, sort_keys=True))
        return 0
    if not args.groups_only:
        print(f"{'file bytes':>12} {'stored':>12}  tensor")
        for r in rows:
            print(f"{r.file_bytes:>12,} {r.stored_bytes:>12,}  {r.key}")
        print()
    print(f"{'file bytes':>12}  role")
    for role, b in roles.items():
        print(f"{b:>12,}  {role}")
    print(f"{total:>12,}  total ({codec}; the file's size, bytes_model)")
    if any("." in g for g in groups):  # v2 keys name their storage (role.part.layout): worth a second split
        print(f"\n{'file bytes':>12}  storage group")
        for group, b in groups.items():
            print(f"{b:>12,}  {group}")
    print()
    for line in size.lines(args.artifact):
        print(line)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pgolf.eval.cli import _load_into, _load_state, _resolve_config, eval_tokenizer_path, eval_val_spec
    from pgolf.eval.evaluate import evaluate
    from pgolf.eval.valdata import load_validation
    from pgolf.export.artifact import checked_bundle, size_for
    from pgolf.files import check_writable
    from pgolf.model.gpt import build_model
    from pgolf.quant.policy import nothing_quantized_warning
    from pgolf.quant.sweep import (
        check_compressors, format_table, nothing_quantized_policies, parse_sweep_spec, run_sweep, write_outputs,
    )
    from pgolf.runtime import pick_device

    specs = [parse_sweep_spec(p) for p in args.schemes]  # refuse bad input before the slow loading
    checked_bundle(args.bundle)
    check_compressors(args.compressors.split(","))
    out = make_out_folder(args.out)
    check_writable(out, "--out")
    args.artifact, args.preset_given = None, args.preset is not None
    args.preset = args.preset or "baseline"
    state, embedded = _load_state(args)
    cfg = _resolve_config(args, embedded)
    device = pick_device(args.device)
    seq_len = cfg.eval_seq_len
    val = load_validation(eval_tokenizer_path(args, cfg), eval_val_spec(args, cfg), cfg.model.vocab_size,
                          seq_len, args.max_tokens, device)
    tokens, table = val.tokens, val.table
    model = build_model(cfg.model, device)
    state = _load_into(model, state, args)  # a record's own layout becomes pgolf's before quantizing

    def score(weights: dict) -> float:
        _load_into(model, weights, args)
        return evaluate(model, tokens, seq_len, table, args.batch_tokens, device).score.val_bpb

    def hessians() -> dict:
        _load_into(model, state, args)
        return _calibration_hessians(model, cfg, args, device)

    float_bpb, rows = run_sweep(
        state, args.schemes, args.compressors.split(","), score, out, hessians if any(sp.gptq for sp in specs) else None, cfg.quant,
        size_of=lambda path: size_for(path, args.bundle, run_file=args.checkpoint),
    )
    written = write_outputs(float_bpb, rows, out)
    for policy in nothing_quantized_policies(rows):
        print(nothing_quantized_warning(len(state), policy), file=sys.stderr)
    if args.json:
        print(json.dumps({"float_val_bpb": float_bpb, "rows": [vars(r) for r in rows], "files": [str(p) for p in written]},
                         sort_keys=True))
        return 0
    print(format_table(float_bpb, rows))
    for path in written:
        print(f"wrote {path}")
    return 0


def _calibration_hessians(model, cfg, args: argparse.Namespace, device) -> dict:
    """GPTQ Hessians of the float model: from training shards or from its own samples."""
    import time

    from pgolf.data.identity import check_tokenizer
    from pgolf.data.loader import build_loader
    from pgolf.data.shards import resolve_shards
    from pgolf.quant.calibration import calibration_hessians

    q, t = cfg.quant, cfg.train
    q.gptq_ar_selfgen = args.calibration == "self"
    loader = None
    if not q.gptq_ar_selfgen:
        check_tokenizer(resolve_shards(args.train or cfg.data.train_glob(), "train"), args.tokenizer or cfg.data.tokenizer_path)
        pattern = args.train or cfg.data.train_glob()
        if q.gptq_calibration_loader == "shuffled":  # R44's calibration windows (rank 0 of 1)
            from pgolf.data.rank_loader import RankShuffledLoader

            loader = RankShuffledLoader(pattern, t.train_seq_len, 0, 1, device, cfg.model.vocab_size)
        else:
            loader = build_loader(t.loader, pattern, t.train_seq_len, t.seed, 0, 1, device, cfg.model.vocab_size,
                                  cfg.model.bos_id)
    t0 = time.perf_counter()
    hessians = calibration_hessians(model, q, t.train_seq_len, cfg.model.vocab_size, device, t.seed, loader=loader,
                                    batch_tokens=t.train_batch_tokens, grad_accum=t.grad_accum_steps or 8)
    print(f"gptq: {len(hessians)} Hessians from {args.calibration} calibration in {time.perf_counter() - t0:.1f}s")
    return hessians


def register(subparsers) -> None:
    p = subparsers.add_parser("quant", help="inspect artifacts and sweep quantization policies x compressors",
                              description="Look inside an artifact's bytes, or try quantization policies and compressors "
                              "on a checkpoint by a real round trip.")
    sub = p.add_subparsers(dest="quant_verb", metavar="ACTION", required=True)
    ins = sub.add_parser("inspect", help="bytes per tensor and per tensor role, summing exactly to the file size",
                         description="Attribute every byte of an artifact file to a tensor (or to the container's header "
                         "and metadata) and total them per tensor role (embed, head, attn, mlp, other, container; v2 "
                         "artifacts also per storage group); the totals sum to the file size. Then the artifact's size "
                         "against the cap: its code bytes are --bundle's, else those its run counted (results.json "
                         "beside the file), else the pgolf modules this command imported.")
    ins.add_argument("artifact", help="a pgolf artifact (model.pgolf)")
    ins.add_argument("--groups-only", action="store_true", help="print only the per-role (and per-group) totals")
    ins.add_argument("--bundle", metavar="PATH", help="count this shipped train_gpt.py as the code bytes")
    add_json_flag(ins, "the per-tensor, per-role and per-group bytes and the size")
    ins.set_defaults(handler=_inspect)
    sw = sub.add_parser("sweep", help="evaluate quantization policies x compressors by round trip",
                        description="Quantize a checkpoint with each policy, write it with each compressor, read it back "
                        "and score it on val shards. Writes the artifacts and sweep.csv, sweep.json and sweep.png "
                        "(val_bpb against bytes_total) to --out. A policy that quantizes no tensor is named in a "
                        "warning. Prefix a policy with gptq: (GPTQ rounding on calibration Hessians) and/or lqer: "
                        "(LQER corrections, LQER_* settings), e.g. gptq:lqer:int6.")
    sw.add_argument("checkpoint", help="checkpoint.safetensors (carries its config) or a torch .pt (give --preset)")
    sw.add_argument("--schemes", nargs="+", required=True, metavar="POLICY",
                    help="policies, e.g. int8 int6:mse 'attn=int6,mlp=int5' 'int8,small=4096'; prefix gptq: and/or lqer: for GPTQ / LQER")
    sw.add_argument("--calibration", choices=("train", "self"), default="train",
                    help="GPTQ Hessians from training shards (GPTQ_CALIBRATION_BATCHES batches) or self-generated samples")
    sw.add_argument("--train", help="train shard glob for --calibration train (default: the config's)")
    sw.add_argument("--compressors", default="zlib", help="comma-separated: zlib,lzma,zstd,brotli,lrzip,auto (default: zlib)")
    add_config_arguments(sw, default_preset=None)
    sw.add_argument("--val", help="val shard file, directory or glob (default: the config's)")
    sw.add_argument("--tokenizer", help="SentencePiece .model (default: the config's TOKENIZER_PATH)")
    sw.add_argument("--max-tokens", type=int, default=0, help="score only the first N val tokens (default: all)")
    sw.add_argument("--batch-tokens", type=int, default=65_536, help="tokens per forward batch")
    sw.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto)")
    sw.add_argument("--bundle", metavar="PATH",
                    help="count this shipped train_gpt.py as the code bytes (default: the code the checkpoint's run "
                    "counted, from results.json beside it; else the pgolf modules this command imported)")
    sw.add_argument("--out", default=".", metavar="DIR",
                    help="folder for the artifacts and sweep.csv/.json/.png, created when missing (default: .)")
    add_json_flag(sw, "the float score and every row")
    sw.set_defaults(handler=_sweep)
