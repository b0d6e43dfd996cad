"""Configuration specialisation on small sources: each construct folds where the value is provably
the frozen one, and stays where it is not; plus which fields a configuration folds."""

from __future__ import annotations

import ast
import textwrap

import pytest

from pgolf.bundle.shake import shake, shake_imports
from pgolf.bundle.simplify import simplify
from pgolf.bundle.specialise import folded_by_section, folded_envs, folded_fields, specialise
from pgolf.presets import build_config

CONFIG = """
from dataclasses import dataclass, field
@dataclass
class MC:
    flag: bool = False
    kind: str = "a"
    width: int = 4
@dataclass
class Root:
    model: MC = field(default_factory=MC)
"""
FOLD = {"MC": {"flag": False, "kind": "a"}}


def run(source: str, fields=FOLD, shaken: bool = True, shake_between: bool = False) -> str:
    bodies = [ast.parse(textwrap.dedent(CONFIG)).body, ast.parse(textwrap.dedent(source)).body]
    specialise(bodies, fields, tree_shake=shake_between)
    if shaken:
        bodies = shake(bodies)
    return ast.unparse(ast.Module(body=bodies[1], type_ignores=[]))


def simplified(source: str) -> str:
    body = ast.parse(textwrap.dedent(source)).body
    simplify([body])
    return ast.unparse(ast.Module(body=body, type_ignores=[]))


@pytest.mark.parametrize("source,expected", [
    ("if False:\n    a()\nelse:\n    b()", "b()"),
    ("if True:\n    a()\nelif c:\n    b()", "a()"),
    ("x = a() if not True else b()", "x = b()"),
    ("x = 'a' == 'a' and 2 > 1", "x = True"),
    ("x = y and True", "x = y and True"),  # the value of y, not a bool: kept
    ("if y and True:\n    a()", "if y:\n    a()"),
    ("if y.z and False:\n    a()", ""),  # pure operand, only the truth value is used
    ("if f() and False:\n    a()", "if f() and False:\n    a()"),  # f() may have effects: kept
    ("x = False or y", "x = y"),
    # a loop that skips None skips the None literals folding left in its tuple; all of them, and it goes
    ("for m in (a, None):\n    if m is not None:\n        f(m)", "for m in (a,):\n    if m is not None:\n        f(m)"),
    ("for m in (None, None):\n    if m is not None:\n        f(m)", ""),
    ("for m in (None, b):\n    if m is not None:\n        f(m)\n    g()", "for m in (None, b):\n    if m is not None:\n        f(m)\n    g()"),
    ("for m in (None, b):\n    if m is None:\n        f(m)", "for m in (None, b):\n    if m is None:\n        f(m)"),
    ("def f():\n    return 1\n    g()", "def f():\n    return 1"),
    ("x = 3 * 4 + 1", "x = 13"),
    ("x = 0 < 0 <= i", "x = False"),
    ("x = 0 < 0 <= f()", "x = 0 < 0 <= f()"),
    ("x = 'a' in ('a', y.z)", "x = True"),
    ("x = 'a' not in ['b', y, 'a']", "x = False"),
    ("x = 'a' in ('b', f())", "x = 'a' in ('b', f())"),  # f() may have effects
    ("x = 'a' in ('b', y)", "x = 'a' in ('b', y)"),  # y may equal 'a'
    ("if ():\n    a()", ""),
    ("x = False + False + True > 1", "x = False"),
    ("x = {'a': 1, **({'b': f()} if False else {}), 'c': 2}", "x = {'a': 1, 'c': 2}"),  # a folded splice
    ("x = {'a': 1, **{'b': 2}, **d}", "x = {'a': 1, **{'b': 2}, **d}"),  # a splice that adds keys stays
    ("if TYPE_CHECKING:\n    pass", ""),
    ("if f():\n    pass", "if f():\n    pass"),  # f() may have effects
])
def test_simplify(source, expected):
    assert simplified(source) == expected


def test_annotated_parameter_reads_fold_and_dead_definitions_go():
    out = run("""
        def extra(): return 1
        def build(cfg: MC):
            return extra() if cfg.flag else cfg.width
        def main(r: Root):
            return build(r.model)
        main(Root())
    """)
    assert "extra" not in out and "return r.model.width" in out  # build() became trivial and was inlined


def test_self_attribute_and_local_receivers_fold():
    out = run("""
        class Net:
            def __init__(self, cfg: MC):
                self.cfg = cfg
                m = cfg
                self.mode = 'x' if m.kind == 'a' else 'y'
            def forward(self):
                if self.cfg.flag:
                    return 'flag'
                return self.mode
        Net(MC()).forward()
    """)
    assert "'flag'" not in out and "return 'x'" in out


def test_a_field_stored_anywhere_is_not_folded():
    out = run("""
        def f(cfg: MC):
            cfg.flag = True
            return cfg.flag
        f(MC())
    """)
    assert "return cfg.flag" in out


def test_comprehension_and_lambda_targets_shadow_the_receiver():
    out = run("""
        def f(cfg: MC, items):
            a = [cfg.flag for cfg in items]
            b = lambda cfg: cfg.flag
            return a, b, cfg.flag
        f(MC(), [])
    """)
    assert "[cfg.flag for cfg in items]" in out and "lambda cfg: cfg.flag" in out and "return (a, b, False)" in out


def test_arguments_every_call_agrees_on_propagate_and_disagreeing_ones_do_not():
    out = run("""
        def pick(kind, n):
            if kind == 'a':
                return n
            return heavy(n)
        def heavy(n): return n * 2
        def vary(k):
            return 1 if k else 2
        def main(cfg: MC):
            return pick(cfg.kind, 1), pick('a', 2), vary(True), vary(False)
        main(MC())
    """)
    assert "heavy" not in out and "return 1 if k else 2" in out


def test_a_function_used_as_a_value_keeps_its_parameters():
    out = run("""
        def pick(kind):
            return 1 if kind == 'a' else 2
        def main():
            table = {'p': pick}
            return pick('a'), table
        main()
    """)
    assert "return 1 if kind == 'a' else 2" in out


def test_instance_attributes_and_dataclass_fields_that_are_always_one_literal_fold():
    out = run("""
        from dataclasses import dataclass
        @dataclass
        class Opts:
            gate: str = 'none'
            size: int = 1
        def gate_impl(x): return x
        class Layer:
            def __init__(self, opts: Opts, parallel):
                self.opts = opts
                self.parallel = parallel
            def forward(self, x):
                if self.opts.gate != 'none':
                    x = gate_impl(x)
                return x if not self.parallel else x * self.opts.size
        def build(cfg: MC, n):
            return [Layer(Opts(gate='out' if cfg.flag else 'none', size=n), cfg.flag) for _ in range(n)]
        build(MC(), 2)
    """)
    assert "gate_impl" not in out and "return x" in out and "self.opts.size" not in out


def test_folded_fields_are_the_switches_of_the_configuration():
    cfg = build_config("baseline", environ={})
    folded = folded_fields(cfg)
    assert folded[("model", "use_smeargate")] is False and folded[("model", "tie_embeddings")] is True
    assert folded[("model", "mlp_activation")] == "relu2" and folded[("model", "xsa_last_n")] == 0
    for dynamic in ("iterations", "seed", "max_wallclock_seconds", "device", "compile", "attn_backend", "data_path"):
        assert ("train", dynamic) not in folded and ("data", dynamic) not in folded
    assert ("optim", "matrix_lr") not in folded
    assert folded_by_section(cfg)["model"]["use_smeargate"] is False and folded_by_section(cfg)["optim"]["muon_wd"] == 0.0
    assert isinstance(folded_by_section(cfg)["optim"]["muon_wd"], float) and folded_envs(cfg)["logit_softcap_kind"] == "SOFTCAP_TYPE"
    on = build_config("baseline", ["XSA_LAST_N=4", "MUON_WD=0.04"], environ={})
    assert ("model", "xsa_last_n") not in folded_fields(on) and ("optim", "muon_wd") not in folded_fields(on)


def test_a_store_through_a_receiver_of_another_known_type_does_not_block_folding():
    out = run("""
        class Session:
            def __init__(self, cfg: MC):
                self.cfg = cfg
                self.kind = None
        def restart(s: Session):
            s.kind = 'b'  # Session.kind, not MC.kind
            return 'window' if s.cfg.kind == 'b' else 'sequential'
        def unknown(x):
            x.flag = True  # receiver of unknown type: MC.flag may be stored, so it stays dynamic
        def main(s: Session):
            unknown(s)
            return restart(s), s.cfg.flag
        main(Session(MC()))
    """)
    assert "return 'sequential'" in out and "s.cfg.flag" in out


def test_dead_literal_stores_go_and_calls_from_dead_code_do_not_block_propagation():
    out = run("""
        def codec(name):
            if name == "zlib":
                return 1
            return heavy()
        def heavy(): return 2
        def unused_caller(): return codec("lzma")
        def main(r: Root):
            off = r.model.flag
            return codec("zlib")
        main(Root())
    """, shake_between=True)
    assert "heavy" not in out and "unused_caller" not in out and "off" not in out


def test_shaking_ignores_annotations_dataclass_constructors_and_mapping_reads():
    source = textwrap.dedent("""
        from __future__ import annotations
        from dataclasses import dataclass
        @dataclass(frozen=True)
        class Codec:
            name: str
        class OnlyAnnotated: pass
        TABLE = {1: Codec("zlib")}
        NAMES = [c.name for c in TABLE.values()]
        REGISTERED = register(Codec("x"))
        def register(c): return c
        def main(x: OnlyAnnotated) -> OnlyAnnotated:
            y: OnlyAnnotated = x
            return y
        main(None)
    """)
    out = ast.unparse(ast.Module(body=shake([ast.parse(source).body])[0], type_ignores=[]))
    assert "class OnlyAnnotated" not in out and "TABLE" not in out and "NAMES" not in out
    assert "REGISTERED = register" in out and "def register" in out  # a call into bundle code at import time stays


def test_a_name_local_to_a_function_does_not_keep_the_global_of_that_name():
    source = textwrap.dedent("""
        def segments(): return "gone"
        def needed(): return "kept"
        def by_parameter(segments): return segments
        def by_assignment():
            segments = 1
            return segments
        def by_closure():
            segments = 2
            def inner(): return segments
            return inner
        by_lambda = lambda segments: segments
        def by_walrus():
            [(segments := i) for i in range(2)]
            return segments
        def declared_global():
            global needed
            return needed()
        by_parameter(0), by_assignment(), by_closure(), by_lambda(0), by_walrus(), declared_global()
    """)
    out = ast.unparse(ast.Module(body=shake([ast.parse(source).body])[0], type_ignores=[]))
    assert "def segments" not in out and "def needed" in out


def test_unused_standard_library_imports_are_dropped_and_third_party_ones_kept():
    bodies = [ast.parse("def f(x: Any) -> Callable: return Callable, np, copy").body]
    lines = ["from typing import Any, Callable", "import json", "import numpy as np", "import copy as copy", "import torch._dynamo"]
    assert shake_imports(lines, bodies) == ["from typing import Callable", "import numpy as np", "import copy as copy",
                                            "import torch._dynamo"]


def test_trivial_functions_are_inlined_where_their_arguments_have_no_effects():
    out = run("""
        def nothing(a, b=1):
            \"\"\"Folded to nothing.\"\"\"
        def answer(a):
            return 42
        def same(a, b):
            return a
        def width(cfg):
            return cfg.width
        def fresh():
            return []
        def main(r: Root, x):
            nothing(x.y, g())
            nothing(x)
            return answer(x), answer(g()), same(h(), x), same(x, g()), width(r.model), fresh()
        main(Root(), 1)
        main(Root(), 2)
    """)
    assert "def nothing" not in out and "g()\n" in out  # the call went, its effectful argument stayed
    assert "return (42, answer(g()), h(), same(x, g()), r.model.width, [])" in out


def test_module_constants_decide_the_tests_that_read_them():
    out = run("""
        KINDS = ('a', 'b')
        PRESET = 'base'
        FLAG = ''
        def main(x):
            if 'c' not in KINDS:
                x = 1
            y = 2 if FLAG else 3
            return x, y, x or PRESET, PRESET == 'base'
        main(0)
    """)
    assert "x = 1" in out and "return (x, 3, x or 'base', True)" in out


def test_unread_pure_stores_go_and_effectful_ones_stay():
    out = run("""
        def main(s):
            q, t = (s.a, s.b)
            u = f()
            return 1
        main(0)
    """)
    assert "q, t" not in out and "u = f()" in out


def test_methods_nothing_names_go_and_framework_hooks_stay():
    out = run("""
        import torch.nn as nn
        class Plain:
            def used(self): return 1
            def unused(self): return 2
            def _private_unused(self): return 3
            def by_name(self): return 4
            def __len__(self): return 0
        class Net(nn.Module):
            def forward(self, x): return x
            def _apply(self, fn): return super()._apply(fn)
            def helper_unused(self): return 5
        def main():
            p = Plain()
            return p.used(), getattr(p, 'by_name'), Net()
        main()
    """, shake_between=True)
    assert "def used" in out and "def by_name" in out and "def __len__" in out
    assert "unused" not in out and "_private_unused" not in out and "helper_unused" not in out
    assert "def forward" in out and "def _apply" in out


def test_optional_parameters_or_a_constructor_give_a_known_receiver():
    out = run("""
        class Layer:
            def __init__(self, opts: MC | None = None):
                self.opts = o = opts or MC()
            def forward(self, x):
                return 'flag' if self.opts.flag else x
        Layer().forward(1)
    """)
    assert "'flag'" not in out and "return x" in out


@pytest.mark.parametrize("preset", ["baseline", "sp8192_lqer_sparsegate_bossmear"])
def test_the_entry_reads_every_folded_fields_env_name_back_from_folded_envs(preset):
    from pgolf.bundle.entry import folded_env
    from pgolf.config import iter_fields

    cfg = build_config(preset, environ={})
    folded, envs = folded_fields(cfg), folded_envs(cfg)
    assert any(env.endswith("_") for env in envs.values())  # some are given as a prefix only
    assert {f.name: folded_env(f.name, envs) for s, f in iter_fields(cfg) if (s, f.name) in folded} == \
        {f.name: f.metadata["env"] for s, f in iter_fields(cfg) if (s, f.name) in folded}


def test_an_attribute_only_ever_one_literal_folds_through_known_receivers_and_stores_through_it_do_not_spoil_it():
    out = run("""
        class Head:
            pass
        class Net:
            def __init__(self):
                self.head = None
                self.layers = ()
                if self.head is not None:
                    self.head.zero = True
                if self.layers:
                    self.extra = Head()
            def project(self, x):
                return x if self.head is None else self.head(x)
        class Other:
            def __init__(self):
                self.head = None
                self.count = 0
            def reset(self):
                del self.head
                self.count += 1
        def optimizers(model: Net, other: Other):
            groups = ['all']
            if model.head is not None:
                groups.append('head')
            if other.head is not None:
                groups.append('other')
            return groups
        optimizers(Net(), Other())
    """)
    assert "self.head.zero" not in out and "Head()" not in out and "return x\n" in out  # folded inside Net
    assert "'head'" not in out  # and through a receiver known to be a Net
    assert "'other'" in out and "other.head is not None" in out  # a del of the attribute: not folded


def test_a_tuple_read_through_a_known_receiver_decides_a_test():
    out = run("""
        class Net:
            def __init__(self):
                self.layers = ()
        def build(model: Net):
            if model.layers:
                return 'layers'
            return 'none'
        build(Net())
    """)
    assert "'layers'" not in out and "return 'none'" in out


UNUSED_PARAMETERS = """
    log = []
    def note(x):
        log.append(x)
        return x
    def scale(step, total, frac=0.0, floor=0.0, *, mode='a'):
        return step / total
    def middle(a, unused, b):
        return a + b
    def effect(a, unused=None):
        return a
    def escapes(a, unused=1):
        return a
    class Rotary:
        def __init__(self, dim, base=10.0, extra=0):
            self.dim = dim * base
    def run(n):
        r = Rotary(n, 2.0, extra=n)
        return [scale(n, 4, 0.5, floor=n, mode='b'), scale(n, 2), middle(n, n, r.dim), effect(n, note(n)),
                [escapes][0](n), escapes(n, 5), r.dim]
    RESULT = run(int('3'))
"""


def test_parameters_nothing_reads_go_with_the_arguments_calls_pass_for_them():
    body = ast.parse(textwrap.dedent(UNUSED_PARAMETERS)).body
    bodies = [ast.parse(textwrap.dedent(CONFIG)).body, body]
    specialise(bodies, FOLD)
    out = ast.unparse(ast.Module(body=bodies[1], type_ignores=[]))
    assert "def scale(step, total):" in out and "scale(n, 4)" in out  # positional last, keyword, keyword-only
    assert "def __init__(self, dim):" in out and "Rotary(n)" in out  # base: propagated (2.0), then unused too
    assert "def middle(a, b):" in out and "middle(n, r.dim)" in out  # passed positionally before another
    assert "def effect(a, unused=None):" in out and "note(n)" in out  # its argument has an effect: kept
    assert "def escapes(a, unused=1):" in out  # used as a value: its calls are not all known
    before, after = {}, {}
    exec(compile(textwrap.dedent(UNUSED_PARAMETERS), "before", "exec"), before)
    exec(compile(out, "after", "exec"), after)
    assert after["RESULT"] == before["RESULT"] and after["log"] == before["log"] == [3]


RECURSIVE_CALLS = {
    "self_call_with_another_flag": """
        def decode(data, v1_only=False):
            if v1_only:
                return ('v1', data)
            if data > 3:
                return decode(data - 1, v1_only=True)
            return ('v2', data)
        R = (decode(5), decode(2))
    """,
    "mutual_recursion": """
        def decode(data, v1_only=False):
            if v1_only:
                return ('v1', data)
            return read(data)
        def read(data):
            return decode(data, True) if data > 3 else ('v2', data)
        R = (decode(5), decode(2))
    """,
    "flag_through_a_local": """
        def decode(data, v1_only=False):
            flag = True
            if v1_only:
                return 'v1'
            return decode(0, flag) if data else 'v2'
        R = decode(1)
    """,
    "flag_through_an_alias": """
        def decode(data, v1_only=False):
            if v1_only:
                return 'v1'
            d = decode
            return d(data, True) if data else 'v2'
        R = decode(1)
    """,
}


@pytest.mark.parametrize("name", list(RECURSIVE_CALLS))
def test_a_function_calling_itself_with_another_literal_computes_what_it_did(name):
    """Differential: the specialised source computes what the original does, where the outside calls
    agree on a flag and a call from inside the function (directly, mutually, through a local or an
    alias) passes another value."""
    source = textwrap.dedent(RECURSIVE_CALLS[name])
    original, specialised = {}, {}
    exec(textwrap.dedent(CONFIG) + source, original)
    exec(textwrap.dedent(CONFIG) + run(source, shaken=False), specialised)
    assert specialised["R"] == original["R"]


def test_a_no_grad_function_folds_the_arguments_every_call_fixes_and_another_decorator_keeps_them():
    out = run("""
        @torch.no_grad()
        def score(x, progress=None):
            if progress is not None:
                progress.update(x)
            return x
        @cache
        def cached(x, progress=None):
            if progress is not None:
                progress.update(x)
            return x
        def main(cfg: MC):
            return score(1, progress=None), score(2), cached(3, progress=None)
        main(MC())
    """)
    assert "def score(x):" in out and "score(1)" in out and "@torch.no_grad()" in out  # folded, still no-grad
    assert "def cached(x, progress=None):" in out  # its wrapper could bind the arguments otherwise


def test_a_store_an_augmented_assignment_reads_stays():
    # ``n += 1`` reads n: dropping ``n = 0`` as unread made the baseline bundle's TokenStream.take
    # raise UnboundLocalError whenever a call began on an exhausted shard
    src = """
        def take(xs):
            misses = 0
            out = []
            for x in xs:
                if x is None:
                    misses += 1
                    continue
                misses = 0
                out.append(x)
            return out
        take([None])
    """
    out = run(src)
    namespace: dict = {}
    exec(compile(out, "<bundle>", "exec"), namespace)
    assert namespace["take"]([None, 1]) == [1]


def test_a_global_only_augmented_in_functions_keeps_its_binding():
    src = """
        COUNT = 0
        def bump():
            global COUNT
            COUNT += 1
            return 1
        bump()
    """
    out = run(src)
    assert "COUNT = 0" in out


def test_a_constant_attribute_nothing_reads_any_more_is_not_stored():
    out = run("""
        import sys
        class Opt:
            def __init__(self, lr):
                self.lr = lr
                self.normalize = False
                self.kind = "quintic"
                self.named = None
            def step(self):
                if self.normalize:
                    return 0
                return self.lr
        class Net:
            def __init__(self):
                self.gate = None
            def roles(self):
                return [getattr(self, n) for n in ("gate",)]
        Opt(len(sys.argv)).step()
        Net().roles()
    """)
    assert "self.normalize" not in out and "self.kind" not in out and "self.named" not in out
    assert "self.lr = lr" in out and "self.gate = None" in out  # read, or read by its name


def test_methods_no_instance_can_resolve_to_go():
    # a base nothing instantiates keeps only what a derived class reaches: its own methods that some
    # derived class does not override, and what super() calls
    src = """
        class Base:
            def __init__(self, n):
                self.n = n
            def step(self):
                return "base step"
            def shared(self):
                return self.n
            def hook(self):
                return "base hook"
        class Derived(Base):
            def __init__(self, n):
                super().__init__(n)
            def step(self):
                return self.shared()
            def hook(self):
                return super().hook()
        def run(opt: Base):
            return isinstance(opt, Base) and opt.step() and opt.hook()
        import sys
        run(Derived(len(sys.argv)))
    """
    out = run(src, shake_between=True)
    assert "base step" not in out and "base hook" in out and "def shared" in out and "self.n = n" in out
    namespace: dict = {}
    exec(compile(out, "<bundle>", "exec"), namespace)
    assert namespace["run"](namespace["Derived"](3)) == "base hook"
    kept = run(src.replace("run(Derived(len(sys.argv)))", "run(Derived(len(sys.argv)))\n        run(Base(1))"), shake_between=True)
    assert "base step" in kept  # instantiated: its own methods are reached


METHOD_CALLED_BY_ITS_CLASS = """
    import torch.nn as nn
    class Attention(nn.Module):
        def values(self, x, extra):
            if extra is None:
                return x
            return x + extra.embed
        def forward(self, x, extra=None):
            return self.values(x, None) * 2
    def run(x):
        return Attention().forward(x)
    import sys
    run(len(sys.argv))
"""


def test_a_method_only_its_class_calls_takes_the_literal_every_call_passes():
    out = run(METHOD_CALLED_BY_ITS_CLASS)
    assert "extra.embed" not in out and "def values(self, x):" in out and "self.values(x)" in out
    namespace: dict = {}
    exec(compile(out, "<bundle>", "exec"), namespace)
    assert namespace["run"](3) == 6


@pytest.mark.parametrize("other_use", [
    "def peek(a):\n        return a.values(1, 2)",  # another receiver: it may be an Attention
    "def pick(a):\n        return getattr(a, 'values')",  # named by a string
    "class Other:\n        def values(self, x, extra):\n            return extra",  # a name two classes define
    "def keep(a):\n        return a.values",  # a reference that could be called with anything
])
def test_a_method_called_any_other_way_keeps_its_parameters(other_use):
    out = run(METHOD_CALLED_BY_ITS_CLASS + "    " + other_use + "\n", shaken=False)
    assert "extra.embed" in out and "def values(self, x, extra)" in out


def test_a_hook_of_an_external_base_keeps_its_parameters_even_if_only_its_class_calls_it():
    # nn.Module calls forward itself (module(x)), with arguments the bundle never sees
    src = """
        import torch.nn as nn
        class Layer(nn.Module):
            def forward(self, x, extra=None):
                return x if extra is None else x + extra
            def twice(self, x):
                return self.forward(self.forward(x, None), None)
        class Deeper(Layer):  # a hook of its base's base
            def step(self, x, extra):
                return x if extra is None else extra
            def __call__(self, x):
                return self.step(self.twice(x), None)
        def run(x):
            return Layer().twice(x) + Deeper()(x)
        import sys
        run(len(sys.argv))
    """
    out = run(src)
    assert "def forward(self, x, extra=None):\n        return x if extra is None else x + extra" in out
    assert "def step(self, x):\n        return x\n" in out  # no hook: it folds
