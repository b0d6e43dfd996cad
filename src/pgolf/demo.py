"""``pgolf demo``: the whole pipeline on a CPU in a few minutes, with no download.

It builds a small English corpus from text that ships with Python itself (the interpreter's help
topics in ``pydoc_data`` and the docstrings of the standard library, read with ``ast`` so nothing
is imported), trains a SentencePiece tokenizer on it, writes challenge-format shards, trains a
small model for about two minutes, exports the artifact and scores its round trip. With
``--data DIR --tokenizer T`` it runs on real challenge shards instead (val shards in DIR, or ``--val``).
"""

from __future__ import annotations

import argparse
import ast
import json
import sysconfig
from pathlib import Path

from pgolf.cli_vocab import add_json_flag

DEMO_MAX_CHARS = 3_000_000
DEMO_MIN_DOC_CHARS = 300
DEMO_VAL_DOCS = 60

DESCRIPTION = """\
The whole pipeline on a CPU in a few minutes, with no download.

Builds a small English corpus from text that ships with Python itself (the interpreter's help topics
and the standard library's docstrings, read without importing anything), trains a SentencePiece
tokenizer on it, writes challenge-format shards, trains the demo_cpu model for about two minutes,
exports the artifact and scores its round trip. With --data DIR --tokenizer T it runs on real
challenge shards instead: training shards fineweb_train_*.bin in DIR, val shards fineweb_val_*.bin
in DIR too unless --val names them.
"""


def _pydoc_topic_docs() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key].strip() for key in sorted(topics)]


def _module_docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    docs = (ast.get_docstring(n) for n in nodes)
    return [d.strip() for d in docs if d and len(d.strip()) >= DEMO_MIN_DOC_CHARS]


def stdlib_corpus(max_chars: int = DEMO_MAX_CHARS) -> list[str]:
    """Deterministic list of English documents from Python's own files (same Python, same corpus)."""
    docs = _pydoc_topic_docs()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parts[-2:-1] or path.name.startswith("test_"):
            continue
        docs.extend(_module_docstrings(path))
        if sum(map(len, docs)) >= max_chars:
            break
    total, kept = 0, []
    for doc in docs:
        if total >= max_chars:
            break
        kept.append(doc)
        total += len(doc)
    return kept


def build_demo_data(work: Path, vocab_size: int) -> tuple[Path, Path]:
    """Corpus → tokenizer → shards in ``work``; returns (data dir, tokenizer path). Reused if present."""
    from pgolf.data.prepare import prepare

    data_dir = work / "data"
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        return data_dir, _manifest_tokenizer(data_dir)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for doc in stdlib_corpus():
            f.write(json.dumps({"text": doc}) + "\n")
    prepare(corpus, data_dir, vocab_size=vocab_size, val_docs=DEMO_VAL_DOCS)
    return data_dir, _manifest_tokenizer(data_dir)


def _manifest_tokenizer(data_dir: Path) -> Path:
    """The manifest records a trained tokenizer relative to the data folder."""
    info = json.loads((data_dir / "manifest.json").read_text())
    return data_dir / info["tokenizer"]["path"]


def _check_real_data(data_dir: Path, val: str | None) -> str:
    """Refuse --data without train shards, or without val shards in it when --val is not given; returns VAL_FILES."""
    from pgolf.data.shards import resolve_shards
    from pgolf.errors import PgolfError

    if not data_dir.is_dir():
        raise PgolfError(f"--data {data_dir}: not a folder (give the folder holding fineweb_train_*.bin)")
    resolve_shards(data_dir, "train")
    if val:
        resolve_shards(val, "val")
        return str(val)
    try:
        resolve_shards(data_dir, "val")
    except PgolfError:
        raise PgolfError(f"--data {data_dir}: no fineweb_val_*.bin shards in this folder; the demo scores on val "
                         "shards there, or pass --val PATH (a val shard, folder or glob)") from None
    return ""


def _demo(args: argparse.Namespace) -> int:
    from pgolf.config import apply_overrides, validate
    from pgolf.presets import resolve_preset
    from pgolf.tokenizer.spm import load_tokenizer
    from pgolf.train.cli import print_summary
    from pgolf.train.lifecycle import train_recorded

    cfg = resolve_preset("demo_cpu")
    if args.val and not args.data:
        from pgolf.errors import PgolfError

        raise PgolfError("--val goes with --data (the built-in corpus brings its own val shards)")
    if args.data:
        data_dir, tokenizer = Path(args.data), Path(args.tokenizer or cfg.data.tokenizer_path)
        cfg.data.val_files = _check_real_data(data_dir, args.val)
        cfg.model.vocab_size = int(load_tokenizer(tokenizer).vocab_size())
    else:
        from pgolf.progress import phase

        print("pgolf demo: building a corpus from Python's own documentation and training a tokenizer ...")
        with phase("demo: corpus, tokenizer and shards"):
            data_dir, tokenizer = build_demo_data(Path(args.work_dir), cfg.model.vocab_size)
    cfg.data.data_path, cfg.data.tokenizer_path = str(data_dir), str(tokenizer)
    cfg.train.max_wallclock_seconds = args.seconds
    apply_overrides(cfg, args.overrides)
    validate(cfg)
    print(f"pgolf demo: training {cfg.model.num_layers}x{cfg.model.model_dim} for {args.seconds:.0f}s on CPU ...")
    results = train_recorded(cfg, args.runs_dir)
    if args.json:
        print(json.dumps(results, sort_keys=True))
        return 0
    print()
    print_summary(results)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the whole pipeline on CPU in minutes (no download needed)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", metavar="DIR",
                        help="run on the challenge shards in DIR instead of the built-in corpus: fineweb_train_*.bin, "
                        "and fineweb_val_*.bin unless --val is given")
    parser.add_argument("--val", metavar="PATH", help="with --data: the val shards (file, folder or glob), when not in DIR")
    parser.add_argument("--tokenizer", help="the tokenizer of --data (default: the baseline's TOKENIZER_PATH)")
    parser.add_argument("--seconds", type=float, default=120.0, help="training time cap (default: 120)")
    parser.add_argument("--work-dir", default="runs/demo-data", help="where the demo corpus and shards go")
    parser.add_argument("--runs-dir", default="runs", help="where the run directory goes (default: runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, as in pgolf train")
    add_json_flag(parser, "results.json")
    parser.set_defaults(handler=_demo)
