"""Inline a module graph into one source file: pgolf imports stripped, third-party imports hoisted.

Each module's top-level names become globals of the one file. A name defined by two modules (or
clashing with a hoisted import) is renamed in the later module, ``name`` -> ``name_<module>``, and in
every module that imports it; an import alias (``from pgolf.x import a as b``) is resolved the same
way. Renaming is refused, loudly, where it could change meaning: when the name is also a function
parameter (keyword calls would break) or a class attribute in that module.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from pgolf.bundle.graph import Module, absolute_module, is_package_module
from pgolf.bundle.names import import_bindings, top_level_definitions
from pgolf.bundle.shake import shake, shake_imports
from pgolf.errors import PgolfError


@dataclass
class _Prepared:
    module: Module
    tree: ast.Module
    hoisted: list[ast.stmt] = field(default_factory=list)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)
    defined: list[str] = field(default_factory=list)  # top-level names it defines itself
    rename: dict[str, str] = field(default_factory=dict)
    hoist_rename: dict[str, str] = field(default_factory=dict)  # hoisted name aliased to avoid a clash


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    left, comparators = node.test.left, node.test.comparators
    return (
        isinstance(left, ast.Name) and left.id == "__name__" and len(comparators) == 1
        and isinstance(comparators[0], ast.Constant) and comparators[0].value == "__main__"
    )


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


class _StripPackageImports(ast.NodeTransformer):
    """Remove every pgolf import (recording what it bound); keep bodies non-empty."""

    def __init__(self, prep: _Prepared, left_out: frozenset[str]):
        self.prep = prep
        self.is_init = prep.module.path.name == "__init__.py"
        self.left_out = left_out

    def visit_ImportFrom(self, node: ast.ImportFrom):
        target = absolute_module(node, self.prep.module.name, self.is_init)
        if target in self.left_out:
            # fail as a missing module would, rather than fall back on an installed pgolf of another version
            return ast.parse(f"raise ImportError({target + ' is not in this bundle'!r})").body[0]
        if not is_package_module(target):
            return node
        for alias in node.names:
            self.prep.imports[alias.asname or alias.name] = (target, alias.name)
        return None

    def generic_visit(self, node):
        super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and not body and name == "body" and not isinstance(node, ast.Module):
                body.append(ast.Pass())
        return node


def prepare(module: Module, is_entry: bool, left_out: frozenset[str] = frozenset()) -> _Prepared:
    tree = copy.deepcopy(module.tree)
    prep = _Prepared(module, tree)
    body = tree.body[1:] if tree.body and _is_docstring(tree.body[0]) else tree.body
    kept: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if _is_main_guard(node) and not is_entry:
            continue  # a library module's own script mode is not part of the bundle
        if isinstance(node, ast.Import) and not any(is_package_module(a.name) for a in node.names):
            prep.hoisted.append(node)
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and not is_package_module(node.module):
            prep.hoisted.append(node)
            continue
        kept.append(node)
    tree.body = kept
    _StripPackageImports(prep, left_out).visit(tree)
    prep.defined = top_level_definitions(tree.body)
    return prep


def hoist(preps: list[_Prepared]) -> tuple[list[str], dict[str, str]]:
    """Deduplicated hoisted import lines and the names they bind. When two modules bind one name to
    different things (``typing.Mapping`` vs ``collections.abc.Mapping``) the later import gets an
    alias, ``Mapping as Mapping_<module>``, and that module is renamed to match."""
    lines: list[str] = []
    bound: dict[str, str] = {}
    for prep in preps:
        tag = prep.module.name.split(".")[-1]
        for node in prep.hoisted:
            node = copy.deepcopy(node)
            for alias, (name, target) in zip(node.names, import_bindings(node).items()):
                if bound.setdefault(name, target) == target:
                    continue
                new = f"{name}_{tag}"
                if bound.setdefault(new, target) != target or "." in alias.name and isinstance(node, ast.Import) and not alias.asname:
                    raise PgolfError(f"{prep.module.path}: import binds {name!r} to {target}, another module binds it to {bound[name]}")
                alias.asname = new
                prep.hoist_rename[name] = new
            line = ast.unparse(node)
            if line not in lines:
                lines.append(line)
    return lines, bound


def assign_names(preps: list[_Prepared], reserved: set[str]) -> dict[tuple[str, str], str]:
    """(module, name) -> its name in the bundle, unique across the bundle."""
    taken = set(reserved)
    names: dict[tuple[str, str], str] = {}
    for prep in preps:
        tag = prep.module.name.split(".")[-1]
        for name in prep.defined:
            new = name
            suffix = 0
            while new in taken:
                suffix += 1
                new = f"{name}_{tag}" + (str(suffix) if suffix > 1 else "")
            taken.add(new)
            names[(prep.module.name, name)] = new
    return names


def _resolve(module: str, name: str, by_name: dict[str, _Prepared], names, hoisted: dict[str, str], seen=()) -> str:
    key = (module, name)
    if key in names:
        return names[key]
    prep = by_name.get(module)
    if prep is None:
        raise PgolfError(f"module {module} is not in the bundle")
    if name in prep.imports and key not in seen:
        return _resolve(*prep.imports[name], by_name, names, hoisted, seen + (key,))
    if any(isinstance(n, (ast.Import, ast.ImportFrom)) and name in import_bindings(n) for n in prep.hoisted):
        return prep.hoist_rename.get(name, name)
    raise PgolfError(f"{prep.module.path}: has no top-level name {name!r} to import")


def _unsafe_names(tree: ast.Module) -> set[str]:
    """Names that renaming could break: parameters (keyword calls) and class-body attributes."""
    unsafe: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            unsafe.add(node.arg)
        elif isinstance(node, ast.ClassDef):
            unsafe.update(top_level_definitions(node.body))
    return unsafe


class _Rename(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]):
        self.mapping = mapping

    def visit_Name(self, node: ast.Name):
        node.id = self.mapping.get(node.id, node.id)
        return node

    def _visit_def(self, node):
        node.name = self.mapping.get(node.name, node.name)
        return self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _visit_def

    def visit_Global(self, node: ast.Global):
        node.names = [self.mapping.get(n, n) for n in node.names]
        return node

    visit_Nonlocal = visit_Global


def rename_all(preps: list[_Prepared], names, hoisted: dict[str, str]) -> None:
    by_name = {p.module.name: p for p in preps}
    for prep in preps:
        mapping = {n: names[(prep.module.name, n)] for n in prep.defined}
        mapping.update(prep.hoist_rename)
        for local, (module, name) in prep.imports.items():
            mapping[local] = _resolve(module, name, by_name, names, hoisted)
        mapping = {k: v for k, v in mapping.items() if k != v}
        clash = sorted(set(mapping) & _unsafe_names(prep.tree))
        if clash:
            raise PgolfError(
                f"{prep.module.path}: top-level name(s) {', '.join(clash)} must be renamed in the bundle "
                f"(-> {', '.join(mapping[c] for c in clash)}) but are also parameters or class attributes; rename them in the source"
            )
        if mapping:
            _Rename(mapping).visit(prep.tree)
        prep.rename = mapping


def check_unique(preps: list[_Prepared], hoisted: dict[str, str]) -> None:
    """Final guard: no global of the bundle is bound by two modules."""
    owner: dict[str, str] = {name: "hoisted imports" for name in hoisted}
    for prep in preps:
        for name in top_level_definitions(prep.tree.body):
            if owner.setdefault(name, prep.module.name) != prep.module.name:
                raise PgolfError(f"bundle global {name!r} is bound by both {owner[name]} and {prep.module.name}")


Transform = Callable[[list[list[ast.stmt]], Callable[[str, str], str]], None]


def inline(modules: list[Module], header: str = "", tree_shake: bool = True, transform: Transform | None = None,
           left_out: frozenset[str] = frozenset()) -> str:
    """One source file from ``modules`` (dependencies first, entry last), unreachable definitions
    dropped unless ``tree_shake`` is false. ``transform(bodies, bundle_name)`` may rewrite the
    inlined module bodies in place before shaking; ``bundle_name(module, name)`` is the name a
    module's top-level definition has in the bundle. An import of a ``left_out`` module (inside a
    function: see :func:`pgolf.bundle.graph.collect`) becomes ``raise ImportError(...)``."""
    preps = [prepare(m, is_entry=(i == len(modules) - 1), left_out=left_out) for i, m in enumerate(modules)]
    lines, hoisted = hoist(preps)
    names = assign_names(preps, set(hoisted))
    rename_all(preps, names, hoisted)
    check_unique(preps, hoisted)
    if transform is not None:
        bodies = [p.tree.body for p in preps]
        transform(bodies, lambda module, name: names[(module, name)])
        for prep, body in zip(preps, bodies):
            prep.tree.body = body
    if tree_shake:
        for prep, body in zip(preps, shake([p.tree.body for p in preps])):
            prep.tree.body = body
        lines = shake_imports(lines, [p.tree.body for p in preps])
    parts = [header] if header else []
    parts += ["from __future__ import annotations", *lines]
    for prep in preps:
        if prep.tree.body:
            parts.append(f"\n# ---- {prep.module.name} ----\n" + ast.unparse(prep.tree))
    return "\n".join(parts) + "\n"
