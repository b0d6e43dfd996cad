"""Strip the input checks from a bundle: the code a run with good input never executes.

A bundle trains one configuration with inputs its user prepared; the package's checks of those
inputs (a one-line ``PgolfError`` naming what is wrong and where) are most of the code that never
runs there, and they are pure cost in code bytes. In every function of the stripped modules:

* ``if <test>: raise PgolfError(...)`` (no ``else``; the raise perhaps after locals that build its
  message) goes; of an ``if`` whose one branch raises so, the other branch stays, unconditionally;
  a raise that ends a function goes (only input nothing before it accepted reaches it);
* ``try: <body> except ...: raise PgolfError(...)`` becomes ``<body>``: the original exception
  then propagates instead of the one-line error;
* ``assert`` statements go, as under ``python -O``;
* what only fed those checks goes with them: a local assigned (once, or from itself only:
  ``digest = digest or sha256(path)``) and read only by a removed check (its value is taken to be a
  query: checks ask, they do not change things), and an ``if``
  or ``for`` whose body the removal left empty. A function left with nothing to do is then inlined
  away by :mod:`pgolf.bundle.trivial` and shaken out.

The same goes, once the ``PgolfError`` checks are gone, for raises of the builtin exceptions the
package uses for malformed arguments (:data:`BUILTIN_CHECK_ERRORS`: ``ValueError``...), each only
where no ``except`` left in the whole bundle could catch it and carry on (a handler that re-raises,
or one around scalar conversions only, ``int(raw)``, cannot see a bundle raise). Subclasses of ``PgolfError``
(the scoring guards :class:`pgolf.eval.ledger.ScoreFirstViolation`, the score-first rule's, and
:class:`pgolf.eval.ledger.IncompleteScore`, every target scored) are never touched. With bad input a stripped bundle fails with the
underlying Python error instead of the package's one line; ``pgolf bundle --keep-checks`` keeps
every check.
"""

from __future__ import annotations

import ast
import builtins

from pgolf.bundle.names import walk

_BLOCK_FIELDS = ("body", "orelse", "finalbody")


# Builtin exceptions whose raises are stripped as checks too, where nothing in the bundle could catch one
# and carry on (see :func:`uncaught_builtins`): the package raises them for malformed arguments.
BUILTIN_CHECK_ERRORS = ("ValueError", "TypeError", "KeyError", "IndexError", "RuntimeError")


def _raises(stmt: ast.stmt, errors: frozenset[str]) -> bool:
    """``raise E(...)`` (or ``raise E``) for an ``E`` in ``errors``, chained or not."""
    if not isinstance(stmt, ast.Raise) or stmt.exc is None:
        return False
    exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
    return isinstance(exc, ast.Name) and exc.id in errors


def _catches(handler: ast.ExceptHandler, error: type) -> bool:
    """Whether ``handler`` catches ``error`` (a builtin exception): bare, or naming a builtin base of it."""
    if handler.type is None:
        return True
    for node in handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]:
        base = getattr(builtins, node.id, None) if isinstance(node, ast.Name) else None
        if isinstance(base, type) and issubclass(error, base):
            return True
    return False


# Conversions a ``try`` may call and still run no bundle code (``list(x)`` could iterate a bundle generator).
_SCALAR_CONVERSIONS = {"int", "float", "complex", "bool", "str", "bytes"}


def _harmless(trial: ast.Try, handler: ast.ExceptHandler) -> bool:
    """The handler ends by raising (what it caught, or another error: either way it does not carry
    on), or its ``try`` body calls only scalar conversions (``int(raw)``), so no bundle code, and none
    of its checks, runs inside it."""
    if handler.body and isinstance(handler.body[-1], ast.Raise) \
            and not any(isinstance(n, (ast.Return, ast.Break, ast.Continue)) for s in handler.body for n in walk(s)):
        return True
    calls = [n for s in trial.body for n in walk(s) if isinstance(n, ast.Call)]
    return all(isinstance(c.func, ast.Name) and c.func.id in _SCALAR_CONVERSIONS for c in calls)


def uncaught_builtins(bodies: list[list[ast.stmt]]) -> frozenset[str]:
    """The :data:`BUILTIN_CHECK_ERRORS` that no ``except`` in the whole bundle could catch and carry on
    from (``contextlib.suppress`` anywhere: none of them)."""
    nodes = [n for body in bodies for s in body for n in walk(s)]
    if any(isinstance(n, (ast.Name, ast.Attribute)) and getattr(n, "id", getattr(n, "attr", None)) == "suppress" for n in nodes):
        return frozenset()
    trials = [n for n in nodes if isinstance(n, ast.Try)]
    return frozenset(name for name in BUILTIN_CHECK_ERRORS
                     if not any(_catches(h, getattr(builtins, name)) and not _harmless(t, h) for t in trials for h in t.handlers))


def _loaded(nodes) -> set[str]:
    return {n.id for node in nodes for n in walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


class _Stripper:
    """Strips one function; ``fed`` collects the names the removed code read."""

    def __init__(self, errors: frozenset[str]):
        self.errors = errors
        self.fed: set[str] = set()
        self.count = 0

    def _drop(self, *nodes: ast.AST) -> None:
        self.fed |= _loaded(nodes)
        self.count += 1

    def block(self, body: list[ast.stmt], function_body: bool = False) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in body:
            self._nested(stmt)
            if isinstance(stmt, ast.Assert):
                self._drop(stmt)
                continue
            if isinstance(stmt, ast.If) and not any(isinstance(n, ast.NamedExpr) for n in walk(stmt.test)):
                if self._refuses(stmt.body) and not stmt.orelse:
                    self._drop(stmt)
                    continue
                kept = stmt.orelse if self._refuses(stmt.body) else stmt.body if self._refuses(stmt.orelse) else None
                if kept is not None:  # good input takes the branch that does not refuse it
                    self._drop(stmt.test, *(stmt.body if kept is stmt.orelse else stmt.orelse))
                    out.extend(kept)
                    continue
            if isinstance(stmt, ast.Try) and stmt.handlers and not stmt.orelse and not stmt.finalbody \
                    and all(self._refuses(h.body) for h in stmt.handlers):
                self._drop(*stmt.handlers)
                out.extend(stmt.body)
                continue
            out.append(stmt)
        if function_body and out and _raises(out[-1], self.errors):  # reached only by input nothing above accepted
            self._drop(out.pop())
        return out

    def _refuses(self, body: list[ast.stmt]) -> bool:
        """The block raises the error, having at most computed locals for its message."""
        return bool(body) and _raises(body[-1], self.errors) and all(_single_name_store(s) for s in body[:-1])

    def _nested(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return  # their own scope: stripped on their own
        for name in _BLOCK_FIELDS:
            body = getattr(stmt, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                setattr(stmt, name, self.block(body))
        for handler in getattr(stmt, "handlers", []):
            handler.body = self.block(handler.body)


def _stores(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in walk(fn):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            counts[n.id] = counts.get(n.id, 0) + 1
    return counts


def _single_name_store(stmt: ast.stmt) -> str | None:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None and isinstance(stmt.target, ast.Name):
        return stmt.target.id
    return None


def _only_feeds_itself(fn: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> bool:
    """Every store of ``name`` in ``fn`` is a plain ``name = value`` and nothing reads ``name`` but
    those values (``digest = digest or sha256(f)``): once a check that read it is gone, its stores
    compute nothing anyone sees."""
    assigns = [s for s in walk(fn) if isinstance(s, ast.stmt) and _single_name_store(s) == name]
    stores = _stores(fn).get(name, 0)
    if not assigns or stores != len(assigns) or any(isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names for n in walk(fn)):
        return False
    inside = {id(n) for a in assigns for n in walk(a.value)}
    return not any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load) and id(n) not in inside
                   for n in walk(fn))


def _early_exit(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and not stmt.orelse and len(stmt.body) == 1 \
        and isinstance(stmt.body[0], ast.Return) and stmt.body[0].value is None


def _keep_valid(stmt: ast.stmt) -> None:
    """A compound statement whose body a removal emptied gets a ``pass``."""
    if isinstance(getattr(stmt, "body", None), list) and not stmt.body:
        stmt.body = [ast.Pass()]
    if isinstance(stmt, ast.Try) and not stmt.handlers and not stmt.finalbody:
        stmt.finalbody = [ast.Pass()]


def _drop_what_fed_the_checks(fn: ast.FunctionDef | ast.AsyncFunctionDef, fed: set[str]) -> int:
    """Remove, to a fixed point, stores of ``fed`` names nothing reads any more, the ``if``/``for``
    statements the removals left empty, and a bare early return left last. Returns how many statements went."""
    removed = 0
    while True:
        params = {a.arg for a in walk(fn.args) if isinstance(a, ast.arg)}
        dead = {n for n in fed if n not in params and _only_feeds_itself(fn, n)}
        dropped = [0]

        def prune(body: list[ast.stmt]) -> list[ast.stmt]:
            out = []
            for stmt in body:
                if _single_name_store(stmt) in dead:
                    fed.update(_loaded([stmt.value]))
                    dropped[0] += 1
                    continue
                if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    for name in _BLOCK_FIELDS:
                        inner = getattr(stmt, name, None)
                        if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                            setattr(stmt, name, prune(inner))
                    for handler in getattr(stmt, "handlers", []):
                        handler.body = prune(handler.body) or [ast.Pass()]
                if isinstance(stmt, (ast.If, ast.For)) and not stmt.body and not stmt.orelse:
                    fed.update(_loaded([stmt.test if isinstance(stmt, ast.If) else stmt.iter]))
                    dropped[0] += 1
                    continue
                _keep_valid(stmt)
                out.append(stmt)
            return out

        fn.body = prune(fn.body)
        while fn.body and _early_exit(fn.body[-1]):  # an early return with nothing after it: a no-op
            fed.update(_loaded([fn.body.pop().test]))
            dropped[0] += 1
        removed += dropped[0]
        if not dropped[0]:
            break
    if not fn.body:
        fn.body = [ast.Pass()]
    return removed


def strip_checks(bodies: list[list[ast.stmt]], error: str, keep: frozenset[str] = frozenset(),
                 whole: list[list[ast.stmt]] | None = None) -> int:
    """Strip ``raise error(...)`` checks from every function in ``bodies`` (changed in place) but
    the top-level functions named in ``keep``, then those raising a builtin exception nothing in
    ``whole`` (the whole bundle, default ``bodies``) could catch and carry on from; returns the
    number of statements removed."""
    total = _strip(bodies, frozenset({error}), keep)
    builtin_errors = uncaught_builtins(bodies if whole is None else whole)
    if builtin_errors:
        total += _strip(bodies, builtin_errors, keep)
    return total


def _strip(bodies: list[list[ast.stmt]], errors: frozenset[str], keep: frozenset[str]) -> int:
    total = 0
    for body in bodies:
        kept = [s for s in body if isinstance(s, ast.FunctionDef) and s.name in keep]
        for node in [n for stmt in body if stmt not in kept for n in walk(stmt)]:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                stripper = _Stripper(errors)
                node.body = stripper.block(node.body, function_body=True)
                total += stripper.count
                if stripper.count:
                    total += _drop_what_fed_the_checks(node, stripper.fed)
    return total
