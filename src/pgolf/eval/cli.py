"""``pgolf eval``: score an artifact or a checkpoint on validation shards with the exact val_bpb.

Phases, each reported with its score: standard non-overlapping windows (always), sliding windows
(``--stride STRIDE``, optionally ``--doc-isolated``), score-first TTT (``--ttt sgd|lora|phased``).
The final number is the last phase's. ``--json`` adds the wall time of every phase, from reading
the weights to the final number, compared with the 600 s evaluation limit (see pgolf.eval.timing).

Accepted weights: a pgolf artifact (``model.pgolf``, carries its config), a pgolf checkpoint
(``checkpoint.safetensors``, carries its config), the reference's ``final_model.pt`` /
``final_model.int8.ptz``, or a record's own ``final_model.pt`` as its script saves it (banked
or not, its key names; give the record's ``--preset``; see pgolf.export.record_layout), or a
record's own shipped ``final_model.*.ptz`` (see pgolf.export.record_artifact). Torch files are
read with ``torch.load(weights_only=True)``: nothing loaded here can execute code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgolf.cli_vocab import add_deprecated_spelling
from pgolf.config_cli import add_config_arguments

DESCRIPTION = """\
Score an artifact or a checkpoint on validation shards with the exact val_bpb.

Phases, each reported with its score: standard non-overlapping windows (always), sliding windows
(--stride STRIDE, optionally --doc-isolated), score-first test-time training (--ttt sgd|lora|phased).
The final number is the last phase's. --json adds the wall time of every phase, from reading the
weights to the final number, compared with the 600 s evaluation limit. An artifact whose policy
quantized no tensor is named in a warning: its score is the float model's.

Accepted weights: a pgolf artifact (model.pgolf, carries its config), a pgolf checkpoint
(checkpoint.safetensors, carries its config), or the reference's or a record's own final_model.pt
or final_model.*.ptz (give its --preset). Nothing loaded here can execute code. The tokenizer and val
paths stored in a config are as given when it trained (relative to that folder); from elsewhere,
pass --tokenizer and --val. An artifact stores the config scoring reads (not the optimizer's or the
training-only fields) as the difference from pgolf's schema defaults: one written against other
defaults than this pgolf's is refused, unless --preset says the config.
"""


def _load_state(args: argparse.Namespace):
    """(state_dict, embedded config dict or None) from --artifact or --checkpoint."""
    state, config, _ = _load_weights(args)
    return state, config


def _load_weights(args: argparse.Namespace):
    """(state_dict, embedded config dict or None, tensors stored as integer codes or None)."""
    from pgolf.errors import PgolfError

    path = Path(args.artifact or args.checkpoint)
    if not path.is_file():
        raise PgolfError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        return (*_load_safetensors_checkpoint(path), None)
    from pgolf.export.loading import load_weights

    state, info = load_weights(path)
    if "config" in info.meta and not args.preset_given:  # with --preset the embedded config is not used
        from pgolf.config import check_defaults

        check_defaults(info.meta, str(path))
    return state, info.meta.get("config"), info.quantized_tensors


def _load_safetensors_checkpoint(path: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from pgolf.errors import PgolfError

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PgolfError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    config = json.loads(meta["pgolf_config"]) if "pgolf_config" in meta else None
    return state, config


def _resolve_config(args: argparse.Namespace, embedded: dict | None):
    from pgolf.config import apply_env, apply_overrides, from_dict, validate
    from pgolf.presets import build_config

    if embedded is not None and not args.preset_given:
        cfg = from_dict(embedded)
        apply_env(cfg)
        apply_overrides(cfg, args.overrides)
        validate(cfg)
        return cfg
    return build_config(args.preset, args.overrides)


def _eval(args: argparse.Namespace) -> int:
    from pgolf.eval.timing import PhaseTimer, limit_comparison
    from pgolf.progress import display_mode
    from pgolf.runtime import device_name, pick_device

    if args.token_losses:  # refused before the evaluation, not after it
        from pgolf.files import check_writable

        check_writable(Path(args.token_losses).parent, "--token-losses folder")
    display_mode()  # a bad PGOLF_PROGRESS is refused before any work
    device = pick_device(args.device)
    timer = PhaseTimer(device)
    args.preset_given = args.preset is not None
    args.preset = args.preset or "baseline"
    with timer.phase("read_weights"):
        state, embedded, quantized_tensors = _load_weights(args)
    cfg = _resolve_config(args, embedded)
    _apply_eval_flags(cfg, args.stride, args.doc_isolated, args.ttt)
    if quantized_tensors == 0:
        from pgolf.quant.policy import nothing_quantized_warning

        print(nothing_quantized_warning(len(state), cfg.quant.scheme if embedded else None), file=sys.stderr)
    with timer.phase("load_data"):
        sp, tokens, table, seq_len = _load_eval_data(args, cfg, device)
    with timer.phase("build_model"):
        model = _build(cfg, state, args, device)
    phases = _run_phases(args, cfg, model, sp, tokens, table, seq_len, device, timer)
    final_name, final = list(phases.items())[-1]
    total = timer.total()
    gpus = torch_cuda_count() if device.type == "cuda" else 0
    out = {**final["score"], "final_phase": final_name, "seq_len": seq_len, "preset": cfg.preset, "device": str(device),
           "weights": str(args.artifact or args.checkpoint), "eval_time_s": total, "quantized_tensors": quantized_tensors,
           "phases": {name: {**p["score"], **{k: v for k, v in p.items() if k != "score"}} for name, p in phases.items()},
           "timing": {"total_s": total, "phase_s": timer.phases,
                      **limit_comparison(total, device, gpus, device_name(device) if device.type == "cuda" else None)}}
    if args.token_losses:
        _save_npy(Path(args.token_losses), final["losses"])
        out["token_losses"] = args.token_losses
    for p in out["phases"].values():
        p.pop("losses", None)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        for name, p in phases.items():
            s = p["score"]
            print(f"{name:<9} val_loss {s['val_loss']:.8f}  val_bpb {s['val_bpb']:.8f}  ({s['tokens']:,} tokens, {s['bytes']:,} bytes)")
        print(f"eval time {total:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in timer.phases.items()))
    return 0


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def _apply_eval_flags(cfg, stride: int | None, doc_isolated: bool, ttt: str | None) -> None:
    from pgolf.config import validate

    if stride is not None:
        cfg.eval.eval_stride = stride
    if doc_isolated:
        cfg.eval.doc_isolated = True
    if ttt:
        cfg.eval.ttt = ttt
    validate(cfg)


def _load_eval_data(args: argparse.Namespace, cfg, device):
    from pgolf.eval.valdata import load_validation

    seq_len = args.seq_len or cfg.eval_seq_len
    val = load_validation(eval_tokenizer_path(args, cfg), eval_val_spec(args, cfg), cfg.model.vocab_size,
                          seq_len, args.max_tokens, device)
    return val.sp, val.tokens, val.table, seq_len


def eval_tokenizer_path(args: argparse.Namespace, cfg) -> str:
    """--tokenizer, else the config's TOKENIZER_PATH; a missing config path says to pass --tokenizer."""
    from pgolf.errors import PgolfError

    if args.tokenizer:
        return args.tokenizer
    path = cfg.data.tokenizer_path
    if not Path(path).is_file():
        raise PgolfError(f"{path}: tokenizer file not found (the config's TOKENIZER_PATH; one stored in the weights is "
                         "as given where they trained, relative to that folder); pass --tokenizer")
    return path


def eval_val_spec(args: argparse.Namespace, cfg) -> str:
    """--val, else the config's DATA_PATH/VAL_FILES; a miss there says to pass --val."""
    from pgolf.data.shards import resolve_shards
    from pgolf.errors import PgolfError

    if args.val:
        return args.val
    spec = cfg.data.val_glob()
    try:
        resolve_shards(spec, "val")
    except PgolfError as exc:
        raise PgolfError(f"{exc} (the config's val shards; a path stored in the weights is as given where they "
                         "trained, relative to that folder); pass --val") from None
    return spec


def _build(cfg, state, args, device):
    from pgolf.model.gpt import build_model

    model = build_model(cfg.model, device)
    _load_into(model, state, args)
    return model


def _run_phases(args, cfg, model, sp, tokens, table, seq_len, device, timer) -> dict:
    """Standard evaluation, then the configured phases (pgolf.eval.phases); all on one stream."""
    import numpy as np

    from pgolf.eval.evaluate import evaluate
    from pgolf.eval.ledger import counting_into
    from pgolf.eval.phases import PHASE_LABELS, check_stride, configured_phases, run_phase
    from pgolf.eval.sliding import compiled_hidden
    from pgolf.progress import phase
    from pgolf.runtime import compile_enabled

    check_stride(cfg.eval, seq_len)
    phases: dict = {}
    targets, windows = tokens.shape[0] - 1, (tokens.shape[0] - 1) // seq_len
    with timer.phase("standard"), phase("eval: standard windows", targets, detail=f"{windows:,} windows of {seq_len}") as bar:
        result = evaluate(model, tokens, seq_len, table, args.batch_tokens, device, keep_token_losses=bool(args.token_losses),
                          progress=bar)
    phases["standard"] = {"score": result.score.as_dict(), "losses": result.token_losses}
    # compiled when the config compiles: its compile time counts, it is part of the evaluation
    hidden = compiled_hidden(model) if compile_enabled(cfg.train.compile, device) else None
    for name in configured_phases(cfg.eval):
        with timer.phase(name), phase(f"eval: {PHASE_LABELS[name]}", targets) as bar, counting_into(bar):
            p = run_phase(name, model, tokens, seq_len, table, cfg.eval, int(sp.bos_id()), device, cfg.train.seed,
                          args.batch_tokens, hidden)
        phases[name] = {"score": p.result.score.as_dict(), "losses": p.result.token_losses, **p.details}
    for p in phases.values():
        if p["losses"] is not None:
            p["losses"] = np.asarray(p["losses"], dtype=np.float32)
    return phases


def _load_into(model, state: dict, args: argparse.Namespace) -> dict:
    """Load ``state`` (pgolf's layout, or the layout of the record the preset reproduces) into
    ``model``; returns it in pgolf's layout."""
    state = _fitted_state(model.state_dict(), state, args)
    model.load_state_dict(state, strict=True)
    return state


def _fitted_state(expected: dict, state: dict, args: argparse.Namespace) -> dict:
    """``state`` in pgolf's layout, with exactly the keys and shapes of ``expected``, or PgolfError."""
    from pgolf.errors import PgolfError
    from pgolf.export.record_layout import in_pgolf_layout, layout_for

    state = in_pgolf_layout(state, expected, args.preset)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    where = args.artifact or args.checkpoint
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        layout = layout_for(args.preset)
        layouts = f"pgolf's layout nor {layout.record}'s" if layout and layout.steps else "pgolf's layout"
        raise PgolfError(f"{where}: weights do not fit preset {args.preset!r} in {layouts} ({detail}); "
                         "pass the right --preset/--set")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise PgolfError(
                f"{where}: {name} has shape {tuple(tensor.shape)}, the config expects {tuple(expected[name].shape)}"
            )
    return state


def _save_npy(path: Path, array) -> None:
    import numpy as np

    from pgolf.files import atomic_target, make_folder

    make_folder(path.parent)
    with atomic_target(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save adds no ".npy"
        np.save(f, array)


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """What to score and on what: the weights, their config, the val shards and tokenizer, the window."""
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--artifact", help="a pgolf artifact, or a record's own final_model.*.ptz (with its --preset)")
    weights.add_argument("--checkpoint", help="a pgolf checkpoint.safetensors, or the reference's or a record's own "
                                               "final_model.pt (with that record's --preset)")
    add_config_arguments(parser, default_preset=None)
    parser.add_argument("--val", help="val shard file, directory or glob (default: the config's DATA_PATH or VAL_FILES)")
    parser.add_argument("--tokenizer", help="SentencePiece .model (default: the config's TOKENIZER_PATH)")
    parser.add_argument("--seq-len", type=int, default=0, help="window length (default: the config's eval/train length)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="score an artifact or checkpoint (exact val_loss and val_bpb)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_weights_arguments(parser)
    parser.add_argument("--batch-tokens", type=int, default=65_536, help="tokens per forward batch (default: 65536)")
    parser.add_argument("--max-tokens", type=int, default=0, help="score only the first N val tokens (default: all)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto)")
    parser.add_argument("--token-losses", metavar="OUT.npy", help="save the per-target loss in nats (float32, stream order)")
    parser.add_argument("--stride", type=int, metavar="STRIDE", help="also score with sliding windows of this stride (EVAL_STRIDE)")
    add_deprecated_spelling(parser, ["--sliding"], "--stride", "stride", type=int)
    parser.add_argument("--doc-isolated", action="store_true", help="sliding/TTT context restarts at every BOS")
    parser.add_argument("--ttt", choices=("sgd", "lora", "phased"), help="also score with score-first TTT (settings: TTT_* via --set)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.set_defaults(handler=_eval)
