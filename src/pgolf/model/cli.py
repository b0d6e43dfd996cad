"""``pgolf model info``: parameter counts of a configuration, without training anything."""

from __future__ import annotations

import argparse
import json

from pgolf.config_cli import add_config_arguments, config_from_args


def _info(args: argparse.Namespace) -> int:
    from pgolf.config import ModelConfig
    from pgolf.model.gpt import GPT, count_parameters

    cfg = config_from_args(args)
    model = GPT(cfg.model)
    by_group: dict[str, int] = {}
    for name, p in model.named_parameters():
        group = name.split(".")[0] if not name.startswith("blocks.") else "blocks"
        by_group[group] = by_group.get(group, 0) + p.numel()
    # Model fields that differ from the reference defaults: the techniques this count includes.
    reference = ModelConfig()
    changed = {f: v for f, v in vars(cfg.model).items() if getattr(reference, f) != v}
    info = {"preset": cfg.preset, "params": count_parameters(model), "by_group": by_group,
            "layers": cfg.model.num_layers, "model_dim": cfg.model.model_dim, "vocab_size": cfg.model.vocab_size,
            "model_changes": changed}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"preset {cfg.preset}: {info['params']:,} parameters")
        for group, n in by_group.items():
            print(f"  {group:<14} {n:>12,}")
        for name, value in changed.items():
            print(f"  {name} = {value}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="inspect model configurations",
                                   description="Inspect a configuration's model without training anything.")
    sub = parser.add_subparsers(dest="model_verb", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="parameter count, total and per group",
                          description="The configuration's parameter count, in total and per group, and the model "
                          "fields that differ from the reference's defaults.")
    add_config_arguments(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=_info)
