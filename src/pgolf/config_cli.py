"""``pgolf config show|presets``: print the resolved configuration or the list of presets."""

from __future__ import annotations

import argparse
import json


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str = "baseline") -> None:
    """The --preset/--set pair every config-taking verb shares."""
    default_text = default_preset or "the config stored in the weights, else baseline"
    parser.add_argument("--preset", default=default_preset, help=f"preset name or .toml file (default: {default_text})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a field: section.field=value or a reference env name, e.g. NUM_LAYERS=11 (repeatable)",
    )


def config_from_args(args: argparse.Namespace):
    from pgolf.presets import build_config

    return build_config(args.preset, args.overrides)


def _show(args: argparse.Namespace) -> int:
    from pgolf.config import iter_fields

    cfg = config_from_args(args)
    if args.json:
        print(cfg.to_json())
        return 0
    print(f"# preset: {cfg.preset}")
    for section, f in iter_fields(cfg):
        value = getattr(getattr(cfg, section), f.name)
        env = f.metadata.get("env") or ""
        print(f"{section}.{f.name:<28} = {json.dumps(value):<40} {env:<28} # {f.metadata.get('help', '')}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from pgolf.presets import PRESET_SOURCES

    if args.json:
        print(json.dumps(dict(sorted(PRESET_SOURCES.items()))))
        return 0
    for name, source in sorted(PRESET_SOURCES.items()):
        print(f"{name:<16} {source}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="show the resolved configuration or list presets",
                                   description="Show a resolved configuration (preset, then the reference env vars, then "
                                   "--set) or list the built-in presets.")
    sub = parser.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print every field after preset, environment and --set overrides",
                          description="Every config field after the preset, the environment and --set overrides: its "
                          "value, its reference env var name and what it does.")
    add_config_arguments(show)
    show.add_argument("--json", action="store_true", help="print the config as JSON")
    show.set_defaults(handler=_show)
    presets = sub.add_parser("presets", help="list the built-in presets and their source records",
                             description="The built-in presets, each with the record it reproduces and that record's score.")
    presets.add_argument("--json", action="store_true", help="print preset -> source as JSON")
    presets.set_defaults(handler=_presets)
