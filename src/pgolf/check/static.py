"""Static findings on a training script, with file and line, from its AST (the code is never run).

Rules (severity ``error``: breaks a rule as written; ``review``: legal only under a condition a
reviewer must confirm, usually with ``pgolf check flip``):

* ``network``: imports or calls that reach the network or download (urllib, requests, http,
  socket, huggingface_hub downloads, ``wget``/``curl`` in a subprocess) - the artifact must be
  self-contained (error).
* ``fixed-step-stop``: an environment override that stops training at a fixed step instead of the
  wallclock cap (``FORCE_STOP_STEP``; #1956 ran a seed 601 s with it) (error).
* ``val-to-optimizer``: a function that computes gradients or steps an optimizer while using
  validation tokens: test-time training, legal only score-first (review).
* ``train-data-in-eval``: an evaluation function that reads training data (review: calibration
  after the 600 s or train-data access during evaluation is illegal).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

NETWORK_MODULES = ("urllib", "requests", "http", "socket", "httpx", "aiohttp", "ftplib", "urllib3")
DOWNLOAD_CALLS = ("urlopen", "urlretrieve", "hf_hub_download", "snapshot_download", "download_file", "load_dataset")
FIXED_STEP_ENV = ("FORCE_STOP_STEP", "STOP_STEP", "FORCE_STEPS")
VAL_DATA = re.compile(r"(^|_)val(id(ation)?)?_?(tokens|data|files|stream|seqs?|batch|chunks?|docs?|ids)($|_)", re.IGNORECASE)
SCORING_CALL = re.compile(r"^(eval|evaluate|score)", re.IGNORECASE)
TRAIN_DATA = re.compile(r"fineweb_train|train_files|train_pattern|train_glob|TRAIN_FILES", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str
    severity: str  # "error" or "review"
    message: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _names_in(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
    return out


def _network(tree: ast.Module, file: str) -> list[Finding]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                if m.split(".")[0] in NETWORK_MODULES:
                    found.append(Finding(file, node.lineno, "network", "error", f"imports {m}: no network access is allowed"))
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name.rsplit(".", 1)[-1] in DOWNLOAD_CALLS:
                found.append(Finding(file, node.lineno, "network", "error", f"calls {name}: downloads are not allowed"))
            if name.split(".")[0] in ("subprocess", "os") and any(
                isinstance(c, ast.Constant) and isinstance(c.value, str) and re.search(r"\b(wget|curl)\b", c.value)
                for c in ast.walk(node)
            ):
                found.append(Finding(file, node.lineno, "network", "error", f"{name} runs wget/curl"))
    return found


def _fixed_step(tree: ast.Module, file: str) -> list[Finding]:
    return [
        Finding(file, node.lineno, "fixed-step-stop", "error",
                f"reads {node.value}: a fixed-step stop overrides the 600 s wallclock cap")
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FIXED_STEP_ENV
    ]


def _functions(tree: ast.Module):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _is_update(node: ast.AST) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner = _dotted(node.func.value).lower()
        return node.func.attr == "backward" or (node.func.attr == "step" and bool(re.search(r"opt|sgd|adam|muon", owner)))
    return False


def _names_outside_scoring(node: ast.AST) -> set[str]:
    """Names read in ``node`` other than inside a scoring call (passing val data to eval_val is evaluation)."""
    names: set[str] = set()

    def visit(n: ast.AST) -> None:
        if isinstance(n, ast.Call) and SCORING_CALL.search(_dotted(n.func).rsplit(".", 1)[-1]):
            return
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, ast.Attribute):
            names.add(n.attr)
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(node)
    return names


def _assigned(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _val_tainted(fn: ast.AST) -> set[str]:
    """Local names whose value is derived from validation data (e.g. ``all_tokens = load(args.val_files)``)."""
    tainted: set[str] = set()
    for _ in range(3):  # a few rounds of propagation through later assignments
        for node in ast.walk(fn):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                sources, targets = node.value, (node.targets if isinstance(node, ast.Assign) else [node.target])
            elif isinstance(node, (ast.For, ast.comprehension)):
                sources, targets = node.iter, [node.target]
            else:
                continue
            if any(VAL_DATA.search(n) or n in tainted for n in _names_outside_scoring(sources)):
                for t in targets:
                    tainted |= _assigned(t)
    return tainted


def _val_to_optimizer(tree: ast.Module, file: str) -> list[Finding]:
    """Loops that update weights while reading validation data (outside scoring calls)."""
    found = []
    for fn in _functions(tree):
        tainted = _val_tainted(fn)
        for loop in ast.walk(fn):
            if not isinstance(loop, (ast.For, ast.While)) or not any(_is_update(n) for n in ast.walk(loop)):
                continue
            names = sorted((n for n in _names_outside_scoring(loop) if VAL_DATA.search(n) or n in tainted),
                           key=lambda n: (not VAL_DATA.search(n), n.startswith("_"), n))  # direct val names first
            if names:
                line = next(n.lineno for n in ast.walk(loop) if _is_update(n))
                found.append(Finding(file, line, "val-to-optimizer", "review",
                                     f"{fn.name}() updates weights in a loop over {', '.join(names[:3])}: test-time "
                                     "training, legal only if every update follows scoring (run `pgolf check flip`)"))
                break
    return found


def _train_data_in_eval(tree: ast.Module, file: str) -> list[Finding]:
    found = []
    for fn in _functions(tree):
        if not re.search(r"^eval|ttt", fn.name, re.IGNORECASE) or "train" in fn.name.lower():
            continue
        for node in ast.walk(fn):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else (
                node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None)
            if text and TRAIN_DATA.search(text):
                found.append(Finding(file, node.lineno, "train-data-in-eval", "review",
                                     f"{fn.name}() references training data ({text!r}) during evaluation"))
                break
    return found


def scan(source: str, file: str) -> list[Finding]:
    """All findings for one Python source (already unwrapped if it was self-extracting)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [Finding(file, exc.lineno or 0, "syntax", "review",
                        f"does not parse here ({exc.msg}; newer Python syntax?): only line rules ran"), *scan_lines(source, file)]
    found = _network(tree, file) + _fixed_step(tree, file) + _val_to_optimizer(tree, file) + _train_data_in_eval(tree, file)
    return sorted(found, key=lambda f: (f.line, f.rule))


LINE_RULES = (
    (re.compile(r"^\s*(import|from)\s+(" + "|".join(NETWORK_MODULES) + r")\b"), "network", "imports a network module"),
    (re.compile(r"\b(" + "|".join(DOWNLOAD_CALLS) + r")\s*\("), "network", "calls a download function"),
    (re.compile("|".join(FIXED_STEP_ENV)), "fixed-step-stop", "a fixed-step stop overrides the 600 s wallclock cap"),
)


def scan_lines(source: str, file: str) -> list[Finding]:
    """The error rules as line patterns, for sources this Python cannot parse."""
    return [Finding(file, i, rule, "error", message)
            for i, line in enumerate(source.splitlines(), 1)
            for pattern, rule, message in LINE_RULES if pattern.search(line)]
