"""``build_bundle``: the package, for one resolved configuration, as one ``train_gpt.py``.

Steps: collect the module graph of the entry (:mod:`pgolf.bundle.graph`), write the resolved config
into the entry's ``FROZEN_CONFIG`` literal, inline (:mod:`pgolf.bundle.inline`) while specialising
the code to the config (:mod:`pgolf.bundle.specialise`: folded switches listed in the config's
``FOLDED_FIELDS``, the config schema's defaults set to the resolved values, unread fields left out)
and stripping its input checks (:mod:`pgolf.bundle.checks`), with :data:`pgolf.runtime.TELEMETRY`
folded to False (what only describes a run to the package's tools does not ship) and
:data:`pgolf.runtime.BUNDLED` to True (what finds the package's own files does not either), minify and wrap
(:mod:`pgolf.bundle.wrap`). Both the wrapped script and a readable copy are written atomically.
The fused Triton kernels (:data:`SWITCHED_MODULES`) are carried only when the configuration turns
them on; the script then keeps annotations and registers its source for Triton.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from pgolf.bundle.checks import strip_checks
from pgolf.bundle.graph import Module, collect
from pgolf.bundle.inline import inline
from pgolf.bundle.specialise import (
    SECTION_CLASSES, compact_schema, folded_by_section, folded_envs, schema_compactable, section_fields,
)
from pgolf.bundle.specialise import specialise as specialise_bodies
from pgolf.bundle.wrap import minify, plain_class_annotations, wrap
from pgolf.config import Config, artifact_meta, defaults_fingerprint
from pgolf.errors import PgolfError
from pgolf.files import atomic_write, check_writable

ENTRY = "pgolf.bundle.entry"
FROZEN_NAME = "FROZEN_CONFIG"
PRESET_NAME = "PRESET"
FOLDED_NAME = "FOLDED_FIELDS"  # in the config module
FOLDED_ENV_NAME = "FOLDED_ENV"  # in the entry
CONFIG_MODULE = "pgolf.config"
DELTA_NAME, DEFAULTS_NAME = "BUNDLE_DELTA", "BUNDLE_DEFAULTS"  # in the config module
FIELD_FN = "_f"  # config.py's field helper: _f(default, env, help)
ERRORS_MODULE, ERROR_CLASS = "pgolf.errors", "PgolfError"
TELEMETRY_MODULE, TELEMETRY_NAME = "pgolf.runtime", "TELEMETRY"  # False in a bundle: see pgolf.runtime.TELEMETRY
BUNDLE_CONSTANTS = {TELEMETRY_NAME: False, "BUNDLED": True}  # pgolf.runtime's, as a bundle has them
# Checks a bundle keeps: the size cap (an artifact over it is refused, never written); and all of the
# entry's (it refuses a folded switch set otherwise by env).
KEPT_CHECKS = (("pgolf.export.artifact", "check_under_cap"),)
# Modules that only a switch reaches and whose import alone does something (Triton, custom-op
# registration): a bundle carries one only when its configuration turns the switch on.
SWITCHED_MODULES = {"pgolf.kernels.softcapped_ce": ("train", "fused_ce"), "pgolf.kernels.mlp": ("train", "fused_mlp")}


def left_out_modules(cfg: Config) -> frozenset[str]:
    """The switched modules ``cfg`` leaves off."""
    return frozenset(m for m, (section, name) in SWITCHED_MODULES.items() if not getattr(getattr(cfg, section), name))


@dataclass(frozen=True)
class BundleReport:
    path: str
    readable_path: str
    modules: tuple[str, ...]
    codec: str
    bytes_raw: int  # the inlined, readable source
    bytes_minified: int
    bytes_wrapped: int  # the shipped file: these are the submission's code bytes
    candidates: tuple[tuple[str, int], ...] = ()  # wrapped bytes per codec tried

    def summary(self) -> str:
        return (
            f"{self.path}: {self.bytes_wrapped:,} bytes ({self.codec} of {self.bytes_minified:,} minified bytes in a 124-symbol bytes literal; "
            f"readable {self.bytes_raw:,} bytes in {self.readable_path}); {len(self.modules)} modules"
        )


def _set_literal(body: list[ast.stmt], name: str, value: object) -> bool:
    for node in body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            node.value = ast.parse(repr(value), mode="eval").body
            return True
    return False


def freeze_config(entry: Module, config: Module, cfg: Config) -> None:
    """Replace ``FROZEN_CONFIG = ...`` in the entry with the resolved config as a literal, and
    ``BUNDLE_DEFAULTS`` in the config module with the package's schema defaults' fingerprint (an
    artifact's config is the difference from those: :func:`pgolf.config.artifact_meta`)."""
    if not _set_literal(entry.tree.body, FROZEN_NAME, cfg.to_dict()):
        raise PgolfError(f"{entry.path}: entry module has no top-level {FROZEN_NAME} assignment")
    if not _set_literal(config.tree.body, DEFAULTS_NAME, defaults_fingerprint()):
        raise PgolfError(f"{config.path}: config module has no top-level {DEFAULTS_NAME} assignment")


def _specialiser(cfg: Config, entry: str, tree_shake: bool, strip: list[bool], names: set[str]):
    """The inliner transform that folds ``cfg``'s switches, strips the input checks of the modules
    ``strip`` marks (:mod:`pgolf.bundle.checks`) and compacts the config schema (``names``: the bundle's modules)."""

    def transform(bodies: list[list[ast.stmt]], bundle_name) -> None:
        def stripped(bodies: list[list[ast.stmt]]) -> int:
            keep = frozenset(bundle_name(module, fn) for module, fn in KEPT_CHECKS if module in names)
            return strip_checks([b for b, s in zip(bodies, strip) if s], bundle_name(ERRORS_MODULE, ERROR_CLASS), keep, bodies)

        classes = {section: bundle_name(CONFIG_MODULE, cls) for section, cls in SECTION_CLASSES.items()}
        entry_body = bodies[-1]
        field_fn = bundle_name(CONFIG_MODULE, FIELD_FN)
        compact = schema_compactable(bodies, classes, field_fn)
        if compact:
            # the schema's defaults will be the resolved values: the entry needs only the preset's name
            # (set before folding, so that the frozen-config reader folds away)
            _set_literal(entry_body, bundle_name(entry, FROZEN_NAME), {})
            _set_literal(entry_body, bundle_name(entry, PRESET_NAME), cfg.preset)
            # and an artifact's config, its difference from the package's defaults, starts from the frozen config's
            delta = {s: v for s, v in artifact_meta(cfg)["config"].items() if s != "preset"}
            if not any(_set_literal(b, bundle_name(CONFIG_MODULE, DELTA_NAME), delta) for b in bodies):
                raise PgolfError(f"the bundle has no top-level {DELTA_NAME} assignment ({CONFIG_MODULE})")
        if TELEMETRY_MODULE in names:  # before folding: their tests then fold like a switch's
            for name, value in BUNDLE_CONSTANTS.items():
                if not any(_set_literal(b, bundle_name(TELEMETRY_MODULE, name), value) for b in bodies):
                    raise PgolfError(f"the bundle has no top-level {name} assignment ({TELEMETRY_MODULE})")
        specialise_bodies(bodies, section_fields(cfg, classes), tree_shake, stripped if any(strip) else None)
        if compact:  # before the folded values are written: their field names would read as uses
            compact_schema(bodies, cfg, classes, field_fn, bundle_name(CONFIG_MODULE, "RULES"))
        if not any(_set_literal(b, bundle_name(CONFIG_MODULE, FOLDED_NAME), folded_by_section(cfg)) for b in bodies) \
                or not _set_literal(entry_body, bundle_name(entry, FOLDED_ENV_NAME), folded_envs(cfg)):
            raise PgolfError(f"the bundle has no top-level {FOLDED_NAME} (config) or {FOLDED_ENV_NAME} (entry) assignment")

    return transform


def bundle_source(cfg: Config, entry: str = ENTRY, tree_shake: bool = True, specialise: bool = True,
                  keep_checks: bool = False) -> tuple[str, tuple[str, ...]]:
    """The readable single-file source for ``cfg`` and the modules it contains. ``specialise``
    folds the configuration's switches into the code (see :mod:`pgolf.bundle.specialise`) and,
    unless ``keep_checks``, strips the input checks (:mod:`pgolf.bundle.checks`)."""
    from pgolf import __version__

    left_out = left_out_modules(cfg)
    modules = collect(entry, leave_out=left_out)
    freeze_config(modules[-1], next(m for m in modules if m.name == CONFIG_MODULE), cfg)
    header = f'"""train_gpt.py built by pgolf {__version__} `pgolf bundle` for preset {cfg.preset}; reference env vars override the frozen config."""'
    strip = [not keep_checks and m.name != entry for m in modules]
    transform = _specialiser(cfg, entry, tree_shake, strip, {m.name for m in modules}) if specialise else None
    return inline(modules, header, tree_shake, transform, left_out), tuple(m.name for m in modules)


def readable_path_for(path: Path) -> Path:
    return path.with_name(f"{path.stem}_readable{path.suffix}")


def code_lrzip_default(cfg: Config) -> bool:
    """Whether a bundle tries lrzip for its own code unless told: when its weights go through lrzip,
    since the machine that runs it needs the binary anyway."""
    return "lrzip" in cfg.quant.compressor


def build_bundle(cfg: Config, out: str | os.PathLike[str], entry: str = ENTRY, tree_shake: bool = True,
                 specialise: bool = True, keep_checks: bool = False, lrzip: bool | None = None) -> BundleReport:
    """``lrzip``: also try lrzip's ZPAQ for the code (see :mod:`pgolf.bundle.wrap`); None:
    :func:`code_lrzip_default`."""
    out = Path(out)
    if not out.parent.is_dir():
        raise PgolfError(f"{out}: folder {out.parent} does not exist")
    check_writable(out.parent, "bundle folder")
    source, modules = bundle_source(cfg, entry, tree_shake, specialise, keep_checks)
    compile(source, str(out), "exec")  # a bundling bug must fail here, not on the training machine
    # Triton kernels read their parameters' annotations and, through inspect, their own source
    kernels = any(m in SWITCHED_MODULES for m in modules)
    # (the schema's classes keep theirs: the config parses env values by them)
    small = minify(source if kernels else plain_class_annotations(source, frozenset(SECTION_CLASSES.values())),
                   keep_annotations=kernels)
    wrapped = wrap(small, register_source=kernels, lrzip=code_lrzip_default(cfg) if lrzip is None else lrzip)
    readable = readable_path_for(out)
    atomic_write(readable, source.encode())
    atomic_write(out, wrapped.script.encode())
    return BundleReport(
        str(out), str(readable), modules, wrapped.codec,
        len(source.encode()), len(small.encode()), len(wrapped.script.encode()), wrapped.sizes,
    )
