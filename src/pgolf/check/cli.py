"""``pgolf check``: compliance checks a reviewer can rerun.

* ``pgolf check flip``: perturb the evaluated stream at random positions (substitute a token, insert
  or delete a BOS, insert or delete a token, rewrite the whole tail: document structure changes
  too) and verify that every per-token loss before the perturbed token is bit-identical, for
  standard, sliding and the three score-first TTT kinds (C1 causality, C3 score-before-update,
  and no later document shaping how an earlier one is scored).
* ``pgolf check normalization``: the model's distribution sums to 1 over the vocabulary at sampled
  positions and each charged loss is ``-log p(target)`` (C2).
* ``pgolf check record DIR``: required files, submission.json fields, size under the cap, and
  static findings with file and line (self-extracting scripts decoded, never executed).

Exit code 0 when every check passes, 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json

from pgolf.eval.cli import add_weights_arguments

DESCRIPTION = """\
Compliance checks a reviewer can rerun.

  flip           perturb tokens at random positions of the evaluated stream and verify that every
                 per-token loss scored before the perturbed token could be seen is bit-identical, for
                 standard, sliding and the three score-first TTT kinds (C1 causality, C3
                 score-before-update)
  normalization  the model's distribution sums to 1 over the vocabulary at sampled positions and each
                 charged loss is -log p(target) (C2)
  record DIR     required files, submission.json fields, size under the cap, and static findings with
                 file and line (self-extracting scripts decoded, never executed)

Exit code 0 when every check passes, 1 when one fails, 2 on bad input.
"""


def _model_and_data(args: argparse.Namespace):
    from pgolf.eval import cli as eval_cli
    from pgolf.runtime import pick_device

    device = pick_device(args.device)
    args.preset_given = args.preset is not None
    args.preset = args.preset or "baseline"
    state, embedded = eval_cli._load_state(args)
    cfg = eval_cli._resolve_config(args, embedded)
    eval_cli._apply_eval_flags(cfg, None, args.doc_isolated, None)
    sp, tokens, table, seq_len = eval_cli._load_eval_data(args, cfg, device)
    model = eval_cli._build(cfg, state, args, device)
    model.eval()
    return cfg, sp, tokens, table, seq_len, model, device


def _flip(args: argparse.Namespace) -> int:
    from pgolf.check.flip import KINDS, MODES, evaluator_for, flip_check, pick_perturbations
    from pgolf.errors import PgolfError

    kinds = tuple(k for k in args.kinds.split(",") if k) if args.kinds else KINDS
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise PgolfError(f"--kinds {args.kinds!r}: expected a comma list of {', '.join(KINDS)}")
    cfg, sp, tokens, table, seq_len, model, device = _model_and_data(args)
    modes = MODES if args.mode == "all" else (args.mode,)
    flips = pick_perturbations(tokens, args.flips, cfg.model.vocab_size, int(sp.bos_id()), args.seed, kinds)
    reports = []
    for mode in modes:
        evaluate = evaluator_for(mode, model, table, cfg.eval, seq_len, int(sp.bos_id()), device,
                                 args.batch_tokens, args.stride or cfg.eval.eval_stride or 64, cfg.train.seed)
        report = flip_check(evaluate, tokens, mode, flips)
        reports.append(report.as_dict())
        if not args.json:
            verdict = "PASS" if report.ok else "FAIL"
            detail = ", ".join(f"{o.kind} p={o.position}: {o.changed}/{o.protected} changed" for o in report.outcomes)
            print(f"flip {mode:<8} {verdict}  ({detail})")
    ok = all(r["ok"] for r in reports)
    if args.json:
        print(json.dumps({"ok": ok, "reports": reports}, sort_keys=True))
    return 0 if ok else 1


def _normalization(args: argparse.Namespace) -> int:
    from pgolf.check.normalization import normalization_check

    args.doc_isolated = False
    cfg, sp, tokens, table, seq_len, model, device = _model_and_data(args)
    report = normalization_check(model, tokens, seq_len, args.samples, args.seed, device=device)
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        verdict = "PASS" if report.ok else "FAIL"
        print(f"normalization {verdict}: max |sum p - 1| = {report.max_sum_error:.2e}, "
              f"max |loss + log p(target)| = {report.max_loss_error:.2e} over {report.positions} positions")
    return 0 if report.ok else 1


def _record(args: argparse.Namespace) -> int:
    from pgolf.check.record import check_record

    reports = [check_record(p) for p in args.paths]
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], sort_keys=True))
    else:
        for r in reports:
            print(f"{'PASS' if r.ok else 'FAIL'} {r.path}")
            for key, value in r.facts.items():
                print(f"  {key}: {json.dumps(value, sort_keys=True)}")
            for f in r.findings:
                print(f"  [{f.severity}] {f.file}:{f.line} {f.rule}: {f.message}")
    return 0 if all(r.ok for r in reports) else 1


def _add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_arguments(parser)
    parser.add_argument("--max-tokens", type=int, default=8192, help="evaluate only the first N val tokens (default: 8192)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="where to run (default: cpu, for bit-identity)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sampled positions")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def register(subparsers) -> None:
    parser = subparsers.add_parser("check", help="compliance checks: flip, normalization, record",
                                   description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="check", metavar="CHECK", required=True)
    flip = sub.add_parser("flip", help="perturb tokens; earlier per-token losses must stay bit-identical",
                          description="Perturb the evaluated stream at random positions (substitute, insert or delete a token or a "
                          "BOS, rewrite the tail: document structure changes too) and verify that every per-token loss "
                          "of a target before the perturbed position stays bit-identical (C1, C3). "
                          "Exit code 1 when one changes.")
    _add_weights_arguments(flip)
    flip.add_argument("--mode", default="all", choices=("all", "standard", "sliding", "sgd", "lora", "phased"),
                      help="which evaluation to check (default: all)")
    flip.add_argument("--flips", type=int, default=6, help="perturbations, the kinds taken in turn (default: 6, one of each)")
    flip.add_argument("--kinds", default="", help="comma list of perturbation kinds (default: all of "
                      "substitute, insert_bos, delete_bos, insert_token, delete_token, rewrite_tail)")
    flip.add_argument("--stride", type=int, default=0, help="sliding stride (default: EVAL_STRIDE, else 64)")
    flip.add_argument("--doc-isolated", action="store_true", help="sliding/TTT restart context at every BOS")
    flip.add_argument("--batch-tokens", type=int, default=65_536, help="tokens per forward batch")
    flip.set_defaults(handler=_flip)
    norm = sub.add_parser("normalization", help="softmax sums to 1 and losses are -log p(target)",
                          description="At sampled positions, the model's distribution must sum to 1 over the vocabulary "
                          "and each charged loss must be -log p(target) (C2). Exit code 1 when not.")
    _add_weights_arguments(norm)
    norm.add_argument("--samples", type=int, default=256, help="sampled positions (default: 256)")
    norm.set_defaults(handler=_normalization)
    rec = sub.add_parser("record", help="compliance report for records folders or train_gpt.py files",
                         description="Required files, submission.json fields, size under the cap, and static findings "
                         "with file and line; self-extracting scripts are decoded, never executed. Exit code 1 when a "
                         "folder fails.")
    rec.add_argument("paths", nargs="+", help="records folders or .py files")
    rec.add_argument("--json", action="store_true", help="print one JSON list")
    rec.set_defaults(handler=_record)
