"""Read a self-extracting ``train_gpt.py`` without running it.

Records from R28 on ship code as ``exec(lzma.decompress(base64.b85decode("...")))`` (also zlib,
brotli, b64/a85, ``.decode()``, raw LZMA with a filter chain; pgolf's own bundles decode a 124-symbol
bytes literal with the small function :data:`pgolf.bundle.wrap.DECODER`, recognised here by its exact
code, and may pipe it through ``lrzip -qd`` with :data:`pgolf.bundle.wrap.LRZIP_DECODER`, recognised
the same way and applied here by running the lrzip binary on the payload). :func:`unwrap` recognises
that shape in the AST, applies the same decoders to the literal itself (never ``exec``, never
``eval``), and returns the inner source, repeatedly if the inner source is itself a wrapper.
Decompressed output is capped so a crafted payload cannot exhaust memory.
"""

from __future__ import annotations

import ast
import base64
import lzma
import zlib
from dataclasses import dataclass

MAX_INNER_BYTES = 20_000_000
DECODERS = {"b85decode": base64.b85decode, "b64decode": base64.b64decode, "a85decode": base64.a85decode,
            "b32decode": base64.b32decode}
COMPRESSORS = ("lzma", "zlib", "brotli", "gzip", "bz2")


class NotAWrapper(Exception):
    """The source is not a recognised self-extracting wrapper (it is then checked as plain code)."""


@dataclass
class Unwrapped:
    source: str
    layers: list[str]  # e.g. ["b85decode", "lzma.decompress"], outermost call last


def _aliases(tree: ast.Module) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _qualname(func: ast.expr, aliases: dict[str, str]) -> str:
    if isinstance(func, ast.Name):
        return aliases.get(func.id, func.id)
    if isinstance(func, ast.Attribute):
        return f"{_qualname(func.value, aliases)}.{func.attr}"
    raise NotAWrapper("call target is not a name")


def _lzma_constant(node: ast.expr, aliases: dict[str, str]):
    """Evaluate the small literal language of lzma keyword arguments (constants, lists, dicts, lzma.X)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Attribute) and _qualname(node.value, aliases) == "lzma" and node.attr.isupper():
        return getattr(lzma, node.attr)
    if isinstance(node, ast.List):
        return [_lzma_constant(e, aliases) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_lzma_constant(k, aliases): _lzma_constant(v, aliases) for k, v in zip(node.keys, node.values)}
    raise NotAWrapper("unsupported lzma argument")


def _decompress(kind: str, data: bytes, kwargs: dict) -> bytes:
    if kind == "lzma":
        dec = lzma.LZMADecompressor(format=kwargs.get("format", lzma.FORMAT_AUTO), filters=kwargs.get("filters"))
        out = dec.decompress(data, max_length=MAX_INNER_BYTES + 1)
    elif kind == "zlib":
        dec = zlib.decompressobj(kwargs.get("wbits", zlib.MAX_WBITS))
        out = dec.decompress(data, MAX_INNER_BYTES + 1)
    elif kind == "brotli":
        import brotli

        out = brotli.decompress(data)  # no streaming cap in the binding; the check below still bounds use
    else:
        import bz2
        import gzip

        out = (gzip if kind == "gzip" else bz2).decompress(data)
    if len(out) > MAX_INNER_BYTES:
        raise NotAWrapper(f"payload inflates beyond {MAX_INNER_BYTES} bytes")
    return out


def _lrzip_decode(data: bytes) -> bytes:
    from pgolf.export.codecs import lrzip_decompress_capped

    return lrzip_decompress_capped(data, MAX_INNER_BYTES, "the script's lrzip payload")


def _local_decoders(tree: ast.Module) -> dict[str, object]:
    """Functions of the module that are pgolf's text decoder or its lrzip step, by name."""
    from pgolf.bundle.wrap import DECODER, LRZIP_DECODER, text_decode

    models = {ast.dump(ast.parse(code).body[0]): fn for code, fn in ((DECODER, text_decode), (LRZIP_DECODER, _lrzip_decode))}
    return {node.name: models[ast.dump(node)] for node in tree.body
            if isinstance(node, ast.FunctionDef) and ast.dump(node) in models}


def _evaluate(node: ast.expr, aliases: dict[str, str], layers: list[str], decoders: dict | None = None):
    """Value of a decode chain ending in a string/bytes literal (``decoders``: extra decoders by local name)."""
    decoders = {**DECODERS, **(decoders or {})}
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        return node.value
    if not isinstance(node, ast.Call):
        raise NotAWrapper("not a literal decode chain")
    if isinstance(node.func, ast.Attribute) and node.func.attr in ("decode", "encode") and not node.args:
        value = _evaluate(node.func.value, aliases, layers, decoders)
        layers.append(node.func.attr)
        return value.decode("utf-8") if node.func.attr == "decode" and isinstance(value, bytes) else (
            value.encode("utf-8") if isinstance(value, str) else value)
    name = _qualname(node.func, aliases)
    if not node.args:
        raise NotAWrapper(f"{name}() without arguments")
    inner = _evaluate(node.args[0], aliases, layers, decoders)
    leaf = name.rsplit(".", 1)[-1]
    if leaf in decoders:
        layers.append(leaf if leaf in DECODERS else "lrzip -d" if decoders[leaf] is _lrzip_decode else "pgolf-text")
        return decoders[leaf](inner)
    module = name.split(".")[0]
    if leaf == "decompress" and module in COMPRESSORS:
        kwargs = {k.arg: _lzma_constant(k.value, aliases) for k in node.keywords if k.arg} if module == "lzma" else {}
        if module == "zlib" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            kwargs["wbits"] = node.args[1].value
        layers.append(f"{module}.decompress")
        data = inner.encode("latin-1") if isinstance(inner, str) else inner
        return _decompress(module, data, kwargs)
    raise NotAWrapper(f"unknown call {name}")


def find_wrapper(tree: ast.Module) -> ast.Call | None:
    """The ``exec(<decode chain>)`` call of a wrapper module, if the module is one."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "exec" and node.args:
            if isinstance(node.args[0], ast.Call):
                return node
    return None


def unwrap(source: str, max_depth: int = 4) -> Unwrapped | None:
    """The code a self-extracting script would execute, or None if ``source`` is not a wrapper."""
    layers: list[str] = []
    current = source
    for _ in range(max_depth):
        try:
            tree = ast.parse(current)
        except SyntaxError:
            break
        call = find_wrapper(tree)
        if call is None:
            break
        try:
            value = _evaluate(call.args[0], _aliases(tree), layers, _local_decoders(tree))
        except Exception as exc:  # noqa: BLE001 - base64, lzma, zlib and brotli each raise their own error type
            if current is source:
                return None
            raise NotAWrapper(f"inner wrapper could not be decoded: {exc}") from None
        current = value.decode("utf-8") if isinstance(value, bytes) else value
    return None if current is source else Unwrapped(current, layers)
