"""Specialise the inlined bundle to its configuration: folded switches, pruned code, a lean schema.

The configuration is known when the bundle is built, so the features it leaves off need not ship.
**Which fields are folded** (:func:`folded_fields`): the feature switches, meaning every boolean
field, the technique-choice strings in :data:`CHOICE_FIELDS`, and the numeric switches in
:data:`OFF_SWITCHES` while they are at their "off" value 0. Everything else stays dynamic, so the
reference env vars still change it at run time: numeric hyperparameters (``ITERATIONS``, ``SEED``,
learning rates, ``MAX_WALLCLOCK_SECONDS``, sizes), paths, and the run-environment choices
(``PGOLF_DEVICE``, ``PGOLF_COMPILE``, ``PGOLF_ATTN_BACKEND``). A folded field's env var can no
longer change the code; the bundle entry refuses, with one line, a run whose env sets it to another
value (:func:`pgolf.bundle.entry.check_folded`).

**How** (:func:`specialise`): reads of a folded field through a receiver whose type is known to be
that config section (:mod:`pgolf.bundle.types`) become literals; constant propagation
(:mod:`pgolf.bundle.propagate`) carries them into locals, arguments, instance attributes and
dataclass fields; :mod:`pgolf.bundle.trivial` inlines the calls that became trivial and lets module
constants decide tests; :mod:`pgolf.bundle.simplify` prunes the branches they decide; repeated to a
fixed point. A field stored anywhere in the bundle (``x.field = ...``) is never folded, unless every
store is the literal it folds to. The tree shaker then drops what became unreachable.
:func:`compact_schema` rewrites the config dataclasses with the frozen values as defaults, without
help strings (the bundle has no CLI to show them), with only the fields the code still reads (a
folded switch is recorded in :data:`pgolf.config.FOLDED_FIELDS` instead; a field of a technique the
configuration leaves off would change nothing) and checks only for those.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from pgolf.bundle.names import walk
from pgolf.bundle.shake import drop_overridden_methods, shake, shake_methods
from pgolf.bundle.propagate import (
    dataclass_field_constants, drop_dead_pure_stores, drop_unread_constant_attributes, drop_empty_kwargs, drop_unused_parameters, literal_node, name_uses, propagate_arguments, propagate_locals,
    propagate_method_arguments,
    propagate_self_attributes, self_attribute_constants,
)
from pgolf.bundle.simplify import is_const, simplify
from pgolf.bundle.trivial import inline_trivial_calls, substitute_constants_in_tests
from pgolf.bundle.types import Types
from pgolf.config import SECTIONS, Config, iter_fields

# str fields that pick an implementation (validated against a fixed set of choices).
CHOICE_FIELDS = {
    ("model", "mlp_activation"), ("model", "bigram_hash"), ("model", "parallel_final_lane"),
    ("model", "logit_softcap_kind"), ("optim", "muon_ns_schedule"), ("train", "loader"), ("eval", "ttt"),
    ("quant", "scheme"), ("quant", "compressor"), ("quant", "serializer"), ("eval", "ttt_lora_init"),
    ("quant", "gptq_calibration_loader"),
}
# Numeric fields whose 0 switches a technique off; folded only while 0, so a technique that is on
# keeps its hyperparameter tunable.
OFF_SWITCHES = {
    ("model", "mlp_hidden"), ("model", "xsa_last_n"), ("model", "rope_dims"), ("model", "bigram_vocab_size"),
    ("model", "num_loops"), ("model", "parallel_start_layer"), ("model", "z_loss"), ("model", "embed_dim"),
    ("optim", "grad_clip_norm"), ("optim", "muon_wd"), ("optim", "embed_wd"), ("optim", "adam_wd"),
    ("train", "ema_decay"), ("train", "warmdown_frac"), ("train", "min_lr"), ("train", "enable_looping_at"), ("train", "warmup_skip_batches"),
    ("eval", "eval_stride"), ("eval", "ttt_min_doc_len"), ("eval", "ttt_weight_decay"), ("quant", "late_qat_threshold"), ("quant", "stream_shuffle"),
}
MAX_ROUNDS = 12

SECTION_CLASSES = {"data": "DataConfig", "model": "ModelConfig", "optim": "OptimConfig", "train": "TrainConfig",
                   "eval": "EvalConfig", "quant": "QuantConfig"}


def folded_fields(cfg: Config) -> dict[tuple[str, str], Any]:
    """(section, field) -> value for every field the bundle for ``cfg`` folds into its code."""
    out = {}
    for section, f in iter_fields(cfg):
        value = getattr(getattr(cfg, section), f.name)
        key = (section, f.name)
        if isinstance(value, bool) or key in CHOICE_FIELDS or (key in OFF_SWITCHES and value == 0):
            out[key] = value
    return out


def folded_by_section(cfg: Config) -> dict[str, dict[str, Any]]:
    """Section -> field -> value of every folded field, each of its field's type (``0`` of a float field
    is ``0.0``): what the bundle entry checks env vars against, and what its recorded config adds to the
    schema (:data:`pgolf.config.FOLDED_FIELDS`)."""
    types = {(section, f.name): f.type for section, f in iter_fields(cfg)}
    out: dict[str, dict[str, Any]] = {}
    for (section, name), value in folded_fields(cfg).items():
        out.setdefault(section, {})[name] = float(value) if types[(section, name)] == "float" else value
    return out


def folded_envs(cfg: Config) -> dict[str, str]:
    """Field -> env name of the folded fields whose env name is not the field's name upper-cased; an
    env name that is a prefix and the field's name upper-cased (``PGOLF_LOADER``) is given as the
    prefix only (``PGOLF_``, ending in ``_``, as no env name does): :func:`pgolf.bundle.entry.folded_env` reads both."""
    folded = folded_fields(cfg)
    envs = {f.name: f.metadata["env"] for section, f in iter_fields(cfg)
            if (section, f.name) in folded and f.metadata["env"] != f.name.upper()}
    return {name: env.removesuffix(name.upper()) if env.endswith("_" + name.upper()) else env for name, env in envs.items()}


class _FoldReads(ast.NodeTransformer):
    """Replace reads of known-constant fields through receivers of known type, within one scope."""

    def __init__(self, types: Types, constants: dict[str, dict[str, Any]], env: dict[str, str]):
        self.types, self.constants, self.env = types, constants, env
        self.count = 0

    def visit_Attribute(self, node: ast.Attribute):
        self.generic_visit(node)
        if not isinstance(node.ctx, ast.Load):
            return node
        owner = self.types.type_of(node.value, self.env)
        table = self.constants.get(owner or "")
        if table is None or node.attr not in table or self.types.stored(owner, node.attr, unless=table[node.attr]):
            return node
        self.count += 1
        return literal_node(table[node.attr], node)  # a tuple as a tuple display, which the simplifier knows

    def _shadowed(self, node, names):
        saved = self.env
        self.env = {k: v for k, v in saved.items() if k not in names}
        self.generic_visit(node)
        self.env = saved
        return node

    def visit_Lambda(self, node: ast.Lambda):
        a = node.args
        return self._shadowed(node, {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p})

    def _comprehension(self, node):
        names = {n.id for g in node.generators for n in walk(g.target) if isinstance(n, ast.Name)}
        return self._shadowed(node, names)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_FunctionDef(self, node):
        return node  # a nested function has its own environment: folded on its own

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef


def _fold_reads(bodies: list[list[ast.stmt]], types: Types, constants: dict[str, dict[str, Any]]) -> int:
    total = 0
    seen: set[int] = set()
    for body in bodies:
        for node in walk(ast.Module(body=body, type_ignores=[])):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and id(node) in types.envs and id(node) not in seen:
                seen.add(id(node))
                folder = _FoldReads(types, constants, types.envs[id(node)])
                for stmt in node.body:
                    folder.visit(stmt)
                total += folder.count
    return total


def _drop_unreachable(bodies: list[list[ast.stmt]]) -> None:
    for body, kept in zip(bodies, shake(bodies)):
        body[:] = kept
    drop_overridden_methods(bodies)
    shake_methods(bodies)


def specialise(bodies: list[list[ast.stmt]], fields: dict[str, dict[str, Any]], tree_shake: bool = False,
               after_folding: Callable[[list[list[ast.stmt]]], int] | None = None) -> int:
    """Fold ``fields`` (bundle class name -> field -> value) and everything they decide; returns the
    number of rewrites. ``bodies`` are the inlined module bodies, changed in place. ``tree_shake``:
    drop unreachable definitions before each round, so that calls from dead code do not keep a
    parameter from being propagated. ``after_folding(bodies)`` (returning its number of rewrites)
    runs once the folding has converged, and the folding then runs again on what it left: the input
    checks go there (:mod:`pgolf.bundle.checks`), after a switched-off path has become unreachable
    through the check that refuses it."""
    total = _fold_to_fixed_point(bodies, fields, tree_shake)
    if after_folding is not None and after_folding(bodies):
        total += _fold_to_fixed_point(bodies, fields, tree_shake)
    return total


def _fold_to_fixed_point(bodies: list[list[ast.stmt]], fields: dict[str, dict[str, Any]], tree_shake: bool) -> int:
    total = 0
    for _ in range(MAX_ROUNDS):
        if tree_shake:
            _drop_unreachable(bodies)
        types = Types(bodies)
        uses = name_uses(bodies)
        constants = {cls: dict(values) for cls, values in fields.items()}
        for cls, values in dataclass_field_constants(bodies, types, uses).items():
            constants.setdefault(cls, {}).update(values)
        for cls, values in self_attribute_constants(bodies, types).items():
            constants[cls] = {**values, **constants.get(cls, {})}
        changed = _fold_reads(bodies, types, constants)
        changed += propagate_arguments(bodies, types, uses)
        changed += propagate_method_arguments(bodies)
        changed += drop_empty_kwargs(bodies, uses)
        changed += drop_unused_parameters(bodies, types, uses)
        changed += propagate_self_attributes(bodies, types)
        changed += drop_unread_constant_attributes(bodies, types)
        changed += propagate_locals(bodies)
        changed += inline_trivial_calls(bodies, uses)  # the round's uses: stale only towards caution
        changed += substitute_constants_in_tests(bodies)
        changed += drop_dead_pure_stores(bodies)
        changed += int(simplify(bodies))
        total += changed
        if not changed:
            break
    return total


def section_fields(cfg: Config, class_names: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Folded fields keyed by the bundle's name of each section class (``class_names``: section -> name)."""
    out: dict[str, dict[str, Any]] = {}
    for (section, name), value in folded_fields(cfg).items():
        out.setdefault(class_names[section], {})[name] = value
    return out


def _attributes_read(bodies: list[list[ast.stmt]]) -> set[str]:
    return {n.attr for body in bodies for stmt in body for n in walk(stmt)
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load)}


def _schema_calls(bodies: list[list[ast.stmt]], class_names: dict[str, str], field_fn: str):
    """(the field function, [(section, field name, its ``field_fn(...)`` call)], last section class),
    or None when the schema does not have the shape :func:`compact_schema` rewrites."""
    fn = next((s for body in bodies for s in body if isinstance(s, ast.FunctionDef) and s.name == field_fn), None)
    if fn is None or [a.arg for a in fn.args.args] != ["default", "env", "help", "check"]:
        return None
    calls: list[tuple[str, str, ast.Call]] = []
    cls = None
    for section in SECTIONS:
        cls = next((s for body in bodies for s in body if isinstance(s, ast.ClassDef) and s.name == class_names[section]), None)
        if cls is None:
            return None
        for stmt in cls.body:
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                continue
            call = stmt.value
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == field_fn
                    and len(call.args) in (3, 4) and not call.keywords):
                return None
            calls.append((section, stmt.target.id, call))
    return fn, calls, cls


def schema_compactable(bodies: list[list[ast.stmt]], class_names: dict[str, str], field_fn: str) -> bool:
    return _schema_calls(bodies, class_names, field_fn) is not None


def compact_schema(bodies: list[list[ast.stmt]], cfg: Config, class_names: dict[str, str], field_fn: str,
                   rules_name: str = "RULES") -> bool:
    """Rewrite ``field_fn(default, env, help[, check])`` in the section dataclasses as
    ``field_fn(value, env, check)`` with the resolved value; ``env`` becomes None where it is the
    field's name upper-cased (a statement after the classes fills those in), and ``check`` is kept
    only for a field the bundle's code still reads (a folded or unused field's value changes nothing,
    so checking it is dead code), and not at all when nothing but ``field_fn`` names ``"check"`` (the
    input checks were stripped: :mod:`pgolf.bundle.checks`); trailing Nones go. The ``help`` parameter leaves ``field_fn``, and
    the rules no kept check names leave the ``rules_name`` dict. Run it after folding.
    False (nothing changed) when the schema does not have that shape (:func:`schema_compactable`)."""
    found = _schema_calls(bodies, class_names, field_fn)
    if found is None:
        return False
    fn, section_calls, last_cls = found
    calls = []
    for section, name, call in section_calls:
        call.parent_name = name  # type: ignore[attr-defined]
        calls.append((call, getattr(getattr(cfg, section), name)))
    read = _attributes_read(bodies) | _strings_outside(bodies, classes_of(bodies, class_names))
    # with the input checks stripped, nothing but the field function itself names "check": the checks go too
    checks_read = "check" in _strings_outside(bodies, [*classes_of(bodies, class_names), fn])
    checks = {f.name: f.metadata.get("check") for _, f in iter_fields(cfg)} if checks_read else {}
    kept_rules: set[str] = set()
    _drop_unread_fields(bodies, class_names, read)
    calls = [(call, value) for call, value in calls if call.parent_name in read]  # type: ignore[attr-defined]
    for call, value in calls:
        env = call.args[1]
        name = call.parent_name  # type: ignore[attr-defined]
        if isinstance(env, ast.Constant) and env.value == name.upper():
            env = ast.Constant(None)
        check = checks.get(name) if name in read else None
        if isinstance(check, str):
            kept_rules.add(check)
        args = [ast.Constant(value), env, _literal(check)]
        while len(args) > 1 and isinstance(args[-1], ast.Constant) and args[-1].value is None:
            args.pop()
        call.args = [ast.copy_location(a, call.args[0]) for a in args]
    dropped = {"help"} if checks_read else {"help", "check"}
    fn.args.args = [a for a in fn.args.args if a.arg not in dropped]
    fn.args.defaults = [ast.Constant(None)] * (len(fn.args.args) - 1)  # env None: the field's name upper-cased (set below)
    classes = ", ".join(class_names[s] for s in SECTIONS)
    fixup = ast.parse(
        f"for _schema_cls in ({classes}):\n"
        "    for _schema_field in _schema_cls.__dataclass_fields__.values():\n"
        "        _schema_field.metadata = {**_schema_field.metadata, 'env': _schema_field.metadata['env'] or _schema_field.name.upper()}\n"
    ).body
    for body in bodies:
        if last_cls in body:
            body[body.index(last_cls) + 1:body.index(last_cls) + 1] = fixup
            break
    for node in walk(fn):
        if isinstance(node, ast.Dict):
            _drop_keys(node, lambda key: key in dropped)
    rules = next((s for body in bodies for s in body if isinstance(s, ast.Assign) and len(s.targets) == 1
                  and isinstance(s.targets[0], ast.Name) and s.targets[0].id == rules_name and isinstance(s.value, ast.Dict)), None)
    if rules is not None:
        _drop_keys(rules.value, lambda key: key not in kept_rules)
    return True


def classes_of(bodies: list[list[ast.stmt]], class_names: dict[str, str]) -> list[ast.ClassDef]:
    wanted = set(class_names.values())
    return [s for body in bodies for s in body if isinstance(s, ast.ClassDef) and s.name in wanted]


def _strings_outside(bodies: list[list[ast.stmt]], skip: list[ast.ClassDef]) -> set[str]:
    """String constants of the bundle outside the ``skip`` classes (a field may be looked up by name)."""
    return {n.value for body in bodies for s in body if s not in skip for n in walk(s)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _drop_unread_fields(bodies: list[list[ast.stmt]], class_names: dict[str, str], read: set[str]) -> None:
    """Leave out of the section classes every field the code never reads: a folded switch (its reads
    became literals; :data:`pgolf.config.FOLDED_FIELDS` keeps it in the recorded config) or a field
    of a technique this configuration does not run (its env var would change nothing)."""
    for cls in classes_of(bodies, class_names):
        cls.body = [s for s in cls.body if not (isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                                                and s.target.id not in read)] or [ast.Pass()]


def _literal(value: Any) -> ast.expr:
    return ast.Tuple([ast.Constant(v) for v in value], ast.Load()) if isinstance(value, tuple) else ast.Constant(value)


def _drop_keys(node: ast.Dict, drop) -> None:
    pairs = [(k, v) for k, v in zip(node.keys, node.values) if not (is_const(k) and drop(k.value))]
    node.keys, node.values = [k for k, _ in pairs], [v for _, v in pairs]
