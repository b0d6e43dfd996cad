"""The inliner on a synthetic package: clashing names are renamed consistently, aliases and lazy
imports resolve, registering decorators survive tree shaking while dead code goes, and what cannot
be bundled safely fails with one clear error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pgolf.bundle.graph import collect
from pgolf.bundle.inline import inline
from pgolf.errors import PgolfError

MODULES = {
    "__init__.py": "VERSION = '1'\n",
    "a.py": """
        from typing import Mapping
        REG = {}
        def helper(): return "a"
        def register(name):
            def deco(fn):
                REG[name] = fn
                return fn
            return deco
        @register("x")
        def x_impl(): return "x"
        def unused_in_bundle(): return "dead"
        def typed(m: Mapping): return len(m)
    """,
    "b.py": """
        from collections.abc import Mapping
        from pgolf.a import helper as a_helper
        def helper(): return "b" + a_helper()
        def lazy():
            from pgolf.a import REG
            from pgolf import VERSION
            return sorted(REG), VERSION, isinstance({}, Mapping)
    """,
    "entry.py": """
        from pgolf.a import helper, typed
        from pgolf.b import helper as bh, lazy
        RESULT = []
        if __name__ == "__main__":
            RESULT.append((helper(), bh(), lazy(), typed({1: 2})))
    """,
}


def make_package(root: Path, modules: dict[str, str]) -> Path:
    pkg = root / "pgolf"
    pkg.mkdir()
    for name, text in modules.items():
        (pkg / name).write_text(textwrap.dedent(text))
    return pkg


def run_source(source: str) -> list:
    namespace = {"__name__": "__main__"}
    exec(compile(source, "bundle.py", "exec"), namespace)
    return namespace["RESULT"]


def test_clashes_aliases_lazy_imports_and_registries(tmp_path):
    modules = collect("pgolf.entry", make_package(tmp_path, MODULES))
    assert [m.name for m in modules][-1] == "pgolf.entry"
    source = inline(modules)
    assert run_source(source) == [("a", "ba", (["x"], "1", True), 1)]
    assert "def helper_b(" in source and "Mapping as Mapping_b" in source
    assert "unused_in_bundle" not in source and "def x_impl(" in source  # shaken, but the registered one stays
    assert "pgolf" not in source.replace("# ---- pgolf", "")
    assert "unused_in_bundle" in inline(modules, tree_shake=False)


@pytest.mark.parametrize("changes,message", [
    ({"b.py": "def helper(helper=1): return helper\n"}, "also parameters or class attributes"),
    ({"entry.py": "import pgolf.a\nRESULT = []\n"}, "cannot be bundled"),
    ({"entry.py": "from pgolf import a\nRESULT = []\n"}, "imports a module"),
    ({"a.py": "from pgolf.b import helper\n", "b.py": "from pgolf.a import helper\n"}, "import cycle"),
    ({"entry.py": "from pgolf.a import nothing_here\nRESULT = []\n"}, "no top-level name 'nothing_here'"),
])
def test_unbundleable_code_fails_loudly(tmp_path, changes, message):
    modules = {**MODULES, **changes}
    if "b.py" in changes and "a.py" not in changes and "helper(helper" in changes["b.py"]:
        modules["entry.py"] = "from pgolf.a import helper\nfrom pgolf.b import helper as bh\nRESULT = []\n"
    if "a.py" in changes:
        modules["entry.py"] = "from pgolf.a import helper\nRESULT = []\n"
    with pytest.raises(PgolfError, match=message):
        inline(collect("pgolf.entry", make_package(tmp_path, modules)))


def test_a_left_out_module_is_not_bundled_and_its_lazy_import_raises_import_error(tmp_path):
    modules = {
        **MODULES,
        "opt.py": "import sys\nREGISTERED = sys.modules.setdefault('side_effect', object())\ndef fast(): return 'fast'\n",
        "entry.py": """
            def pick(on):
                if not on:
                    return "plain"
                try:
                    from pgolf.opt import fast
                except ImportError as exc:
                    return str(exc)
                return fast()
            RESULT = []
            if __name__ == "__main__":
                RESULT.append((pick(False), pick(True)))
        """,
    }
    root = make_package(tmp_path, modules)
    with_it = collect("pgolf.entry", root)
    assert "pgolf.opt" in [m.name for m in with_it]
    assert run_source(inline(with_it)) == [("plain", "fast")]
    without = collect("pgolf.entry", root, leave_out=frozenset({"pgolf.opt"}))
    assert "pgolf.opt" not in [m.name for m in without]
    source = inline(without, left_out=frozenset({"pgolf.opt"}))
    assert "side_effect" not in source
    assert run_source(source) == [("plain", "pgolf.opt is not in this bundle")]


def test_a_module_imported_at_top_level_cannot_be_left_out(tmp_path):
    with pytest.raises(PgolfError, match=r"imports pgolf\.a at its top level, so it cannot be left out"):
        collect("pgolf.entry", make_package(tmp_path, MODULES), leave_out=frozenset({"pgolf.a"}))


def test_hoisted_imports_merge_per_module_and_unused_pure_ones_go():
    import ast

    from pgolf.bundle.shake import shake_imports

    lines = ["from dataclasses import dataclass", "import zstandard", "import torch", "from torch import nn",
             "from dataclasses import dataclass, field", "import brotli", "from torch import Tensor, nn"]
    body = ast.parse("@dataclass\nclass A:\n    x: int = field(default=1)\n\ndef f(t: Tensor):\n    return nn, brotli").body
    # zstandard: unused and side-effect free; torch: unused but not known to be, kept
    assert shake_imports(lines, [body]) == ["from dataclasses import dataclass, field", "import torch", "from torch import nn, Tensor", "import brotli"]
