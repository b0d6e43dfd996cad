"""Inline the calls that specialisation made trivial, on the bundle's AST.

Folding a switch often leaves a function with nothing to do: ``clip_gradients`` with GRAD_CLIP_NORM
folded to 0 has an empty body, ``build_averager`` returns ``None``, ``tied_head_input`` returns its
argument. Their calls still cost bytes and keep the values they test alive. Here, for a top-level
function whose name is bound once and used only to call it:

* a body that does nothing (``pass``, a bare ``return``): a call statement becomes the calls among
  its arguments (their effects), a call used as a value becomes ``None``;
* ``return <literal>``: the call becomes the literal;
* ``return <parameter>``: the call becomes the argument bound to that parameter;
* ``return <expression of parameters without effects>`` (``cfg.model_dim``), a fresh literal list, or
  a module constant: the call becomes that expression, the arguments substituted;

each only where every other argument is free of side effects (so nothing is skipped by dropping it).
Module-level names bound once to a literal are substituted where a test reads them: a scalar as an
``if``/conditional test or an ``and``/``or`` operand, a scalar compared with literals, a tuple that a
literal is looked up in (``"relu2" not in ACTIVATIONS``); the simplifier then folds the test.
Class bodies are left alone: a class attribute there may shadow the module name.
"""

from __future__ import annotations

import ast
import copy
from typing import Any

from pgolf.bundle.names import children, names_bound_by, walk
from pgolf.bundle.propagate import call_bindings, literal_node
from pgolf.bundle.simplify import is_pure, literal_value

def _walk_outside_class_bodies(body: list[ast.stmt]):
    """Every node, except the statements directly in a class body (their names are class attributes,
    invisible to function code) and what is nested in them other than method bodies."""
    pending: list[ast.AST] = list(body)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.ClassDef):
            pending.extend(node.bases)
            pending.extend(node.decorator_list)
            pending.extend(s for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) for s in m.body)
            pending.extend(a for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
                           for a in walk(m.args) if isinstance(a, ast.arg))
            continue
        pending.extend(children(node))


def _global_bindings(bodies: list[list[ast.stmt]]) -> dict[str, int]:
    """How often each name is bound anywhere in the bundle (any scope but class bodies: a conservative count)."""
    counts: dict[str, int] = {}
    for body in bodies:
        for node in _walk_outside_class_bodies(body):
            for name in names_bound_by(node):
                counts[name] = counts.get(name, 0) + 1
    return counts


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _outcome(fn: ast.FunctionDef, module_constants: set[str]) -> tuple[str, Any] | None:
    """("nothing", None), ("literal", value), ("param", name) or ("expr", node) for a trivial function,
    else None. ``module_constants``: module-level names bound once (a ``return`` of one is kept as is)."""
    body = [s for s in _without_docstring(fn.body) if not isinstance(s, ast.Pass)]
    if not body:
        return "nothing", None
    if len(body) != 1 or not isinstance(body[0], ast.Return):
        return None
    value = body[0].value
    if value is None:
        return "nothing", None
    ok, literal = literal_value(value)
    if ok:
        return "literal", literal
    if isinstance(value, ast.List) and all(literal_value(e)[0] for e in value.elts):
        return "expr", value  # a fresh list per call, as before
    params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
    if isinstance(value, ast.Name) and value.id in params:
        return "param", value.id
    if isinstance(value, ast.Name) and value.id in module_constants:
        return "expr", value
    names = {n.id for n in walk(value) if isinstance(n, ast.Name)}
    if is_pure(value) and names <= params:
        return "expr", value  # e.g. ``return cfg.model_dim``: arguments substituted at the call
    return None


def _argument_exprs(fn: ast.FunctionDef, call: ast.Call) -> dict[str, ast.expr] | None:
    """Parameter -> the expression a call binds to it (its default when the call leaves it)."""
    if call_bindings(fn, call, skip_first=False) is None:
        return None
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    bound = dict(zip((p.arg for p in positional), call.args))
    bound.update({k.arg: k.value for k in call.keywords})
    defaults = dict(zip((p.arg for p in positional[len(positional) - len(a.defaults):]), a.defaults))
    defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
    return {p.arg: bound.get(p.arg, defaults.get(p.arg)) for p in [*positional, *a.kwonlyargs]}


class _Rename(ast.NodeTransformer):
    """Parameters in a copied return expression -> the (pure) expressions the call binds to them."""

    def __init__(self, args: dict[str, ast.expr]):
        self.args = args

    def visit_Name(self, node: ast.Name):
        return copy.deepcopy(self.args[node.id]) if node.id in self.args else node


class _MethodsOnly(ast.NodeTransformer):
    """Visits a class's methods but not the statements of its body, where a class attribute of the
    same name would shadow the global (binding counts leave class bodies out)."""

    def visit_ClassDef(self, node: ast.ClassDef):
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.visit(stmt)
        return node


class _Inline(_MethodsOnly):
    def __init__(self, trivial: dict[str, tuple[ast.FunctionDef, tuple[str, Any]]]):
        self.trivial = trivial
        self.count = 0

    def _replacement(self, call: ast.Call) -> ast.expr | None:
        if not (isinstance(call.func, ast.Name) and call.func.id in self.trivial):
            return None
        fn, (kind, what) = self.trivial[call.func.id]
        args = _argument_exprs(fn, call)
        if args is None:
            return None
        passed = [*call.args, *(k.value for k in call.keywords)]
        if kind == "param":
            keep = args[what]
            if all(is_pure(e) for e in passed if e is not keep):
                return keep
            return None
        if not all(is_pure(e) for e in passed):
            return None
        if kind == "expr":
            return ast.copy_location(_Rename(args).visit(copy.deepcopy(what)), call)
        return literal_node(what, call)

    def visit_Expr(self, node: ast.Expr):
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in self.trivial:
            fn, (kind, _) = self.trivial[call.func.id]
            if kind == "nothing" and _argument_exprs(fn, call) is not None:
                self.count += 1
                effects = [self.visit(e) for e in [*call.args, *(k.value for k in call.keywords)] if not is_pure(e)]
                return [ast.copy_location(ast.Expr(e), node) for e in effects] or ast.copy_location(ast.Pass(), node)
        self.generic_visit(node)
        return node

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        new = self._replacement(node)
        if new is None:
            return node
        self.count += 1
        return new


def inline_trivial_calls(bodies: list[list[ast.stmt]], uses) -> int:
    """Replace calls of trivial top-level functions (``uses``: :func:`pgolf.bundle.propagate.name_uses`)."""
    calls, escaped = uses
    bound = _global_bindings(bodies)
    trivial: dict[str, tuple[ast.FunctionDef, tuple[str, Any]]] = {}
    module_constants = {t.id for body in bodies for stmt in body if isinstance(stmt, ast.Assign)
                        for t in stmt.targets if isinstance(t, ast.Name) and bound.get(t.id) == 1}
    for body in bodies:
        for stmt in body:
            if (isinstance(stmt, ast.FunctionDef) and not stmt.decorator_list and stmt.name in calls
                    and stmt.name not in escaped and bound.get(stmt.name) == 1
                    and not (stmt.args.vararg or stmt.args.kwarg)):
                outcome = _outcome(stmt, module_constants)
                if outcome is not None:
                    trivial[stmt.name] = (stmt, outcome)
    if not trivial:
        return 0
    inliner = _Inline(trivial)
    for body in bodies:
        module = ast.Module(body=body, type_ignores=[])
        inliner.visit(module)
        body[:] = module.body
    return inliner.count


class _ConstantsInTests(_MethodsOnly):
    """Module constants where a test reads them: a bare scalar in ``if``/``else``/``and``/``or``, a
    scalar compared with a literal, any literal that a literal is looked up in."""

    def __init__(self, values: dict[str, Any]):
        self.values = values
        self.scalars = {k: v for k, v in values.items() if not isinstance(v, tuple)}
        self.count = 0

    def _scalar(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in self.scalars:
            self.count += 1
            return literal_node(self.scalars[node.id], node)
        return node

    def visit_Compare(self, node: ast.Compare):
        self.generic_visit(node)
        operands = [node.left, *node.comparators]
        if all(literal_value(o)[0] or (isinstance(o, ast.Name) and o.id in self.scalars) for o in operands):
            node.left = self._scalar(node.left)  # every operand is then a literal: the simplifier decides it
            node.comparators = [self._scalar(c) for c in node.comparators]
        if literal_value(node.left)[0]:
            for i, c in enumerate(node.comparators):
                if isinstance(c, ast.Name) and c.id in self.values:
                    node.comparators[i] = literal_node(self.values[c.id], c)
                    self.count += 1
        return node

    def visit_If(self, node: ast.If):
        node.test = self._scalar(node.test)
        self.generic_visit(node)
        return node

    def visit_IfExp(self, node: ast.IfExp):
        node.test = self._scalar(node.test)
        self.generic_visit(node)
        return node

    def visit_BoolOp(self, node: ast.BoolOp):
        node.values = [self._scalar(v) for v in node.values]
        self.generic_visit(node)
        return node


def substitute_constants_in_tests(bodies: list[list[ast.stmt]]) -> int:
    """``"relu2" in ACTIVATIONS`` -> ``"relu2" in ("relu2", ...)`` for a module name bound once to a literal."""
    bound = _global_bindings(bodies)
    values: dict[str, Any] = {}
    for body in bodies:
        for stmt in body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                ok, value = literal_value(stmt.value)
                if ok and bound.get(stmt.targets[0].id) == 1:
                    values[stmt.targets[0].id] = value
    if not values:
        return 0
    sub = _ConstantsInTests(values)
    for body in bodies:
        for stmt in body:
            sub.visit(stmt)
    return sub.count
