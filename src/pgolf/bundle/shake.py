"""Tree shaking: drop top-level definitions that nothing the bundle runs can reach.

Works on the inlined modules, where every global name is unique. Roots are the statements that
run for effect: any statement that binds no global name (the entry's ``__main__`` block, a
registry update such as ``TABLE[key] = fn``), and any statement that calls a bundle function while
the module executes (a registering decorator, ``X = register(...)``, a call in a class body;
constructing a plain ``@dataclass`` does not count).
From the roots, every global name a kept statement mentions (anywhere inside it: bodies,
defaults) keeps every statement that binds that name. Annotations do not count: the bundle is
compiled with ``from __future__ import annotations``, so they stay unevaluated strings (the config
schema's, which are read, name only builtins). Imports are kept; of the hoisted import lines,
:func:`shake_imports` then drops the standard-library names nothing kept uses (importing ``typing``
or ``contextlib`` has no effect the bundle relies on; a third-party import may register something,
so it stays, but for :data:`SIDE_EFFECT_FREE_IMPORTS`) and merges the ``from M import`` lines per module.
Code that looks names up by string (``globals()``, ``sys.modules[__name__]``) turns shaking off.
:func:`shake_methods` then drops the methods that nothing names (see its docstring for what is kept).
:func:`drop_overridden_methods` drops those of a class nothing instantiates that every derived class overrides.
"""

from __future__ import annotations

import ast
import sys

from pgolf.bundle.names import children, import_bindings, top_level_definitions, walk

_DYNAMIC_LOOKUPS = {"globals", "vars", "eval", "exec", "__import__"}
_READING_METHODS = {"values", "keys", "items", "get"}  # of dicts: no effects, no bundle code runs


def _names_loaded(node: ast.AST) -> set[str]:
    return {n.id for n in walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_NEW_SCOPES = (*_FUNCTIONS, ast.ClassDef)


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    a = fn.args
    return {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p is not None}


def _evaluated_outside(node: ast.AST) -> list[ast.AST]:
    """The parts of a def, lambda or class evaluated in the enclosing scope (annotations never are)."""
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]
    a = node.args
    outside = [*a.defaults, *(d for d in a.kw_defaults if d is not None)]
    return outside if isinstance(node, ast.Lambda) else [*node.decorator_list, *outside]


def _local_names(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    """Names certainly local to ``fn``: its parameters and what its own body binds (assignments,
    imports, defs, ``except ... as``), less those it declares ``global`` or ``nonlocal``.
    Comprehension targets are left out (their own scope); missing a binding only keeps more code."""
    names, declared = _parameters(fn), set()
    pending = list(fn.body) if isinstance(fn.body, list) else [fn.body]
    while pending:
        n = pending.pop()
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            declared.update(n.names)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update(import_bindings(n))
        elif isinstance(n, ast.ExceptHandler) and n.name:
            names.add(n.name)
        if isinstance(n, _NEW_SCOPES):
            if not isinstance(n, ast.Lambda):
                names.add(n.name)
            pending.extend(_evaluated_outside(n))
        elif isinstance(n, ast.comprehension):
            pending.extend([n.iter, *n.ifs])
        else:
            pending.extend(children(n))
    return names - declared


def _names_used(node: ast.AST) -> set[str]:
    """Global names ``node`` reads: loads, deletions and augmented assignments, less those of a name local to the function they are in
    (a parameter ``segments`` does not keep a global ``segments``), not counting annotations
    (never evaluated in the bundle)."""
    out: set[str] = set()
    pending: list[tuple[ast.AST, frozenset[str]]] = [(node, frozenset())]
    while pending:
        n, shadowed = pending.pop()
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store) and n.id not in shadowed:
            out.add(n.id)
        if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name) and n.target.id not in shadowed:
            out.add(n.target.id)  # ``COUNT += 1`` under ``global COUNT`` reads the global
        if isinstance(n, _FUNCTIONS):
            pending.extend((part, shadowed) for part in _evaluated_outside(n))
            inner = shadowed | _local_names(n)
            pending.extend((stmt, inner) for stmt in (n.body if isinstance(n.body, list) else [n.body]))
            continue
        for name, value in ast.iter_fields(n):
            if name in ("annotation", "returns"):
                continue
            if isinstance(value, ast.AST):
                pending.append((value, shadowed))
            elif isinstance(value, list):
                pending.extend((v, shadowed) for v in value if isinstance(v, ast.AST))
    return out


def _module_time_nodes(stmt: ast.stmt):
    """Sub-nodes evaluated when the statement runs at import time (function bodies excluded)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        yield from stmt.decorator_list
        yield from stmt.args.defaults
        yield from (d for d in stmt.args.kw_defaults if d is not None)
        return
    if isinstance(stmt, ast.ClassDef):
        yield from stmt.decorator_list
        yield from stmt.bases
        yield from (k.value for k in stmt.keywords)
        for inner in stmt.body:
            yield from _module_time_nodes(inner)
        return
    yield stmt


def _plain_dataclasses(stmts: list[ast.stmt]) -> set[str]:
    """Names of ``@dataclass`` classes with no base, no ``__init__``/``__post_init__`` and no
    decorator besides: constructing one runs no bundle code beyond storing its fields."""
    out = set()
    for s in stmts:
        if not isinstance(s, ast.ClassDef) or s.bases or s.keywords or len(s.decorator_list) != 1:
            continue
        deco = s.decorator_list[0]
        deco = deco.func if isinstance(deco, ast.Call) else deco
        methods = {m.name for m in s.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if isinstance(deco, ast.Name) and deco.id == "dataclass" and not methods & {"__init__", "__post_init__"}:
            out.add(s.name)
    return out


def _calls_bundle_function(stmt: ast.stmt, bundle_names: set[str]) -> bool:
    for part in _module_time_nodes(stmt):
        for node in walk(part):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in _READING_METHODS and isinstance(func.value, ast.Name):
                continue  # TABLE.values(): reads a bundle mapping, runs no bundle code
            if _names_loaded(func) & bundle_names:
                return True
    return False


def uses_dynamic_lookup(bodies: list[list[ast.stmt]]) -> bool:
    for body in bodies:
        for stmt in body:
            for node in walk(stmt):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _DYNAMIC_LOOKUPS:
                    return True
                if isinstance(node, ast.Subscript) and any(isinstance(n, ast.Name) and n.id == "__name__" for n in walk(node.slice)):
                    return True  # sys.modules[__name__]: the module looks itself up
    return False


def shake(bodies: list[list[ast.stmt]]) -> list[list[ast.stmt]]:
    """The same bodies without unreachable top-level definitions (order kept)."""
    if uses_dynamic_lookup(bodies):
        return bodies
    stmts = [(i, s) for i, body in enumerate(bodies) for s in body]
    binds = [set(top_level_definitions([s])) for _, s in stmts]
    bundle_names = set().union(*binds) if binds else set()
    binders: dict[str, list[int]] = {}
    for k, names in enumerate(binds):
        for name in names:
            binders.setdefault(name, []).append(k)
    effectful = bundle_names - _plain_dataclasses([s for _, s in stmts])
    keep = set()
    pending = [
        k for k, (_, s) in enumerate(stmts)
        if not binds[k] or isinstance(s, (ast.Import, ast.ImportFrom)) or _calls_bundle_function(s, effectful)
    ]
    while pending:
        k = pending.pop()
        if k in keep:
            continue
        keep.add(k)
        for name in _names_used(stmts[k][1]) & bundle_names:
            pending.extend(binders[name])
    out: list[list[ast.stmt]] = [[] for _ in bodies]
    for k, (i, s) in enumerate(stmts):
        if k in keep:
            out[i].append(s)
    return out


def _standard_library_import(stmt: ast.stmt) -> bool:
    """An import of standard-library modules only, ``__future__`` excepted."""
    if isinstance(stmt, ast.Import):
        modules = [alias.name for alias in stmt.names]
    elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
        modules = [stmt.module]
    else:
        return False
    return all((m.split(".")[0] in sys.stdlib_module_names or m in SIDE_EFFECT_FREE_IMPORTS) and m != "__future__" for m in modules)


# Third-party modules whose import does nothing but bind the module: unused, they go like the standard library's.
SIDE_EFFECT_FREE_IMPORTS = {"brotli", "zstandard"}


def shake_imports(lines: list[str], bodies: list[list[ast.stmt]]) -> list[str]:
    """The hoisted import ``lines`` without the standard-library (and :data:`SIDE_EFFECT_FREE_IMPORTS`)
    names that nothing in ``bodies`` uses, each ``from M import`` merged into the first one of ``M``."""
    used: set[str] = set()
    for body in bodies:
        for stmt in body:
            used |= _names_used(stmt)
    out = []
    for line in lines:
        node = ast.parse(line).body[0]
        if _standard_library_import(node):
            node.names = [a for a in node.names if (a.asname or a.name).split(".")[0] in used]
            if not node.names:
                continue
            line = ast.unparse(node)
        out.append(line)
    return merge_from_imports(out)


def merge_from_imports(lines: list[str]) -> list[str]:
    """Every ``from M import ...`` line folded into the first one of the same ``M``, each binding once
    (the modules hoisted from different files import the same names)."""
    out: list[ast.stmt] = []
    first: dict[tuple[str | None, int], ast.ImportFrom] = {}
    for line in lines:
        node = ast.parse(line).body[0]
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            kept = first.setdefault((node.module, node.level), node)
            if kept is not node:
                kept.names += node.names
                continue
        out.append(node)
    for node in first.values():
        seen: set[tuple[str, str | None]] = set()
        node.names = [a for a in node.names if (a.name, a.asname) not in seen and not seen.add((a.name, a.asname))]
    return [ast.unparse(node) for node in out]


# Methods a library or the language calls on an object without naming them in the bundle's code.
_IMPLICIT_METHODS = {"keys", "write", "flush", "read", "readline", "close", "fileno", "isatty", "seek", "tell"}
# External bases whose subclasses the method shaker understands: every attribute such a base has
# (``forward``, ``_apply``, ``step``, ...) may be called by it and is kept.
_KNOWN_BASES = {"object": "builtins.object", "Exception": "builtins.Exception", "nn.Module": "torch.nn.Module",
                "torch.nn.Module": "torch.nn.Module", "nn.Linear": "torch.nn.Linear", "nn.Embedding": "torch.nn.Embedding",
                "torch.optim.Optimizer": "torch.optim.Optimizer"}


def _base_attributes(spelling: str) -> set[str]:
    import importlib

    module, _, name = _KNOWN_BASES[spelling].rpartition(".")
    return set(dir(getattr(importlib.import_module(module), name)))


def external_hooks(cls: ast.ClassDef, classes: dict[str, ast.ClassDef], seen: frozenset[str] = frozenset()) -> set[str] | None:
    """Attributes the external bases of ``cls`` and of its ancestors in the bundle (``classes``, by
    name) have: hooks they may call by name. None where one of those bases is not known (it may
    call any method)."""
    hooks: set[str] = set()
    for base in map(ast.unparse, cls.bases):
        if base in _KNOWN_BASES:
            hooks |= _base_attributes(base)
        elif base in classes and base not in seen:
            inherited = external_hooks(classes[base], classes, seen | {cls.name})
            if inherited is None:
                return None
            hooks |= inherited
        else:
            return None
    return hooks


def bundle_strings(bodies: list[list[ast.stmt]]) -> set[str]:
    return {n.value for body in bodies for s in body for n in walk(s)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def shake_methods(bodies: list[list[ast.stmt]]) -> int:
    """Drop methods that nothing names: no ``.name`` attribute anywhere in the bundle, no string equal
    to the name (``getattr(obj, "name")``), not a dunder, not an attribute of a known external base (a
    hook it may call). Classes with another base outside the bundle keep every method. Returns the
    number dropped."""
    if uses_dynamic_lookup(bodies):
        return 0
    classes = {s.name: s for body in bodies for s in body if isinstance(s, ast.ClassDef)}
    named = {n.attr for body in bodies for s in body for n in walk(s) if isinstance(n, ast.Attribute)}
    named |= bundle_strings(bodies) | _IMPLICIT_METHODS
    dropped = 0
    for body in bodies:
        for cls in body:
            if not isinstance(cls, ast.ClassDef) or cls.keywords:
                continue
            hooks = external_hooks(cls, classes)
            if hooks is None:
                continue
            protected = named | hooks
            kept = []
            for stmt in cls.body:
                if (isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name not in protected
                        and not (stmt.name.startswith("__") and stmt.name.endswith("__"))):
                    dropped += 1
                    continue
                kept.append(stmt)
            cls.body = kept or [ast.Pass()]
    return dropped


def _class_name_uses(bodies: list[list[ast.stmt]], classes: set[str]) -> set[str]:
    """The classes of ``classes`` whose name the bundle uses other than as a base class, inside an
    annotation (never evaluated) or as the type ``isinstance``/``issubclass`` tests against: a class
    used any other way may be instantiated (called, passed as a value, its attributes read)."""
    used: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if node.id in classes:
                used.add(node.id)
            return
        if isinstance(node, ast.ClassDef):
            parts = [*node.keywords, *node.decorator_list, *node.body]
            parts += [b for b in node.bases if not (isinstance(b, ast.Name) and b.id in classes)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass") \
                and len(node.args) == 2:
            kind = node.args[1]
            types = kind.elts if isinstance(kind, ast.Tuple) else [kind]
            parts = [node.args[0], *(t for t in types if not (isinstance(t, ast.Name) and t.id in classes))]
        elif isinstance(node, ast.arg):
            parts = []
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts = [node.args, *node.decorator_list, *node.body]
        elif isinstance(node, ast.AnnAssign):
            parts = [node.target, node.value] if node.value is not None else [node.target]
        else:
            parts = children(node)
        if isinstance(node, ast.arguments):
            parts = [*node.defaults, *(d for d in node.kw_defaults if d is not None)]
        for part in parts:
            visit(part)

    for body in bodies:
        for stmt in body:
            visit(stmt)
    return used


def drop_overridden_methods(bodies: list[list[ast.stmt]]) -> int:
    """Drop the methods of a class that nothing instantiates (its name is used only as a base, in
    annotations and in ``isinstance``) when every class derived from it defines that method too and
    no ``super().name`` reaches one: no instance can resolve to it. Plain Muon's ``step`` in a
    bundle whose optimizer is Parallel Muon. Returns the number dropped."""
    if uses_dynamic_lookup(bodies):
        return 0
    classes = {s.name: s for body in bodies for s in body if isinstance(s, ast.ClassDef)}
    derived: dict[str, list[ast.ClassDef]] = {}
    for cls in classes.values():
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                derived.setdefault(base.id, []).append(cls)
    reached_by_super = {n.attr for body in bodies for s in body for n in walk(s) if isinstance(n, ast.Attribute)
                        and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name) and n.value.func.id == "super"}
    used = _class_name_uses(bodies, set(classes))
    dropped = 0
    for name, cls in classes.items():
        if name in used or name not in derived:
            continue
        defined = [{m.name for m in sub.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))} for sub in derived[name]]
        kept = []
        for stmt in cls.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name not in reached_by_super \
                    and all(stmt.name in names for names in defined):
                dropped += 1
                continue
            kept.append(stmt)
        cls.body = kept or [ast.Pass()]
    return dropped
