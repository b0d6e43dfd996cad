"""One vocabulary across verbs, checked by walking every parser `pgolf --help` builds.

Output locations are ``--out``, run prefixes ``--name``, the sliding stride ``--stride``; every verb
has ``--json``; every help text is plain text (no reStructuredText or Markdown markup). The old
spellings still parse, hidden from help, with one warning line.
"""

from __future__ import annotations

import argparse
import re

import pytest

from pgolf.cli import build_parser

OLD_SPELLINGS = {"-o", "--output", "--out-dir", "--prefix", "--sliding"}
ROOT_FOLDERS = {"--runs-dir", "--records-dir", "--work-dir"}  # a root under which named things are filed
MARKUP = re.compile(r"``|`|:(?:func|class|mod|meth|attr|data|ref):")


def all_parsers(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(verb words, parser) for the top level and every verb and sub-verb under it."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, words + (name,))


def is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def visible_options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if action.help != argparse.SUPPRESS and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield action


PARSERS = list(all_parsers(build_parser()))


@pytest.mark.parametrize("words,parser", PARSERS[1:], ids=[" ".join(w) for w, _ in PARSERS[1:]])
def test_every_verb_describes_itself_in_plain_text(words, parser):
    verb = "pgolf " + " ".join(words)
    assert parser.description and len(parser.description.split()) >= 5, f"{verb} has no description"
    assert not MARKUP.search(parser.description), f"{verb} description has markup: {MARKUP.search(parser.description)[0]!r}"
    for action in visible_options(parser):
        name = "/".join(action.option_strings) or action.dest
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{verb} {name} has no help"
        assert not MARKUP.search(action.help), f"{verb} {name} help has markup"
    parser.format_help()  # every help screen renders (a stray % would raise here)


@pytest.mark.parametrize("words,parser", PARSERS[1:], ids=[" ".join(w) for w, _ in PARSERS[1:]])
def test_one_spelling_per_concept_and_json_everywhere(words, parser):
    verb = "pgolf " + " ".join(words)
    shown = {s for a in visible_options(parser) for s in a.option_strings}
    assert not shown & OLD_SPELLINGS, f"{verb} shows {sorted(shown & OLD_SPELLINGS)}"
    folders = {s for s in shown if s.endswith("-dir")}
    assert folders <= ROOT_FOLDERS, f"{verb}: {sorted(folders - ROOT_FOLDERS)} should be --out"
    if is_leaf(parser):
        assert "--json" in shown, f"{verb} has no --json"


@pytest.mark.parametrize("argv,old,new,dest,value", [
    (["bundle", "-o", "x.py"], "-o", "--out", "output", "x.py"),
    (["bundle", "--output", "x.py"], "--output", "--out", "output", "x.py"),
    (["report", "-o", "rep", "r1"], "-o", "--out", "output", "rep"),
    (["bench", "train", "--out-dir", "b"], "--out-dir", "--out", "out_dir", "b"),
    (["seeds", "--seeds", "1", "--prefix", "p"], "--prefix", "--name", "prefix", "p"),
    (["eval", "--artifact", "a", "--sliding", "64"], "--sliding", "--stride", "stride", 64),
])
def test_old_spellings_still_parse_with_a_warning(argv, old, new, dest, value, capsys):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err == f"pgolf: warning: {old} is deprecated; use {new}\n"


@pytest.mark.parametrize("argv,dest,default", [
    (["bundle"], "output", "train_gpt.py"),
    (["report", "r1"], "output", "report"),
    (["bench", "train"], "out_dir", "."),
    (["eval", "--artifact", "a"], "stride", None),
])
def test_new_spellings_and_defaults(argv, dest, default):
    assert getattr(build_parser().parse_args(argv), dest) == default
