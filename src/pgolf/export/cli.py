"""``pgolf convert``: rewrite float weights between pgolf's layout and a record's own (the tables
are in :mod:`pgolf.export.record_layout`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pgolf.cli_vocab import add_json_flag
from pgolf.config_cli import add_config_arguments

DESCRIPTION = """\
Rewrite float weights between pgolf's layout and a record's own.

--to record writes the final_model.pt the preset's record would have saved for these weights: its
key names, its parameter banks (R22, R44), a torch.save of a plain dict of tensors that the
record's script loads with load_state_dict(..., strict=True). --to pgolf writes a pgolf
checkpoint.safetensors with the resolved config inside, so pgolf eval --checkpoint needs no
--preset afterwards. The input is any weights file pgolf eval reads (a record's or the reference's
final_model.pt, a pgolf checkpoint or artifact); it must fit the preset's model exactly, or
nothing is written.
"""


def _convert(args: argparse.Namespace) -> int:
    import torch

    from pgolf.eval.cli import _fitted_state, _load_state, _resolve_config
    from pgolf.export.record_layout import record_layout
    from pgolf.files import atomic_target, check_writable
    from pgolf.model.gpt import GPT

    out = Path(args.out)
    check_writable(out.parent, "--out folder")  # before the weights are read
    args.artifact, args.checkpoint = None, args.weights
    args.preset_given = args.preset is not None
    args.preset = args.preset or "baseline"
    state, embedded = _load_state(args)
    cfg = _resolve_config(args, embedded)
    args.preset = cfg.preset  # a pgolf checkpoint names the preset it was trained with
    layout = record_layout(cfg.preset) if args.to == "record" else None  # refused before the model is built
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        expected = GPT(cfg.model).state_dict()
    state = _fitted_state(expected, state, args)  # checks every key and shape
    with atomic_target(out) as tmp:
        if layout is not None:
            _save_torch(layout.to_record(state), tmp)
        else:
            _save_safetensors(state, cfg, tmp)
    what = f"{layout.record}'s layout" if layout is not None else f"pgolf's layout, config {cfg.preset!r} inside"
    if args.json:
        print(json.dumps({"out": str(out), "to": args.to, "tensors": len(state), "preset": cfg.preset}, sort_keys=True))
        return 0
    print(f"wrote {out} ({len(state)} tensors in pgolf's layout -> {what})")
    return 0


def _save_torch(state: dict, path: str) -> None:
    import torch

    torch.save({k: t.detach().cpu().contiguous() for k, t in state.items()}, path)


def _save_safetensors(state: dict, cfg, path: str) -> None:
    from safetensors.torch import save_file

    save_file({k: t.detach().cpu().contiguous() for k, t in state.items()}, path,
              metadata={"pgolf_config": cfg.to_json()})


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="rewrite weights between pgolf's layout and a record's own final_model.pt",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("weights", help="final_model.pt (a record's or pgolf's layout), checkpoint.safetensors or model.pgolf")
    parser.add_argument("--to", required=True, choices=("record", "pgolf"),
                        help="record: the preset's record's final_model.pt; pgolf: a checkpoint.safetensors")
    parser.add_argument("--out", required=True, help="file to write (replaced atomically)")
    add_config_arguments(parser, default_preset=None)
    add_json_flag(parser, "what was written")
    parser.set_defaults(handler=_convert)
