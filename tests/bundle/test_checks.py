"""Stripping a bundle's input checks removes the checks and what only fed them, and nothing else:
the stripped program computes the same values on good input, and other exceptions stay."""

from __future__ import annotations

import ast

from pgolf.bundle.checks import strip_checks

SOURCE = '''
class PgolfError(Exception):
    pass

def read(path, size):
    actual = len(path) * 2
    if actual != size:
        raise PgolfError(f"{path}: {actual} bytes, expected {size}")
    assert size >= 0, "sizes are positive"
    try:
        value = int(path[-1])
    except ValueError:
        raise PgolfError(f"{path}: no digit") from None
    return value + size

def check_range(tokens, vocab):
    if not tokens:
        return
    top = max(tokens)
    if top >= vocab:
        where = tokens.index(top)
        raise PgolfError(f"token {top} >= {vocab} at {where}")

def checked_loop(items):
    for item in items:
        problem = None if item > 0 else "negative"
        if problem:
            raise PgolfError(problem)

def other_errors(x):
    if x < 0:
        raise ValueError("x < 0")
    if x > 100:
        raise PgolfError("too big")
    else:
        return x
    return -x

def pick(kind):
    if kind == "a":
        return 1
    elif kind == "b":
        return 2
    else:
        raise PgolfError(f"unknown kind {kind!r}")

def resolve(spec):
    if spec.startswith("/"):
        return spec
    if spec.startswith("~"):
        return "/home" + spec[1:]
    raise PgolfError(f"{spec}: no such path")

def cached_digest(files, tokenizer):
    digest = None
    for path in files:
        recorded = path.upper()
        digest = digest or tokenizer.lower()
        if digest != recorded:
            raise PgolfError(f"{tokenizer} (sha256 {digest[:12]}) is not {recorded}")

def digest_returned(files, tokenizer):
    digest = None
    for path in files:
        digest = digest or tokenizer.lower()
        if digest != path:
            raise PgolfError(f"{digest} is not {path}")
    return digest

def side_effect_kept(log, x):
    n = log.append(x)
    if x is None:
        raise PgolfError("none")
    return log
'''


def stripped(source: str = SOURCE) -> tuple[ast.Module, int]:
    tree = ast.parse(source)
    count = strip_checks([tree.body], "PgolfError")
    return tree, count


def functions(tree: ast.Module) -> dict[str, str]:
    return {n.name: ast.unparse(n) for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_checks_and_what_only_fed_them_go():
    tree, count = stripped()
    fns = functions(tree)
    assert count > 0
    assert "PgolfError" not in fns["read"] and "assert" not in fns["read"] and "actual" not in fns["read"]
    assert "int(path[-1])" in fns["read"] and "try" not in fns["read"]
    assert ast.unparse(ast.parse(fns["checked_loop"]).body[0].body) == "pass"  # the loop only checked
    assert ast.unparse(ast.parse(fns["check_range"]).body[0].body) == "pass"  # the early exit only skipped the check
    # a local that only feeds itself and the check goes, and the loop it was in with it; one read elsewhere stays
    assert ast.unparse(ast.parse(fns["cached_digest"]).body[0].body) == "pass"
    assert "digest = digest or tokenizer.lower()" in fns["digest_returned"] and "PgolfError" not in fns["digest_returned"]


CATCHES_A_BUILTIN_CALL = """
def parse(raw):
    try:
        return int(raw)
    except ValueError:
        return float(raw)
"""
CATCHES_BUNDLE_CODE = """
def lenient(x):
    try:
        return other_errors(x)
    except ValueError:
        return 0
"""

CONVERTS_AND_RAISES = """
def converted(x):
    try:
        return other_errors(x)
    except BaseException as exc:
        raise RuntimeError(str(exc)) if isinstance(exc, OSError) else exc
"""
CONVERTS_OR_RETURNS = """
def sometimes(x):
    try:
        return other_errors(x)
    except ValueError as exc:
        if x < -5:
            return 0
        raise TypeError(str(exc))
"""


def test_a_builtin_error_is_stripped_only_where_nothing_could_catch_it_and_carry_on():
    # parse() catches ValueError around a builtin call only: no raise of the bundle can reach it
    assert "ValueError" not in functions(stripped(SOURCE + CATCHES_A_BUILTIN_CALL)[0])["other_errors"]
    # lenient() catches the ValueError other_errors() raises and carries on: there, that raise is behaviour
    assert "raise ValueError('x < 0')" in functions(stripped(SOURCE + CATCHES_BUNDLE_CODE)[0])["other_errors"]
    # a handler that always ends by raising (the same error or another) does not carry on either
    assert "ValueError" not in functions(stripped(SOURCE + CONVERTS_AND_RAISES)[0])["other_errors"]
    # one that may return instead does
    assert "raise ValueError('x < 0')" in functions(stripped(SOURCE + CONVERTS_OR_RETURNS)[0])["other_errors"]


def test_of_a_refusing_if_the_other_branch_stays():
    fns = functions(stripped()[0])
    assert "too big" not in fns["other_errors"] and "    return x\n" in fns["other_errors"]
    assert "PgolfError" not in fns["pick"] + fns["resolve"]
    assert "log.append(x)" in fns["side_effect_kept"]  # read by nothing removed: kept as it is


def test_stripped_program_computes_the_same_on_good_input():
    tree, _ = stripped()
    original, after = {}, {}
    exec(compile(SOURCE, "original", "exec"), original)
    exec(compile(ast.fix_missing_locations(tree), "stripped", "exec"), after)
    assert original["read"]("ab3", 6) == after["read"]("ab3", 6) == 9
    assert original["checked_loop"]([1, 2]) is after["checked_loop"]([1, 2]) is None
    for kind in "ab":
        assert original["pick"](kind) == after["pick"](kind)
    for spec in ("/x", "~/y"):
        assert original["resolve"](spec) == after["resolve"](spec)
    assert after["read"]("ab3", 5) == 8  # the check is gone: bad input is no longer refused


def test_the_scoring_guards_survive_the_stripping():
    # a bundle strips input checks, never the guards of what a score counts: every target scored
    # (IncompleteScore), each once and score-first (ScoreFirstViolation); stripped, a score of a
    # subset of the targets would look like any other
    from pathlib import Path

    import pgolf.eval.ledger

    tree = ast.parse(Path(pgolf.eval.ledger.__file__).read_text())
    strip_checks([tree.body], "PgolfError", whole=[tree.body])
    ledger = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ScoreLedger")
    raised = {ast.unparse(n.exc.func) for n in ast.walk(ledger) if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call)}
    assert raised == {"IncompleteScore", "ScoreFirstViolation"}
