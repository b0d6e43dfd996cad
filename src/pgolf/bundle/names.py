"""Which names a statement binds: the vocabulary the inliner and the tree shaker share."""

from __future__ import annotations

import ast
from collections import deque
from typing import Iterator


# Fields that never hold a node (names, flags, the Load/Store/Del markers): skipped by the walkers.
_SCALAR_FIELDS = {"ctx", "id", "attr", "arg", "module", "level", "kind", "type_comment", "is_async", "simple",
                  "conversion", "name", "kwd_attrs"}
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _child_fields(cls: type) -> tuple[str, ...]:
    fields = _CHILD_FIELDS.get(cls)
    if fields is None:
        scalar = _SCALAR_FIELDS | ({"names"} if cls in (ast.Global, ast.Nonlocal) else set())
        fields = _CHILD_FIELDS[cls] = () if cls is ast.Constant else tuple(f for f in cls._fields if f not in scalar)
    return fields


def children(node: ast.AST) -> list[ast.AST]:
    """``ast.iter_child_nodes`` (same order) without the Load/Store/Del markers, which nothing here
    asks for, and without looking into fields that never hold a node."""
    out: list[ast.AST] = []
    for name in _child_fields(type(node)):
        value = getattr(node, name, None)
        if isinstance(value, list):
            out.extend([item for item in value if isinstance(item, ast.AST)])
        elif isinstance(value, ast.AST):
            out.append(value)
    return out


def walk(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` (the same breadth-first order) without the context markers: the bundler walks the
    whole program many times per build, and this is most of its time."""
    todo = deque([node])
    while todo:
        n = todo.popleft()
        yield n
        todo.extend(children(n))


def names_read(node: ast.AST) -> set[str]:
    """The names ``node`` reads anywhere inside it: loads, deletions (``del x`` needs ``x`` bound) and
    the targets of augmented assignments (``n += 1`` reads ``n``, though its target is a Store)."""
    out = set()
    for n in walk(node):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
            out.add(n.target.id)
    return out


def import_bindings(node: ast.Import | ast.ImportFrom) -> dict[str, str]:
    """Names an import statement binds -> the fully qualified thing each is bound to."""
    out = {}
    for alias in node.names:
        if isinstance(node, ast.ImportFrom):
            out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif alias.asname:
            out[alias.asname] = alias.name
        else:
            first = alias.name.split(".")[0]
            out[first] = first
    return out


def _bound_names(targets) -> list[str]:
    names = []
    for target in targets:
        for node in walk(target):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.append(node.id)
    return names


def top_level_definitions(body: list[ast.stmt]) -> list[str]:
    """Names bound at module level by definitions, assignments and (non-hoisted) imports."""
    names: list[str] = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += _bound_names(node.targets)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            names += _bound_names([node.target])
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            names += _bound_names([node.target]) + top_level_definitions(node.body + node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            names += _bound_names([i.optional_vars for i in node.items if i.optional_vars]) + top_level_definitions(node.body)
        elif isinstance(node, ast.If):
            names += top_level_definitions(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [s for h in node.handlers for s in h.body]
            names += [h.name for h in node.handlers if h.name]
            names += top_level_definitions(node.body + handlers + node.orelse + node.finalbody)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names += list(import_bindings(node))
    return list(dict.fromkeys(names))


def names_bound_by(node: ast.AST) -> list[str]:
    """The names one node binds where it stands. ``global``/``nonlocal`` names come twice, so that a
    count of bindings never takes them for names bound once."""
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        return [node.id]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)):
        return [node.name] if node.name else []
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return list(node.names) * 2
    return []
