"""Both self-extracting wrappers run, keep __name__ and __file__, and the smaller one is chosen."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pgolf.bundle.wrap import LRZIP_DECODER, _brotli_script, _lrzip_script, _lzma_script, constexpr_parameters, minify, wrap
from pgolf.check.selfextract import unwrap
from pgolf.export.codecs import lrzip_available

needs_lrzip = pytest.mark.skipif(not lrzip_available(), reason="the lrzip binary is not installed (apt-get install lrzip)")

PROGRAM = "import os\nif __name__ == '__main__':\n    print(os.path.basename(__file__), sum(range(10)))\n" + "# padding\n" * 50


@pytest.mark.parametrize("register_source", [False, True])
@pytest.mark.parametrize("make", [_lzma_script, _brotli_script, pytest.param(_lrzip_script, marks=needs_lrzip)])
def test_wrapped_script_runs_as_main(make, register_source, tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text(make(PROGRAM.encode(), register_source))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    assert out == "train_gpt.py 45\n"
    if not register_source:  # and the static reader gets the same program back without running the script
        assert unwrap(script.read_text()).source == PROGRAM


def test_wrap_picks_the_smaller_codec():
    wrapped = wrap(PROGRAM)
    sizes = dict(wrapped.sizes)
    assert set(sizes) == {"lzma", "brotli"} and len(wrapped.script.encode()) == sizes[wrapped.codec] == min(sizes.values())


@needs_lrzip
def test_lrzip_is_a_candidate_only_when_asked():
    sizes = dict(wrap(PROGRAM, lrzip=True).sizes)
    assert set(sizes) == {"lzma", "brotli", "lrzip-zpaq"}
    assert "lrzip" not in wrap(PROGRAM).script and LRZIP_DECODER in _lrzip_script(PROGRAM.encode(), False)
    assert unwrap(_lrzip_script(PROGRAM.encode(), False)).layers == ["pgolf-text", "lrzip -d"]


def test_minify_keeps_asserts_and_drops_docstrings():
    small = minify('def f(value):\n    """Doc."""\n    assert value > 0, "positive"\n    return value\n')
    assert "assert" in small and "Doc." not in small


def test_minify_renames_globals_but_keeps_the_type_names_the_config_schema_is_parsed_by():
    source = (
        "from __future__ import annotations\nfrom dataclasses import dataclass, fields\n"
        "@dataclass\nclass Section:\n    iterations: int = 1\n    lr: float = 0.5\n    on: bool = False\n    path: str = ''\n"
        "def helper_with_a_long_name():\n    return [f.type for f in fields(Section())], int('3') + len(str(2.0))\n"
        "if __name__ == '__main__':\n    print(helper_with_a_long_name())\n"
    )
    small = minify(source)
    assert "helper_with_a_long_name" not in small  # globals are renamed
    out = subprocess.run([sys.executable, "-c", small], capture_output=True, text=True, check=True).stdout
    assert out == "(['int', 'float', 'bool', 'str'], 6)\n"


def test_minify_leaves_the_parsers_shared_nodes_as_it_found_them():
    import ast

    minify("x = 1\ny = -x + 2\ndel y\nz = x < 3 and not x\n")
    tree = ast.parse("del a\nb = -c + d < e and not f")
    markers = [n for n in ast.walk(tree) if not n._fields]
    assert {type(n).__name__ for n in markers} >= {"Del", "Store", "Load", "USub", "Add", "Lt", "And", "Not"}
    assert all(vars(n) == {} for n in markers)  # the minifier's _parent/namespace would make every deepcopy copy its tree


@pytest.mark.parametrize("register_source", [False, True])
def test_registered_source_is_what_inspect_reads_back(tmp_path, register_source):
    """Triton kernels read their own source with inspect, which exec'd code offers only when registered."""
    program = "import inspect\ndef kernel(x):\n    return x + 1\nprint(repr(inspect.getsource(kernel)))\n"
    script = tmp_path / "train_gpt.py"
    script.write_text(wrap(program, register_source=register_source).script)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    if register_source:
        assert proc.returncode == 0 and proc.stdout == repr("def kernel(x):\n    return x + 1\n") + "\n", proc.stderr
    else:
        assert proc.returncode != 0 and "OSError" in proc.stderr


KERNEL = """
import triton.language as tl
def k(x_ptr, n, BLOCK: tl.constexpr, FLAG: tl.constexpr):
    block = BLOCK
    for i in range(0, n, BLOCK):
        tl.store(x_ptr + i + tl.arange(0, BLOCK), min(i, n), mask=FLAG)
    return block, BLOCK, FLAG
"""


def test_minify_for_kernels_keeps_constexpr_parameters_annotations_and_builtins():
    assert constexpr_parameters(KERNEL) == ["BLOCK", "FLAG"]
    small = minify(KERNEL, keep_annotations=True)
    assert "BLOCK:tl.constexpr" in small and "FLAG:tl.constexpr" in small
    assert "tl.arange(0,BLOCK)" in small and "range(0," in small and "min(" in small  # no short aliases
    plain = minify(KERNEL)
    assert "constexpr" not in plain


def test_text_encoding_round_trips_every_byte_and_every_final_chunk_length():
    import os

    from pgolf.bundle.wrap import CHUNK_BYTES, DECODER, UNSAFE_BYTES, text_decode, text_encode

    namespace: dict = {}
    exec(DECODER, namespace)  # the stub's own decoder, as the shipped script runs it
    for n in [*range(2 * CHUNK_BYTES + 1), 1000]:
        data = (bytes(range(256)) * 4 + os.urandom(n))[-n:] if n else b""
        text = text_encode(data)
        assert text.isascii() and not set(text) & set(UNSAFE_BYTES)
        assert text_decode(text) == namespace["D"](text) == data
    assert b"\x00" * 5 == text_decode(text_encode(b"\x00" * 5))  # leading zero bytes survive


def test_wrapped_payload_is_smaller_than_base85_would_make_it():
    import base64
    import lzma
    import os

    from pgolf.bundle.wrap import _LZMA_FILTERS

    program = "x = %r\n" % os.urandom(12_000).hex()  # a payload of about 12 kB after compression
    payload = lzma.compress(program.encode(), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    script = _lzma_script(program.encode(), False)
    assert script.isascii()
    assert len(script) < 0.95 * len(base64.b85encode(payload))  # base85 alone, its stub not even counted


def test_every_text_symbol_survives_a_script_file_on_each_python(tmp_path):
    """All 124 symbols in one literal, read back by this Python from a file (newline translation included)."""
    from pgolf.bundle.wrap import SYMBOLS

    script = tmp_path / "s.py"
    script.write_bytes(b'import sys\nsys.stdout.write(repr(list(b"""' + SYMBOLS + b'""")))\n')
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    assert out == repr(list(SYMBOLS))


ANNOTATED = '''
import dataclasses
from dataclasses import InitVar, dataclass, field
from typing import ClassVar

@dataclass
class Schema:
    width: int = 4
    name: str = "x"

@dataclass
class Record:
    items: list[dict[str, float]] = field(default_factory=list)
    label: str | None = None
    count: ClassVar[int] = 0
    seed: InitVar[int] = 0

    def __post_init__(self, seed):
        self.items.append({"seed": float(seed)})

FIELDS = {c.__name__: [(f.name, f.type) for f in dataclasses.fields(c)] for c in (Schema, Record)}
VALUE = dataclasses.asdict(Record(label="a", seed=3))
'''


def test_class_annotations_become_int_but_the_kept_classes_classvar_and_initvar():
    from pgolf.bundle.wrap import plain_class_annotations

    plain = plain_class_annotations(ANNOTATED, frozenset({"Schema"}))
    assert "list[dict" not in plain and "label: int = None" in plain and "count: ClassVar[int]" in plain
    before, after = {}, {}
    exec(compile(ANNOTATED, "before", "exec", dont_inherit=True), before)  # not under this file's __future__ import
    exec(compile(plain, "after", "exec", dont_inherit=True), after)
    # the same fields (the ClassVar is still none, the InitVar still init-only), the same values;
    # only the unkept classes' field types changed
    assert [n for n, _ in after["FIELDS"]["Record"]] == [n for n, _ in before["FIELDS"]["Record"]] == ["items", "label"]
    assert after["FIELDS"]["Schema"] == before["FIELDS"]["Schema"] == [("width", int), ("name", str)]
    assert after["VALUE"] == before["VALUE"] == {"items": [{"seed": 3.0}], "label": "a"}
    # a kept class the source does not define (renamed?): nothing changes
    assert plain_class_annotations(ANNOTATED, frozenset({"Missing"})) == ANNOTATED
