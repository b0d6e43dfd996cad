"""Which names a statement binds: the vocabulary the inliner and the tree shaker share."""

from __future__ import annotations

import ast


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
        for node in ast.walk(target):
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
