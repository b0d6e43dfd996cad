"""Constant propagation on the bundle's AST, so that folded config values reach the code they switch.

After the specialiser folds ``cfg.model.use_smeargate`` to ``False``, the value often travels
further before it is tested: into a local (``gate = "none"``), a function argument
(``build_loader("sequential", ...)``), a constructor argument stored on the instance
(``self.gptj_parallel = False``) or a dataclass field (``AttentionOptions(gate="none")``). Each rule
here substitutes a literal only where the binding is provably unique:

* a local assigned exactly once, directly in its function's body, to a literal, and never rebound
  anywhere in that function (nested scopes included);
* a parameter of a top-level function (or of a class's ``__init__``) whose every call passes the same
  literal (or leaves the same literal default), when the function's name is used only to call it;
  and of a method that only its own class's methods call, as ``self.m(...)`` (its name defined by
  no other class, used no other way, no string equal to it, no hook of an external base);
* an attribute ``self.a`` of a class that is only ever stored in that class's own methods, always
  with the same literal, and no ``x.a = ...`` appears anywhere else;
* a field of a ``@dataclass`` that every construction gives the same literal, read through a
  receiver whose type is known (see :class:`pgolf.bundle.types.Types`).
"""

from __future__ import annotations

import ast
from typing import Any, Iterator

from pgolf.bundle.names import names_bound_by, names_read, walk
from pgolf.bundle.simplify import is_pure, literal_value
from pgolf.bundle.types import Types, function_scopes, is_dataclass, methods, self_name, walk_scope

_MISSING = object()
_FRAMEWORK_SET = {"training"}  # attributes torch itself stores on modules (nn.Module.train)


def literal_node(value: Any, like: ast.AST) -> ast.expr:
    node = ast.Tuple([ast.Constant(v) for v in value], ast.Load()) if isinstance(value, tuple) else ast.Constant(value)
    return ast.copy_location(node, like)


def _bound_anywhere(fn: ast.AST) -> dict[str, int]:
    """How often each name is bound inside ``fn`` (nested scopes included; parameters count too)."""
    counts: dict[str, int] = {}
    for node in walk(fn):
        for name in names_bound_by(node) if node is not fn else ():
            counts[name] = counts.get(name, 0) + 1
    return counts


class _Substitute(ast.NodeTransformer):
    def __init__(self, values: dict[str, Any]):
        self.values = values
        self.count = 0

    def visit_Name(self, node: ast.Name):
        if isinstance(node.ctx, ast.Load) and node.id in self.values:
            self.count += 1
            return literal_node(self.values[node.id], node)
        return node


def _substitute_in_body(fn: ast.FunctionDef | ast.AsyncFunctionDef, values: dict[str, Any]) -> int:
    if not values:
        return 0
    sub = _Substitute(values)
    for stmt in fn.body:
        sub.visit(stmt)
    return sub.count


def propagate_locals(bodies: list[list[ast.stmt]]) -> int:
    """Locals assigned once, at the top of their function's body, to a literal (the assignment
    goes once nothing reads the name)."""
    total = 0
    for fn, _ in function_scopes(bodies):
        counts = _bound_anywhere(fn)
        values: dict[str, Any] = {}
        for stmt in fn.body:
            target = (stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                      else stmt.target if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else None)
            if isinstance(target, ast.Name):
                ok, value = literal_value(stmt.value)
                if ok and counts.get(target.id) == 1:
                    values[target.id] = value
        total += _substitute_in_body(fn, values)
        total += _drop_dead_literal_stores(fn, set(values))
    return total


def _store_names(target: ast.expr) -> list[str] | None:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple) and all(isinstance(e, ast.Name) for e in target.elts):
        return [e.id for e in target.elts]
    return None


def drop_dead_pure_stores(bodies: list[list[ast.stmt]]) -> int:
    """Remove ``x = <no side effects>`` (or ``a, b = ...``) in a function body when nothing in the
    function reads those names (what folding leaves behind, e.g. ``q = s.cfg.quant`` with its uses gone)."""
    total = 0
    for fn, _ in function_scopes(bodies):
        loaded = names_read(fn)
        if loaded & {"locals", "vars", "eval", "exec"}:
            continue  # names may be read by string
        declared = {name for n in walk(fn) if isinstance(n, (ast.Global, ast.Nonlocal)) for name in n.names}
        kept = []
        for stmt in fn.body:
            names = _store_names(stmt.targets[0]) if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
            if names and not (set(names) & (loaded | declared)) and is_pure(stmt.value):
                total += 1
                continue
            kept.append(stmt)
        fn.body = kept or [ast.Pass()]
    return total


def _drop_dead_literal_stores(fn: ast.FunctionDef, names: set[str]) -> int:
    """Remove ``name = literal`` statements of ``names`` that nothing in ``fn`` reads any more."""
    read = names_read(fn)
    dead = names - read
    if not dead:
        return 0
    before = len(fn.body)
    fn.body = [
        s for s in fn.body
        if not (isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name) and s.targets[0].id in dead)
        and not (isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.target.id in dead)
    ] or [ast.Pass()]
    return int(len(fn.body) != before)


def name_uses(bodies: list[list[ast.stmt]]) -> tuple[dict[str, list[ast.Call]], set[str]]:
    """Per global-looking name: the calls made through it, and the names used any other way
    (names inside annotations only name a type: they are neither)."""
    calls: dict[str, list[ast.Call]] = {}
    skip: set[int] = set()
    names: list[ast.Name] = []
    for body in bodies:
        for node in walk(ast.Module(body=body, type_ignores=[])):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                calls.setdefault(node.func.id, []).append(node)
                skip.add(id(node.func))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                names.append(node)
            for ann in (getattr(node, "annotation", None), getattr(node, "returns", None)):
                if isinstance(ann, ast.AST):
                    skip.update(id(n) for n in walk(ann))
    return calls, {n.id for n in names if id(n) not in skip}


def call_bindings(fn: ast.FunctionDef, call: ast.Call, skip_first: bool) -> dict[str, Any] | None:
    """Parameter -> literal (or _MISSING when not a literal) for one call; None if it cannot be mapped."""
    a = fn.args
    if a.vararg or a.kwarg or any(isinstance(x, ast.Starred) for x in call.args) or any(k.arg is None for k in call.keywords):
        return None
    positional = [*a.posonlyargs, *a.args][1 if skip_first else 0:]
    if len(call.args) > len(positional):
        return None
    bound: dict[str, ast.expr] = dict(zip((p.arg for p in positional), call.args))
    kwonly = {p.arg for p in a.kwonlyargs}
    for kw in call.keywords:
        if kw.arg in bound or (kw.arg not in kwonly and kw.arg not in {p.arg for p in a.args}):
            return None
        bound[kw.arg] = kw.value
    defaults = dict(zip((p.arg for p in positional[len(positional) - len(a.defaults):]), a.defaults)) if a.defaults else {}
    defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
    out: dict[str, Any] = {}
    for p in [*positional, *a.kwonlyargs]:
        expr = bound.get(p.arg, defaults.get(p.arg))
        if expr is None:
            return None  # a required argument is missing: the call fails at run time; leave it alone
        ok, value = literal_value(expr)
        out[p.arg] = value if ok else _MISSING
    return out


def _agreed(fn: ast.FunctionDef, calls: list[ast.Call], skip_first: bool) -> dict[str, Any]:
    """Parameters that every call binds to the same literal."""
    agreed: dict[str, Any] | None = None
    for call in calls:
        bound = call_bindings(fn, call, skip_first)
        if bound is None:
            return {}
        if agreed is None:
            agreed = dict(bound)
            continue
        for name, value in bound.items():
            old = agreed.get(name, _MISSING)
            if old is _MISSING or value is _MISSING or type(old) is not type(value) or old != value:
                agreed[name] = _MISSING
    counts = _bound_anywhere(fn)
    return {k: v for k, v in (agreed or {}).items() if v is not _MISSING and counts.get(k) == 1}


# Decorators whose wrapper passes every argument through to the function unchanged (and runs it in a
# no-grad context): the function's parameters fold as an undecorated one's. Never inlined (trivial.py):
# the context would go.
_FORWARDING_DECORATORS = {"torch.no_grad()", "torch.inference_mode()"}


def _arguments_reach_body(fn: ast.FunctionDef) -> bool:
    """Calls of ``fn``'s name bind its own parameters: no decorator, or only forwarding ones."""
    return all(ast.unparse(d) in _FORWARDING_DECORATORS for d in fn.decorator_list)


def propagate_arguments(bodies: list[list[ast.stmt]], types: Types, uses) -> int:
    """Parameters of top-level functions and of class constructors that every call fixes
    (``uses``: :func:`name_uses` of ``bodies``)."""
    calls, escaped = uses
    total = 0
    for body in bodies:
        for stmt in body:
            if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) or stmt.name in escaped or stmt.name not in calls:
                continue
            if isinstance(stmt, ast.FunctionDef) and _arguments_reach_body(stmt):
                total += _substitute_in_body(stmt, _agreed(stmt, calls[stmt.name], skip_first=False))
            elif isinstance(stmt, ast.ClassDef) and not types.subclassed(stmt.name) and not is_dataclass(stmt):
                init = next((m for m in methods(stmt) if m.name == "__init__" and not m.decorator_list), None)
                if init is not None:
                    total += _substitute_in_body(init, _agreed(init, calls[stmt.name], skip_first=True))
    return total


def _self_calls_only(bodies: list[list[ast.stmt]]) -> dict[tuple[str, str], list[ast.Call]]:
    """(class, method) -> its calls, for each method that is called only as ``self.m(...)`` from its
    own class's methods: every other ``.m`` in the bundle (a reference, a call on another receiver,
    which could be anything's ``m``) or a string equal to ``m`` rules it out."""
    from pgolf.bundle.shake import bundle_strings, external_hooks, uses_dynamic_lookup

    if uses_dynamic_lookup(bodies):
        return {}
    classes = {s.name: s for body in bodies for s in body if isinstance(s, ast.ClassDef)}
    owners: dict[str, list[str]] = {}
    for cls in classes.values():
        for m in methods(cls):
            owners.setdefault(m.name, []).append(cls.name)
    calls: dict[str, list[ast.Call]] = {}
    in_self_call: set[int] = set()
    for fn, cls in function_scopes(bodies):
        me = self_name(fn) if cls is not None else None
        for node in walk_scope(fn.body) if me is not None else ():  # not nested scopes: ``self`` may be rebound there
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == me \
                    and owners.get(node.func.attr) == [cls.name]:
                calls.setdefault(node.func.attr, []).append(node)
                in_self_call.add(id(node.func))
    ruled_out = bundle_strings(bodies) | {node.attr for body in bodies for stmt in body for node in walk(stmt)
                                          if isinstance(node, ast.Attribute) and id(node) not in in_self_call}
    out = {}
    for cls in classes.values():
        hooks = external_hooks(cls, classes)
        if cls.keywords or hooks is None:
            continue
        for m in methods(cls):
            # in ``calls``, its name is defined by this class alone
            if m.name in calls and m.name not in ruled_out and m.name not in hooks and not (m.name.startswith("__") and m.name.endswith("__")) \
                    and _arguments_reach_body(m) and self_name(m) is not None:
                out[cls.name, m.name] = calls[m.name]
    return out


def propagate_method_arguments(bodies: list[list[ast.stmt]]) -> int:
    """Parameters of methods called only as ``self.m(...)`` by their own class (see
    :func:`_self_calls_only`): those every call fixes to the same literal take it, then those
    nothing reads go with what the calls pass for them (where that has no effects)."""
    total = 0
    found = _self_calls_only(bodies)
    if not found:
        return 0
    for cls in (s for body in bodies for s in body if isinstance(s, ast.ClassDef)):
        for m in methods(cls):
            if (cls.name, m.name) in found:
                calls = found[cls.name, m.name]
                total += _substitute_in_body(m, _agreed(m, calls, skip_first=True))
                total += _drop_unused(m, calls, skip_first=True)
    return total


def drop_empty_kwargs(bodies: list[list[ast.stmt]], uses) -> int:
    """A top-level function's ``**kw`` that no call can fill (every call names only declared
    parameters, none passes ``**``) is always ``{}``: ``f(..., **kw)`` inside it loses the
    ``**kw``, and the parameter goes once nothing else reads it."""
    calls, escaped = uses
    total = 0
    for body in bodies:
        for fn in body:
            if (not isinstance(fn, ast.FunctionDef) or fn.args.kwarg is None or fn.decorator_list
                    or fn.name in escaped or fn.name not in calls):
                continue
            declared = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
            if any(k.arg is None or k.arg not in declared for c in calls[fn.name] for k in c.keywords):
                continue
            kw = fn.args.kwarg.arg
            if _bound_anywhere(fn).get(kw) != 1:
                continue
            for node in walk(fn):
                if isinstance(node, ast.Call):
                    spread = [k for k in node.keywords if k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kw]
                    node.keywords = [k for k in node.keywords if k not in spread]
                    total += len(spread)
            if not any(isinstance(n, ast.Name) and n.id == kw for n in walk(fn)):
                fn.args.kwarg = None
                total += 1
    return total


def _stored(target: ast.expr) -> Iterator[ast.expr]:
    """The expressions a store to ``target`` rebinds: the target, or each element of an unpacking.
    ``self.a.x = v`` and ``self.a[i] = v`` store *through* ``self.a``: they do not rebind it (and
    :func:`literal_value`'s values are immutable: a store through one would raise)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _stored(element)
    elif isinstance(target, ast.Starred):
        yield from _stored(target.value)
    else:
        yield target


def _self_attribute_stores(cls: ast.ClassDef) -> Iterator[tuple[str, ast.expr | None]]:
    """(attribute, assigned value or None when not a plain assignment) for every ``self.a`` store."""
    for m in methods(cls):
        me = self_name(m)
        for node in walk(m):
            targets: list[tuple[ast.expr, ast.expr | None]] = []
            if isinstance(node, ast.Assign):
                simple = len(node.targets) == 1
                targets = [(t, node.value if simple else None) for t in node.targets]
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [(node.target, None)]
            for target, value in targets:
                for sub in _stored(target):
                    if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == me:
                        yield sub.attr, value if sub is target else None


class _SelfAttributes(ast.NodeTransformer):
    def __init__(self, me: str, values: dict[str, Any]):
        self.me, self.values, self.count = me, values, 0

    def visit_Attribute(self, node: ast.Attribute):
        self.generic_visit(node)
        if (isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name) and node.value.id == self.me
                and node.attr in self.values):
            self.count += 1
            return literal_node(self.values[node.attr], node)
        return node


def _constant_self_attributes(cls: ast.ClassDef, types: Types) -> dict[str, Any]:
    """The attributes of ``cls`` (not subclassed) whose every store is the same literal, stored by
    its own methods only."""
    if types.subclassed(cls.name):
        return {}
    class_level = set(types.class_body_names(cls))
    values: dict[str, Any] = {}
    spoiled: set[str] = set()
    for attr, value in _self_attribute_stores(cls):
        ok, lit = literal_value(value) if value is not None else (False, None)
        if not ok or attr in types.outside_stores or attr in class_level or attr in _FRAMEWORK_SET:
            spoiled.add(attr)
        elif attr in values and (type(values[attr]) is not type(lit) or values[attr] != lit):
            spoiled.add(attr)
        else:
            values[attr] = lit
    return {k: v for k, v in values.items() if k not in spoiled}


def self_attribute_constants(bodies: list[list[ast.stmt]], types: Types) -> dict[str, dict[str, Any]]:
    """Class name -> its :func:`_constant_self_attributes`: for reads through a receiver of known type
    outside the class (``model.lm_head`` where ``GPT.__init__`` only ever sets ``self.lm_head = None``)."""
    out = {}
    for body in bodies:
        for cls in body:
            if isinstance(cls, ast.ClassDef):
                values = _constant_self_attributes(cls, types)
                if values:
                    out[cls.name] = values
    return out


def propagate_self_attributes(bodies: list[list[ast.stmt]], types: Types) -> int:
    """``self.a`` reads in a class whose every store of ``a`` is the same literal."""
    total = 0
    for body in bodies:
        for cls in body:
            if not isinstance(cls, ast.ClassDef):
                continue
            values = _constant_self_attributes(cls, types)
            if not values:
                continue
            for m in methods(cls):
                me = self_name(m)
                if me is None:
                    continue
                sub = _SelfAttributes(me, values)
                for stmt in m.body:
                    sub.visit(stmt)
                total += sub.count
    return total


def drop_unread_constant_attributes(bodies: list[list[ast.stmt]], types: Types) -> int:
    """Remove ``self.a = <literal>`` where every store of ``a`` is that literal (so the reads, if any,
    were folded by :func:`propagate_self_attributes`) and nothing in the bundle reads ``a`` any more:
    no ``x.a`` load anywhere, and no string constant ``"a"`` (``getattr(self, name)`` over a tuple
    of names). What folding leaves behind: ``self.row_normalize = False`` with its test gone."""
    loaded, strings = set(), set()
    for body in bodies:
        for node in walk(ast.Module(body=body, type_ignores=[])):
            if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
                loaded.add(node.attr)
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Attribute):
                loaded.add(node.target.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
    total = 0
    for body in bodies:
        for cls in body:
            if not isinstance(cls, ast.ClassDef):
                continue
            dead = {a for a in _constant_self_attributes(cls, types) if a not in loaded and a not in strings}
            if not dead:
                continue
            for m in methods(cls):
                me = self_name(m)
                if me is not None:
                    total += _drop_attribute_stores(m, me, dead)
    return total


def _drop_attribute_stores(fn: ast.FunctionDef | ast.AsyncFunctionDef, me: str, dead: set[str]) -> int:
    removed = 0

    def prune(body: list[ast.stmt]) -> list[ast.stmt]:
        nonlocal removed
        out = []
        for stmt in body:
            target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == me \
                    and target.attr in dead and literal_value(stmt.value)[0]:
                removed += 1
                continue
            for name in ("body", "orelse", "finalbody"):
                inner = getattr(stmt, name, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt) \
                        and not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    setattr(stmt, name, prune(inner) or ([ast.Pass()] if name == "body" else []))
            out.append(stmt)
        return out

    fn.body = prune(fn.body) or [ast.Pass()]
    return removed


def dataclass_field_constants(bodies: list[list[ast.stmt]], types: Types, uses) -> dict[str, dict[str, Any]]:
    """Dataclass -> field -> the literal every construction gives it (constructions by keyword or
    position; ``uses``: :func:`name_uses` of ``bodies``)."""
    calls, escaped = uses
    out: dict[str, dict[str, Any]] = {}
    for body in bodies:
        for cls in body:
            if not isinstance(cls, ast.ClassDef) or not is_dataclass(cls) or cls.name in escaped:
                continue
            if types.subclassed(cls.name) or cls.name not in calls:
                continue
            fields = [(s.target.id, s.value) for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
            agreed: dict[str, Any] = {}
            for i, (name, default) in enumerate(fields):
                value: Any = _MISSING
                for call in calls[cls.name]:
                    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
                        value = _MISSING
                        break
                    expr = call.args[i] if i < len(call.args) else next((k.value for k in call.keywords if k.arg == name), default)
                    ok, lit = literal_value(expr) if expr is not None else (False, None)
                    if not ok or (value is not _MISSING and (type(value) is not type(lit) or value != lit)):
                        value = _MISSING
                        break
                    value = lit
                if value is not _MISSING and not types.stored(cls.name, name, unless=value):
                    agreed[name] = value
            if agreed:
                out[cls.name] = agreed
    return out


def _bound_in_bundle(bodies: list[list[ast.stmt]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for body in bodies:
        for node in walk(ast.Module(body=body, type_ignores=[])):
            for name in names_bound_by(node):
                counts[name] = counts.get(name, 0) + 1
    return counts


def _drop_argument(call: ast.Call, fn: ast.FunctionDef, param: str, skip_first: bool) -> bool | None:
    """Remove what ``call`` passes for ``param`` (True if it passed something); None when that would
    lose an effect. A positional argument before others may go: the parameter goes from the
    definition too, so the ones after it still bind as before."""
    positional = [p.arg for p in [*fn.args.posonlyargs, *fn.args.args][1 if skip_first else 0:]]
    keyword = next((k for k in call.keywords if k.arg == param), None)
    if keyword is not None:
        if not is_pure(keyword.value):
            return None
        call.keywords.remove(keyword)
        return True
    if param in positional and positional.index(param) < len(call.args):
        if not is_pure(call.args[positional.index(param)]):
            return None
        call.args.pop(positional.index(param))
        return True
    return False


def _unused_parameters(fn: ast.FunctionDef, skip_first: bool) -> list[str]:
    """Parameters nothing in ``fn`` names, the last first (so that positional arguments come off the end)."""
    a = fn.args
    named = {n.id for n in walk(fn) if isinstance(n, ast.Name)}
    params = [p.arg for p in [*a.posonlyargs, *a.args][1 if skip_first else 0:]] + [p.arg for p in a.kwonlyargs]
    return [p for p in reversed(params) if p not in named and _bound_anywhere(fn).get(p) == 1]


def _remove_parameter(fn: ast.FunctionDef, param: str) -> None:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    names = [p.arg for p in positional]
    if param in names:
        i = names.index(param)
        first_default = len(positional) - len(a.defaults)
        if i >= first_default:
            del a.defaults[i - first_default]
        if i < len(a.posonlyargs):
            del a.posonlyargs[i]
        else:
            del a.args[i - len(a.posonlyargs)]
        return
    i = [p.arg for p in a.kwonlyargs].index(param)
    del a.kwonlyargs[i], a.kw_defaults[i]


def drop_unused_parameters(bodies: list[list[ast.stmt]], types: Types, uses) -> int:
    """Parameters of top-level functions and class constructors that nothing in the function reads
    (the folding left many: ``lr_scale(..., warmdown_frac=0.0)`` once the schedule is fixed) go, with
    what every call passes for them, where the function's name is bound once in the bundle and used
    only to call it, and each argument dropped is free of effects (``uses``: :func:`name_uses`)."""
    calls, escaped = uses
    bound = _bound_in_bundle(bodies)
    total = 0
    for body in bodies:
        for stmt in body:
            if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) or stmt.name in escaped or stmt.name not in calls \
                    or bound.get(stmt.name) != 1:
                continue
            if isinstance(stmt, ast.FunctionDef) and _arguments_reach_body(stmt):
                fn, skip_first = stmt, False
            elif isinstance(stmt, ast.ClassDef) and not types.subclassed(stmt.name) and not is_dataclass(stmt):
                fn = next((m for m in methods(stmt) if m.name == "__init__" and not m.decorator_list), None)
                skip_first = True
                if fn is None or any(n.name == "__new__" for n in methods(stmt)):
                    continue
            else:
                continue
            total += _drop_unused(fn, calls[stmt.name], skip_first)
    return total


def _drop_unused(fn: ast.FunctionDef, calls: list[ast.Call], skip_first: bool) -> int:
    """Drop ``fn``'s unread parameters with what each of ``calls`` (all its calls) passes for them."""
    if fn.args.vararg or fn.args.kwarg or any(call_bindings(fn, c, skip_first) is None for c in calls):
        return 0
    total = 0
    for param in _unused_parameters(fn, skip_first):
        trial = [(c, list(c.args), list(c.keywords)) for c in calls]
        if any(_drop_argument(c, fn, param, skip_first) is None for c in calls):
            for c, args, keywords in trial:  # put back what the calls before the refusing one lost
                c.args, c.keywords = args, keywords
            continue
        _remove_parameter(fn, param)
        total += 1
    return total
