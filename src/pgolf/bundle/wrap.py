"""Minify a bundle and wrap it as a self-extracting script: lzma, brotli or lrzip (ZPAQ), the smallest, in a bytes literal.

Minification (python-minifier) keeps asserts, debug branches and class attribute annotations
(dataclasses need them); docstrings go, and locals and module-level names are shortened (nothing
imports from the bundle; :data:`PRESERVED_GLOBALS` keeps the entry point's name and the builtin
type names the config schema's annotations are parsed by). The readable
copy written beside the shipped script keeps every name. The wrapper ``exec``s the decompressed source in its own globals, so
``__name__ == "__main__"`` and ``__file__`` are the shipped script's own.

**Text encoding** (:func:`text_encode`). The compressed payload sits raw in a ``b\"\"\"...\"\"\"``
literal, 124 symbols a character: every ASCII byte but the four a bytes literal cannot hold as they
are (NUL, which Python refuses in source; CR, which newline translation turns into LF; the quote;
the backslash). Chunks of 33 bytes become 38 characters, so the payload grows by 15.2% where
base85 adds 25%; the file stays ASCII, hence UTF-8. The stub's decoder :data:`DECODER` is a small
function the static unwrapper (:mod:`pgolf.check.selfextract`) recognises by its exact code.

**lrzip** (``lrzip -z -L 9``, its ZPAQ context-mixing back end, R44's weight compressor) is tried
only when asked (``wrap(..., lrzip=True)``: by default a bundle whose configuration compresses its
weights with lrzip, so the machine that runs it has the binary anyway) and when the binary is here.
On these sources the script is 11 to 15% smaller than with brotli-11, and it decompresses itself by
piping the payload through ``lrzip -qd`` (:data:`LRZIP_DECODER`, also recognised by its exact code),
which takes under a second (0.4 to 0.9 s on a 2-core CPU).
"""

from __future__ import annotations

import ast
import importlib.util
import lzma
import math
from dataclasses import dataclass

from pgolf.errors import PgolfError

# the entry point, and the builtin types the config schema names in its annotations: config.py parses
# env values by the annotation's text, so ``int`` must stay ``int`` rather than become a short alias
PRESERVED_GLOBALS = ["main", "int", "float", "bool", "str",
                     "tl"]  # triton.language: Triton's interpreter knows a constexpr by the annotation "tl.constexpr"
# Builtins a Triton kernel may call: Triton resolves them by name, so they must not become short aliases.
KERNEL_BUILTINS = ["range", "min", "max", "abs", "len", "isinstance"]
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]

# bytes a b"""...""" literal cannot hold raw: NUL, CR, the quote, the backslash
UNSAFE_BYTES = (0, 13, 34, 92)
SYMBOLS = bytes(c for c in range(128) if c not in UNSAFE_BYTES)
BASE = len(SYMBOLS)  # 124
# 124**38 >= 256**33; a final chunk of r bytes takes the fewest characters m that can hold it, ceil(8r / log2(124)),
# and for every r <= 33 that m gives back r as m * 33 // 38: the decoder needs no length.
CHUNK_BYTES, CHUNK_CHARS = 33, 38
DECODER = (
    "def D(b):\n"
    " x=b''\n"
    f" for i in range(0,len(b),{CHUNK_CHARS}):\n"
    f"  n=0;c=b[i:i+{CHUNK_CHARS}]\n"
    f"  for d in c:n=n*{BASE}+d-1-(d>13)-(d>34)-(d>92)\n"
    f"  x+=n.to_bytes(len(c)*{CHUNK_BYTES}//{CHUNK_CHARS},'big')\n"
    " return x\n"
)


# the stub's lrzip step: the payload through ``lrzip -qd`` (stdin to stdout), nothing else run
LRZIP_DECODER = (
    "def Z(b):\n"
    " import subprocess as S\n"
    " return S.run(['lrzip','-qd'],input=b,capture_output=True,check=True).stdout\n"
)


def chunk_chars(n_bytes: int) -> int:
    """Characters that encode a chunk of ``n_bytes`` bytes."""
    return math.ceil(8 * n_bytes / math.log2(BASE))


def text_encode(data: bytes) -> bytes:
    """``data`` as :data:`SYMBOLS` characters, chunk by chunk (each chunk a big-endian number)."""
    out = bytearray()
    for i in range(0, len(data), CHUNK_BYTES):
        chunk = data[i:i + CHUNK_BYTES]
        n, digits = int.from_bytes(chunk, "big"), bytearray()
        for _ in range(chunk_chars(len(chunk))):
            n, digit = divmod(n, BASE)
            digits.append(SYMBOLS[digit])
        out += digits[::-1]
    return bytes(out)


def text_decode(text: bytes) -> bytes:
    """Inverse of :func:`text_encode`: what the stub's :data:`DECODER` computes, run here without ``exec``."""
    index = {c: i for i, c in enumerate(SYMBOLS)}
    out = bytearray()
    for i in range(0, len(text), CHUNK_CHARS):
        chunk = text[i:i + CHUNK_CHARS]
        n = 0
        for c in chunk:
            n = n * BASE + index[c]
        out += n.to_bytes(len(chunk) * CHUNK_BYTES // CHUNK_CHARS, "big")
    return bytes(out)


def minify(source: str, keep_annotations: bool = False) -> str:
    """``keep_annotations``: for Triton kernels (``BLOCK: tl.constexpr``) and ``torch.library`` custom
    ops, which read their parameters' annotations."""
    import python_minifier

    preserved, kernel_options = PRESERVED_GLOBALS, {}
    if keep_annotations:
        preserved = PRESERVED_GLOBALS + KERNEL_BUILTINS
        kernel_options = {"remove_annotations": False, "preserve_locals": constexpr_parameters(source)}
    try:
        return python_minifier.minify(
            source, remove_literal_statements=True, rename_locals=True, rename_globals=True, preserve_globals=preserved,
            remove_asserts=False, remove_debug=False, hoist_literals=False, prefer_single_line=True, **kernel_options,
        )
    except Exception as exc:  # the minifier reports unsupported syntax with assorted exception types
        raise PgolfError(f"python-minifier failed on the bundle ({type(exc).__name__}: {exc})") from None
    finally:
        clean_shared_parser_nodes()


def plain_class_annotations(source: str, keep: frozenset[str]) -> str:
    """``source`` with every class attribute's annotation but those of the classes in ``keep`` made
    ``int``. A dataclass needs each field annotated, but nothing reads what with (the config
    schema's classes, ``keep``, excepted: env values are parsed by their fields' annotations);
    ``ClassVar`` and ``InitVar`` annotations, which make a name no field or an init-only one, stay.
    The minifier keeps class attribute annotations as they are, and ``list[torch.optim.Optimizer]``
    costs bytes that ``int`` does not."""
    tree = ast.parse(source)
    if not keep <= {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}:
        return source  # a kept class not found (renamed?): its annotations could be lost, so change nothing
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name not in keep):
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and not any(
                    isinstance(n, (ast.Name, ast.Attribute)) and getattr(n, "id", getattr(n, "attr", "")) in ("ClassVar", "InitVar")
                    or isinstance(n, ast.Constant) and isinstance(n.value, str) and ("ClassVar" in n.value or "InitVar" in n.value)
                    for n in ast.walk(stmt.annotation)):
                stmt.annotation = ast.copy_location(ast.Name("int", ast.Load()), stmt.annotation)
    return ast.unparse(tree)


def constexpr_parameters(source: str) -> list[str]:
    """Parameters annotated ``tl.constexpr``. The minifier must leave them alone: it would copy a
    renamed parameter into a short local, and Triton's interpreter forgets that a local copy of a
    constexpr is one."""
    return sorted({a.arg for a in ast.walk(ast.parse(source))
                   if isinstance(a, ast.arg) and a.annotation is not None and "constexpr" in ast.unparse(a.annotation)})


# Uses every context marker and operator the parser knows.
_EVERY_MARKER = "del a\na = not b and c or -d + +e * ~f - g / h // i % j ** k << l >> m | n ^ o & p @ q\n" \
                "a = b == c != d < e <= f > g >= h is i is not j in k not in m"


def clean_shared_parser_nodes() -> None:
    """Strip what python-minifier leaves on the parser's shared nodes. CPython hands out one instance
    of each context marker (``Load``...) and operator (``Add``...) to every tree it parses; the
    minifier annotates them with ``_parent`` and ``namespace``, i.e. its whole module, so every later
    ``copy.deepcopy`` of any tree in this process also copied that module (a second bundle build in
    one process took 3.7 times as long: benchmarks/results/minifier_cleanup.json)."""
    for node in ast.walk(ast.parse(_EVERY_MARKER)):
        if not node._fields:  # markers and operators: the only nodes without fields
            vars(node).clear()


def _run(source_bytes: str, register_source: bool) -> str:
    """The line that runs the decompressed source (an expression giving bytes)."""
    if not register_source:
        return f"exec({source_bytes})\n"
    # Triton reads a kernel's source with inspect, which finds exec'd code only through linecache
    return (f"import linecache as C\ns={source_bytes}.decode();f=__file__+'#source'\n"
            "C.cache[f]=(len(s),None,s.splitlines(True),f);exec(compile(s,f,'exec'))\n")


def payload_literal(payload: bytes) -> str:
    """The stub's expression for ``payload``: :data:`DECODER` applied to its text encoding."""
    return 'D(b"""' + text_encode(payload).decode("ascii") + '""")'


def _lzma_script(data: bytes, register_source: bool) -> str:
    payload = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    expr = f'L.decompress({payload_literal(payload)},format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}])'
    return "import lzma as L\n" + DECODER + _run(expr, register_source)


def _brotli_script(data: bytes, register_source: bool) -> str:
    import brotli

    payload = brotli.compress(data, quality=11, lgwin=24)
    return "import brotli as R\n" + DECODER + _run(f"R.decompress({payload_literal(payload)})", register_source)


def _lrzip_script(data: bytes, register_source: bool) -> str:
    from pgolf.export.codecs import LRZIP_ZPAQ_CODEC

    payload = LRZIP_ZPAQ_CODEC.compress(data)
    return DECODER + LRZIP_DECODER + _run(f"Z({payload_literal(payload)})", register_source)


@dataclass(frozen=True)
class Wrapped:
    script: str
    codec: str  # "lzma", "brotli" or "lrzip-zpaq"
    sizes: tuple[tuple[str, int], ...] = ()  # every candidate's bytes, for the report


def wrap(source: str, register_source: bool = False, lrzip: bool = False) -> Wrapped:
    """The smallest self-extracting script (brotli only when installed, lrzip only when asked and its
    binary is here: the script then needs it too).

    ``register_source``: make the running code's source readable to ``inspect`` (for Triton kernels),
    by putting it in ``linecache`` under the name ``<script>#source``; tracebacks then show its lines.
    """
    from pgolf.export.codecs import lrzip_available

    data = source.encode("utf-8")
    candidates = [Wrapped(_lzma_script(data, register_source), "lzma")]
    if importlib.util.find_spec("brotli") is not None:
        candidates.append(Wrapped(_brotli_script(data, register_source), "brotli"))
    if lrzip and lrzip_available():
        candidates.append(Wrapped(_lrzip_script(data, register_source), "lrzip-zpaq"))
    sizes = tuple((w.codec, len(w.script.encode("utf-8"))) for w in candidates)
    best = min(candidates, key=lambda w: len(w.script.encode("utf-8")))
    return Wrapped(best.script, best.codec, sizes)
