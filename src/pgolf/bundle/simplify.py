"""Fold constant expressions and prune the branches they decide, on the bundle's AST.

Knows nothing about configurations: once the specialiser has replaced config reads with literals,
this pass evaluates what became constant (``not``, comparisons, small arithmetic, ``and``/``or``,
conditional expressions), keeps only the taken side of ``if True:``/``if False:``, and drops
statements after an unconditional ``return``/``raise``/``break``/``continue``. Every rewrite keeps
the program's meaning: ``x and False`` becomes ``False`` only where just its truth value is used and
``x`` has no side effects.
"""

from __future__ import annotations

import ast
import operator
from typing import Any

_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_, ast.IsNot: operator.is_not,
}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
          ast.Mod: operator.mod}
_SCALARS = (bool, int, float, str, type(None))


def is_const(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, _SCALARS)


def literal_value(node: ast.AST) -> tuple[bool, Any]:
    """(True, value) for a constant or a tuple of constants, else (False, None)."""
    if is_const(node):
        return True, node.value
    if isinstance(node, ast.Tuple) and isinstance(node.ctx, ast.Load) and all(is_const(e) for e in node.elts):
        return True, tuple(e.value for e in node.elts)
    return False, None


def const(value: Any, like: ast.AST) -> ast.Constant:
    return ast.copy_location(ast.Constant(value), like)


def is_pure(node: ast.AST) -> bool:
    """Evaluating it cannot have side effects (names, attribute reads, constants and operators on them)."""
    if isinstance(node, (ast.Constant, ast.Name)):
        return True
    if isinstance(node, ast.Attribute):
        return is_pure(node.value)
    if isinstance(node, ast.UnaryOp):
        return is_pure(node.operand)
    if isinstance(node, ast.BoolOp):
        return all(is_pure(v) for v in node.values)
    if isinstance(node, ast.Tuple):
        return all(is_pure(v) for v in node.elts)
    if isinstance(node, ast.Compare):
        return is_pure(node.left) and all(is_pure(c) for c in node.comparators)
    return False


def _fold_boolop(node: ast.BoolOp) -> ast.expr:
    """Left to right: a constant that decides the result ends it, one that does not is skipped."""
    decides = (lambda v: not v) if isinstance(node.op, ast.And) else bool
    kept: list[ast.expr] = []
    for i, value in enumerate(node.values):
        last = i == len(node.values) - 1
        if is_const(value):
            if decides(value.value):
                kept.append(value)  # evaluation stops here
                break
            if not last:
                continue  # `x and True and y` is `x and y`
        kept.append(value)
    if len(kept) == 1:
        return kept[0]
    node.values = kept
    return node


def _membership(node: ast.Compare) -> bool | None:
    """``"a" in ("a", x)`` is True (and ``not in`` False) when every element is free of effects."""
    if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.In, ast.NotIn)) or not is_const(node.left):
        return None
    seq = node.comparators[0]
    if not isinstance(seq, (ast.Tuple, ast.List, ast.Set)) or not all(is_pure(e) for e in seq.elts):
        return None
    if any(is_const(e) and type(e.value) is type(node.left.value) and e.value == node.left.value for e in seq.elts):
        return isinstance(node.ops[0], ast.In)
    return None


def _as_test(node: ast.expr) -> ast.expr:
    """Simplify an expression whose truth value alone is used (if/while/assert tests, `not`)."""
    if isinstance(node, (ast.Tuple, ast.List)) and not node.elts:
        return const(False, node)  # an empty display is falsy
    if isinstance(node, ast.BoolOp):
        values = [_as_test(v) for v in node.values]
        decides = (lambda v: not v) if isinstance(node.op, ast.And) else bool
        if all(is_pure(v) for v in values) and any(is_const(v) and decides(v.value) for v in values):
            return const(not isinstance(node.op, ast.And), node)
        # in a test, a constant that does not decide changes nothing; one that decides must stay
        values = [v for v in values if not (is_const(v) and not decides(v.value))] or values[-1:]
        if len(values) == 1:
            return values[0]
        node.values = values
    return node


def _is_not_none(test: ast.expr, name: str) -> bool:
    """``test`` is ``name is not None``."""
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == name
            and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot)
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None)


class Simplify(ast.NodeTransformer):
    """One bottom-up pass; run it to a fixed point together with the constant propagation."""

    def __init__(self) -> None:
        self.changed = False

    def _done(self, new: ast.AST, old: ast.AST) -> ast.AST:
        if new is not old:
            self.changed = True
        return new

    # -- expressions --------------------------------------------------------------------------
    def visit_UnaryOp(self, node: ast.UnaryOp):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = _as_test(node.operand)
            if is_const(node.operand):
                return self._done(const(not node.operand.value, node), node)
        return node

    def visit_BoolOp(self, node: ast.BoolOp):
        self.generic_visit(node)
        before = len(node.values)
        new = _fold_boolop(node)
        if new is node and len(node.values) == before:
            return node
        self.changed = True
        return new

    def visit_Compare(self, node: ast.Compare):
        self.generic_visit(node)
        operands = [node.left, *node.comparators]
        known = [literal_value(o) for o in operands]
        if not all(ok for ok, _ in known):
            decided = _membership(node)
            if decided is not None:
                return self._done(const(decided, node), node)
            # a chain `a < 0 <= b` is False when one link between two literals is, if nothing has effects
            for op, (ok_a, a), (ok_b, b) in zip(node.ops, known, known[1:]):
                try:
                    false_link = ok_a and ok_b and not _COMPARE[type(op)](a, b)
                except Exception:
                    false_link = False
                if false_link and all(is_pure(o) for o in operands):
                    return self._done(const(False, node), node)
            return node
        values = [v for _, v in known]
        try:
            result = all(_COMPARE[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:]))
        except Exception:  # e.g. `1 < "a"`: leave it to fail at run time as it would have
            return node
        return self._done(const(bool(result), node), node)

    def visit_BinOp(self, node: ast.BinOp):
        self.generic_visit(node)
        op = _ARITH.get(type(node.op))
        if op is None or not (is_const(node.left) and is_const(node.right)):
            return node
        a, b = node.left.value, node.right.value
        if not all(isinstance(v, (int, float)) for v in (a, b)):  # bools too: `False + True` is 1
            return node
        try:
            return self._done(const(op(a, b), node), node)
        except ArithmeticError:
            return node

    def visit_IfExp(self, node: ast.IfExp):
        self.generic_visit(node)
        node.test = _as_test(node.test)
        if is_const(node.test):
            return self._done(node.body if node.test.value else node.orelse, node)
        return node

    def visit_Dict(self, node: ast.Dict):
        """``{..., **{}, ...}`` (what a folded ``**(d if switch else {})`` leaves) loses the empty splice."""
        self.generic_visit(node)
        keep = [(k, v) for k, v in zip(node.keys, node.values)
                if not (k is None and isinstance(v, ast.Dict) and not v.keys)]
        if len(keep) == len(node.keys):
            return node
        node.keys, node.values = [k for k, _ in keep], [v for _, v in keep]
        return self._done(node, None)

    # -- statements ---------------------------------------------------------------------------
    def _body(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for i, stmt in enumerate(stmts):
            new = self.visit(stmt)
            out.extend(new if isinstance(new, list) else [] if new is None else [new])
            if out and isinstance(out[-1], (ast.Return, ast.Raise, ast.Break, ast.Continue)):
                self.changed = self.changed or i < len(stmts) - 1
                break  # the rest of the block is unreachable
        return out

    def generic_visit(self, node: ast.AST):
        for name in ("body", "orelse", "finalbody"):
            stmts = getattr(node, name, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                new = self._body(stmts)
                if not new and name == "body" and not isinstance(node, ast.Module):
                    new = [ast.Pass()]
                setattr(node, name, new)
        for field, value in ast.iter_fields(node):
            if field in ("body", "orelse", "finalbody") and isinstance(value, list) and (not value or isinstance(value[0], ast.stmt)):
                continue
            if isinstance(value, list):
                new_items = []
                for item in value:
                    if isinstance(item, ast.AST):
                        item = self.visit(item)
                        if item is None:
                            continue
                        if isinstance(item, list):
                            new_items.extend(item)
                            continue
                    new_items.append(item)
                value[:] = new_items
            elif isinstance(value, ast.AST):
                new = self.visit(value)
                if new is None:
                    delattr(node, field)
                else:
                    setattr(node, field, new)
        return node

    def visit_If(self, node: ast.If):
        node.test = _as_test(self.visit(node.test))
        if is_const(node.test):
            self.changed = True
            return self._body(node.body if node.test.value else node.orelse)
        self.generic_visit(node)
        if not node.orelse and all(isinstance(s, ast.Pass) for s in node.body) and is_pure(node.test):
            self.changed = True  # `if TYPE_CHECKING: pass`, what an emptied branch leaves: nothing to do
            return None
        return node

    def visit_While(self, node: ast.While):
        node.test = _as_test(self.visit(node.test))
        if is_const(node.test) and not node.test.value:
            self.changed = True
            return self._body(node.orelse)
        self.generic_visit(node)
        return node

    def visit_For(self, node: ast.For):
        """``for m in (a, None): if m is not None: ...`` skips its None elements: they go (all of them
        gone, so does the loop). What a folded ``(self.bigram, self.ve_shared)`` leaves."""
        self.generic_visit(node)
        guard = node.body[0] if len(node.body) == 1 else None
        if not (isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.Tuple, ast.List)) and not node.orelse
                and isinstance(guard, ast.If) and not guard.orelse and _is_not_none(guard.test, node.target.id)):
            return node
        kept = [e for e in node.iter.elts if not (isinstance(e, ast.Constant) and e.value is None)]
        if len(kept) == len(node.iter.elts):
            return node
        self.changed = True
        if not kept:
            return None
        node.iter.elts = kept
        return node

    def visit_Assert(self, node: ast.Assert):
        self.generic_visit(node)
        node.test = _as_test(node.test)
        if is_const(node.test) and node.test.value:
            self.changed = True
            return None
        return node


def simplify(bodies: list[list[ast.stmt]]) -> bool:
    """Simplify every module body in place; True if anything changed."""
    s = Simplify()
    for i, body in enumerate(bodies):
        module = ast.Module(body=body, type_ignores=[])
        s.generic_visit(module)
        bodies[i][:] = module.body
    return s.changed
