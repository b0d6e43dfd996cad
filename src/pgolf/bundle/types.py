"""Just enough type inference on the bundle to know which expressions hold a given class's instance.

The specialiser needs to know that ``s.cfg.model`` in ``def f(s: Session)`` is a ``ModelConfig``.
Sources of types, all explicit in the code: parameter annotations naming a bundle class, ``self``
in a method, class-body annotations (``cfg: Config`` in a dataclass), locals whose every assignment
has the same known type (tuple unpacking of tuples included) and ``self.a = expr`` in a class's own
methods when every such store agrees and no ``x.a = ...`` appears elsewhere. Anything else is
unknown, and unknown means "not folded".
"""

from __future__ import annotations

import ast
from typing import Iterator

from pgolf.bundle.names import children, top_level_definitions, walk
from pgolf.bundle.simplify import literal_value

_NO_VALUE = object()
_MAYBE = "?"  # env key prefix: a parameter annotated ``X | None``
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef,
           ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def methods(cls: ast.ClassDef) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [s for s in cls.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _decorator_names(fn: ast.AST) -> set[str]:
    names = set()
    for d in getattr(fn, "decorator_list", []):
        d = d.func if isinstance(d, ast.Call) else d
        names.add(d.id if isinstance(d, ast.Name) else d.attr if isinstance(d, ast.Attribute) else "")
    return names


def self_name(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The instance parameter of a method (None for static and class methods)."""
    if _decorator_names(fn) & {"staticmethod", "classmethod"}:
        return None
    params = [*fn.args.posonlyargs, *fn.args.args]
    return params[0].arg if params else None


def is_dataclass(cls: ast.ClassDef) -> bool:
    return "dataclass" in _decorator_names(cls)


def function_scopes(bodies: list[list[ast.stmt]]) -> Iterator[tuple[ast.FunctionDef, ast.ClassDef | None]]:
    """Every function of the bundle (nested ones too) with the class it is a method of."""
    def visit(stmts, cls):
        for stmt in stmts:
            for node in walk(stmt) if not isinstance(stmt, ast.ClassDef) else [stmt]:
                if isinstance(node, ast.ClassDef) and node is stmt:
                    yield from visit(node.body, node)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield node, cls if node is stmt else None
    for body in bodies:
        yield from visit(body, None)


def walk_scope(nodes) -> Iterator[ast.AST]:
    """Nodes of one scope: nested functions, lambdas, classes and comprehensions are not entered."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        for child in children(node):
            if isinstance(child, _SCOPES):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    yield child  # its name is bound here; its decorators and defaults run here
                    stack.extend(getattr(child, "decorator_list", []))
                continue
            stack.append(child)


def _binding_values(fn) -> dict[str, list[ast.expr | None]]:
    """Name -> the value of each of its bindings in ``fn``'s own scope (None: not a plain assignment)."""
    out: dict[str, list[ast.expr | None]] = {}

    def bind(target: ast.AST, value: ast.expr | None) -> None:
        if isinstance(target, ast.Name):
            out.setdefault(target.id, []).append(value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            pair = isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts)
            for i, t in enumerate(target.elts):
                bind(t, value.elts[i] if pair else None)
        elif isinstance(target, ast.Starred):
            bind(target.value, None)

    for node in walk_scope(fn.body):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                bind(t, node.value)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
            bind(node.target, None)
        elif isinstance(node, ast.NamedExpr):
            bind(node.target, None)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            bind(node.optional_vars, None)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.setdefault(node.name, []).append(None)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.setdefault(node.name, []).append(None)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                out.setdefault((a.asname or a.name).split(".")[0], []).append(None)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                out.setdefault(name, []).append(None)
    return out


def _all_params(fn) -> list[ast.arg]:
    a = fn.args
    return [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs, *([a.kwarg] if a.kwarg else [])]


class Types:
    """Class-valued types of names and attribute chains, per function scope."""

    def __init__(self, bodies: list[list[ast.stmt]]):
        self.bodies = bodies
        self.classes = {s.name: s for body in bodies for s in body if isinstance(s, ast.ClassDef)}
        self._bases = {b.id for c in self.classes.values() for b in c.bases if isinstance(b, ast.Name)}
        self.self_stores: dict[str, set[str]] = {}  # class -> attributes its own methods store on self
        self.outside_stores = self._stores()
        self.attr: dict[tuple[str, str], str] = {}
        self.envs: dict[int, dict[str, str]] = {}
        for cls in self.classes.values():
            for s in cls.body:
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name):
                    t = self.annotation_type(s.annotation)
                    if t:
                        self.attr[(cls.name, s.target.id)] = t
        for _ in range(3):  # attribute types feed local types and back
            before = dict(self.attr)
            self._infer()
            if self.attr == before:
                break
        self._typed_stores, self._untyped_stores = self._stores_by_receiver()

    def stored(self, cls: str, attr: str, unless: object = _NO_VALUE) -> bool:
        """Whether ``attr`` of an instance of ``cls`` may be stored anywhere in the bundle: a store
        through a receiver of another known type does not count, one of unknown type does; with
        ``unless``, neither does a plain ``x.attr = <that literal>`` through a ``cls`` receiver."""
        if attr in self._untyped_stores:
            return True
        if unless is _NO_VALUE or attr not in self._typed_stores.get(cls, ()):
            return attr in self._typed_stores.get(cls, ())
        values = self._typed_store_values.get((cls, attr), [None])
        return not all(v is not None and literal_value(v) == (True, unless) and type(literal_value(v)[1]) is type(unless)
                       for v in values)

    def _stores_by_receiver(self) -> tuple[dict[str, set[str]], set[str]]:
        typed: dict[str, set[str]] = {}
        untyped: set[str] = set(self._call_stores)  # setattr(x, "a", ...) / replace(x, a=...): receiver unknown
        seen: set[int] = set()
        self._typed_store_values: dict[tuple[str, str], list[ast.expr | None]] = {}
        for fn, _ in function_scopes(self.bodies):
            env = self.envs.get(id(fn), {})
            plain = {id(n.targets[0]): n.value for n in walk_scope(fn.body)
                     if isinstance(n, ast.Assign) and len(n.targets) == 1}
            for node in walk_scope(fn.body):
                if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load):
                    seen.add(id(node))
                    owner = self.type_of(node.value, env)
                    (typed.setdefault(owner, set()) if owner else untyped).add(node.attr)
                    if owner:
                        self._typed_store_values.setdefault((owner, node.attr), []).append(plain.get(id(node)))
        for body in self.bodies:
            for node in walk(ast.Module(body=body, type_ignores=[])):
                if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load) and id(node) not in seen:
                    untyped.add(node.attr)  # module level, class bodies, lambdas, comprehensions
        return typed, untyped

    def subclassed(self, name: str) -> bool:
        return name in self._bases

    def class_body_names(self, cls: ast.ClassDef) -> list[str]:
        return top_level_definitions(cls.body)

    def annotation_type(self, node: ast.expr | None, optional: bool = False) -> str | None:
        """The bundle class an annotation names; with ``optional``, also the X of ``X | None``."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        if (optional and isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
                and isinstance(node.right, ast.Constant) and node.right.value is None):
            node = node.left
        if isinstance(node, ast.Name) and node.id in self.classes:
            return node.id
        return None

    def _stores(self) -> set[str]:
        """Attribute names stored other than as ``self.a`` in the class's own methods (these go to
        ``self_stores``); ``setattr(x, "a", ...)`` and ``replace(x, a=...)`` count as outside stores."""
        inside: set[int] = set()
        for cls in self.classes.values():
            for m in methods(cls):
                me = self_name(m)
                for node in walk(m):
                    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == me:
                        inside.add(id(node))
                        if not isinstance(node.ctx, ast.Load):
                            self.self_stores.setdefault(cls.name, set()).add(node.attr)
        outside: set[str] = set()
        calls: set[str] = set()
        for body in self.bodies:
            for node in walk(ast.Module(body=body, type_ignores=[])):
                if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load) and id(node) not in inside:
                    outside.add(node.attr)
                elif isinstance(node, ast.Call):
                    func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                    if func in ("setattr", "delattr") and len(node.args) >= 2:
                        arg = node.args[1]
                        calls.add(arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "*")
                    elif func == "replace":
                        calls |= {k.arg or "*" for k in node.keywords}
        # setattr with a computed name is the config machinery (set_value); the bundle entry checks
        # its result against the folded values at run time, so it does not block folding.
        calls.discard("*")
        self._call_stores = calls
        return outside | calls

    def _infer(self) -> None:
        candidates: dict[tuple[str, str], set[str | None]] = {}
        for body in self.bodies:
            self._scope_list(body, {}, None, candidates)
        for key, found in candidates.items():
            if key in self.attr and found != {self.attr[key]}:
                continue
            if len(found) == 1 and None not in found and key[1] not in self.outside_stores:
                self.attr[key] = next(iter(found))

    def _scope_list(self, stmts, env, cls, candidates) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.ClassDef):
                self._scope_list(stmt.body, env, stmt, candidates)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._function(stmt, env, cls, candidates)
            else:  # definitions under a module-level if/try/with
                self._scope_list([n for n in walk_scope([stmt]) if n is not stmt and isinstance(
                    n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))], env, None, candidates)

    def _function(self, fn, parent: dict[str, str], cls: ast.ClassDef | None, candidates) -> None:
        bindings = _binding_values(fn)
        env = {k: v for k, v in parent.items() if k not in bindings}
        me = self_name(fn) if cls is not None else None
        for p in _all_params(fn):
            env.pop(p.arg, None)
            t = cls.name if p.arg == me else self.annotation_type(p.annotation)
            if t and p.arg not in bindings:
                env[p.arg] = t
            maybe = self.annotation_type(p.annotation, optional=True)
            if maybe and not t and p.arg not in bindings:
                env[_MAYBE + p.arg] = maybe  # ``p or X()`` is an X
        for name, values in bindings.items():
            found = {self.type_of(v, env) if v is not None else None for v in values}
            if len(found) == 1 and None not in found and name not in {p.arg for p in _all_params(fn)}:
                env[name] = next(iter(found))
        self.envs[id(fn)] = env
        if me is not None:
            for node in walk(fn):
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == me:
                            value_type = self.type_of(node.value, env)  # `self.a = b = v`: both hold v
                            candidates.setdefault((cls.name, t.attr), set()).add(value_type)
        nested = [n for n in walk_scope(fn.body) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for node in nested:
            if isinstance(node, ast.ClassDef):
                self._scope_list(node.body, env, node, candidates)
            else:
                self._function(node, env, None, candidates)

    def type_of(self, node: ast.expr, env: dict[str, str]) -> str | None:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value, env)
            return self.attr.get((owner, node.attr)) if owner else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.classes:
            cls = self.classes[node.func.id]
            plain = all(d in ("dataclass", "dataclasses.dataclass") for d in map(ast.unparse, (
                d.func if isinstance(d, ast.Call) else d for d in cls.decorator_list)))
            if plain and "__new__" not in {m.name for m in methods(cls)} and node.func.id not in env:
                return node.func.id  # a constructor call
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            last = self.type_of(node.values[-1], env)
            others = [self.type_of(v, env) or (env.get(_MAYBE + v.id) if isinstance(v, ast.Name) else None)
                      for v in node.values[:-1]]
            return last if last and all(t == last for t in others) else None
        return None
