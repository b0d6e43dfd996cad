"""The pgolf module graph of an entry module, read with ``ast`` (nothing is imported or executed).

Edges are absolute ``from pgolf.x import y`` statements (relative ones are resolved). An import at a
module's top level is an *ordering* edge: the imported module must be defined first. An import inside
a function only runs at call time, so it pulls the module into the bundle without ordering it.
``import pgolf.x`` and importing a submodule as a name are refused: a single file has no module objects.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.errors import PgolfError

PACKAGE = "pgolf"


def package_root() -> Path:
    import pgolf

    return Path(pgolf.__file__).resolve().parent


def module_path(name: str, root: Path) -> Path:
    """The source file of module ``name`` (``pgolf.a.b`` -> root/a/b.py or root/a/b/__init__.py)."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise PgolfError(f"module {name}: no source file under {root}")


def is_package_module(name: str | None) -> bool:
    return name is not None and (name == PACKAGE or name.startswith(PACKAGE + "."))


def absolute_module(node: ast.ImportFrom, importer: str, is_init: bool) -> str | None:
    """The absolute module name of a ``from ... import`` (relative imports resolved against ``importer``)."""
    if node.level == 0:
        return node.module
    base = importer.split(".") if is_init else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    top_deps: set[str] = field(default_factory=set)  # imported at top level: must come first
    lazy_deps: set[str] = field(default_factory=set)  # imported inside functions


def _package_imports(mod: Module, root: Path):
    """Yield (ImportFrom node, absolute module, at_top_level) for every pgolf import of ``mod``."""
    top = {id(n) for n in mod.tree.body}
    is_init = mod.path.name == "__init__.py"
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_package_module(alias.name):
                    raise PgolfError(f"{mod.path}:{node.lineno}: `import {alias.name}` cannot be bundled; use `from {alias.name} import NAME`")
        elif isinstance(node, ast.ImportFrom):
            target = absolute_module(node, mod.name, is_init)
            if not is_package_module(target):
                continue
            for alias in node.names:
                if alias.name == "*":
                    raise PgolfError(f"{mod.path}:{node.lineno}: `from {target} import *` cannot be bundled")
                sub = f"{target}.{alias.name}"
                if _is_module(sub, root):
                    raise PgolfError(f"{mod.path}:{node.lineno}: `from {target} import {alias.name}` imports a module; import its names instead")
            yield node, target, id(node) in top


def _is_module(name: str, root: Path) -> bool:
    try:
        module_path(name, root)
    except PgolfError:
        return False
    return True


def load_module(name: str, root: Path) -> Module:
    path = module_path(name, root)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise PgolfError(f"{path}:{exc.lineno}: syntax error ({exc.msg})") from None
    mod = Module(name, path, tree)
    for _, target, at_top in _package_imports(mod, root):
        (mod.top_deps if at_top else mod.lazy_deps).add(target)
    return mod


def collect(entry: str, root: Path | None = None, leave_out: frozenset[str] = frozenset()) -> list[Module]:
    """Every pgolf module reachable from ``entry``, dependencies before dependents, entry last.

    ``leave_out``: modules not to bundle; only imports inside functions may reach them (the inliner
    turns those imports into ``raise ImportError``).
    """
    root = root or package_root()
    modules: dict[str, Module] = {}
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in modules:
            continue
        modules[name] = mod = load_module(name, root)
        reached_at_top = mod.top_deps & leave_out
        if reached_at_top:
            raise PgolfError(f"{mod.path}: imports {', '.join(sorted(reached_at_top))} at its top level, so it cannot be left out")
        pending.extend(sorted((mod.top_deps | mod.lazy_deps) - leave_out))
    return _topological(modules, entry)


def _topological(modules: dict[str, Module], entry: str) -> list[Module]:
    order: list[Module] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = placed

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise PgolfError(f"import cycle at module top level: {' -> '.join(chain + [name])}")
        state[name] = 1
        for dep in sorted(modules[name].top_deps):
            visit(dep, chain + [name])
        state[name] = 2
        order.append(modules[name])

    for name in sorted(n for n in modules if n != entry):
        visit(name, [])
    visit(entry, [])
    if order[-1].name != entry:  # the entry must be last: its __main__ block runs the rest
        raise PgolfError(f"entry {entry} is imported by another bundled module")
    return order
