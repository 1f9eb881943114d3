"""Untrusted input executes nothing: no code path can unpickle (or eval) what a user sends.

Every module of the packages is parsed (``ast``, so comments and docstrings do not count)
and these are refused:

* ``pickle``/``cPickle``/``dill``/``joblib``/``shelve``/``marshal`` loads, any ``*.load(s)``
  of those modules, and ``pickle.Unpickler``;
* ``np.load``/``numpy.load`` without an explicit ``allow_pickle=False``, and any
  ``allow_pickle=True``;
* ``torch.load`` without ``weights_only=True``; ``torch.jit.load``;
* ``yaml.load`` / ``yaml.unsafe_load`` (``yaml.safe_load`` is fine);
* the builtins ``eval`` / ``exec`` / ``compile`` (``model.eval()`` is a method, not these).

The scanner itself is tested on snippets, so the check can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "methods", "leaderboard", "slurm", "splits", "synth", "benchmarks")
_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal",
                   "cloudpickle"}
_LOADS = {"load", "loads", "Unpickler", "open"}


def _dotted(node) -> str:
    """``a.b.c`` of a Name/Attribute chain ("" for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_constant(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def find_unsafe_loads(source: str, filename: str = "<snippet>") -> list[str]:
    """Every unsafe call in ``source``, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module or module.attr it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []

    def report(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and _is_constant(
                node.value, True):
            report(node.value, "allow_pickle=True")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if not name:
            continue
        head, _, rest = name.partition(".")
        resolved = aliases.get(head, head) + (f".{rest}" if rest else "")
        module, _, function = resolved.rpartition(".")
        root = module.split(".")[0] if module else ""
        if root in _PICKLE_MODULES and function in _LOADS:
            report(node, f"{resolved}() unpickles")
        elif resolved in ("numpy.load", "np.load"):
            if not _is_constant(_keyword(node, "allow_pickle"), False):
                report(node, f"{name}() without allow_pickle=False")
        elif resolved == "torch.load":
            if not _is_constant(_keyword(node, "weights_only"), True):
                report(node, "torch.load() without weights_only=True")
        elif resolved in ("torch.jit.load", "yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            report(node, f"{resolved}() can run code")
        elif isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec", "compile") \
                and node.func.id not in aliases:
            report(node, f"builtin {node.func.id}()")
    return found


def _package_files() -> list[Path]:
    files = []
    for package in PACKAGES:
        folder = REPO / package
        if folder.is_dir():
            files.extend(sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts))
    return files


def test_packages_never_unpickle_or_eval():
    files = _package_files()
    assert len(files) > 40, "the scan found too few modules to be looking in the right place"
    problems = []
    for path in files:
        problems += find_unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert problems == [], "\n".join(problems)


def test_the_readers_of_user_files_are_in_the_scan():
    """The modules that read submitted files are among those scanned (a guard on PACKAGES)."""
    scanned = {str(p.relative_to(REPO)) for p in _package_files()}
    for module in (
        "harness/features.py",
        "harness/hdf5.py",
        "harness/matfile/v5.py",
        "harness/matfile/v73.py",
        "harness/splits/split.py",
        "harness/search/streaming.py",
        "harness/results.py",
        "leaderboard/records.py",
        "methods/checkpoints.py",
        "slurm/evaluate.py",
    ):
        assert module in scanned


@pytest.mark.parametrize(
    "snippet, expected",
    [
        ("import pickle\npickle.load(f)", "pickle.load() unpickles"),
        ("import pickle as p\np.loads(b)", "pickle.loads() unpickles"),
        ("from pickle import load\nload(f)", "pickle.load() unpickles"),
        ("import pickle\npickle.Unpickler(f).load()", "pickle.Unpickler() unpickles"),
        ("import joblib\njoblib.load(p)", "joblib.load() unpickles"),
        ("import numpy as np\nnp.load(p)", "np.load() without allow_pickle=False"),
        ("import numpy\nnumpy.load(p, allow_pickle=True)", "allow_pickle=True"),
        ("import numpy as np\nnp.load(p, allow_pickle=flag)",
         "np.load() without allow_pickle=False"),
        ("import torch\ntorch.load(p)", "torch.load() without weights_only=True"),
        ("import torch\ntorch.load(p, weights_only=False)",
         "torch.load() without weights_only=True"),
        ("from torch import load\nload(p, map_location='cpu')",
         "torch.load() without weights_only=True"),
        ("import torch\ntorch.jit.load(p)", "torch.jit.load() can run code"),
        ("import yaml\nyaml.load(text)", "yaml.load() can run code"),
        ("eval(text)", "builtin eval()"),
        ("exec(code)", "builtin exec()"),
    ],
)
def test_scanner_catches(snippet, expected):
    found = find_unsafe_loads(snippet)
    assert len(found) >= 1 and any(line.endswith(expected) for line in found), found


@pytest.mark.parametrize(
    "snippet",
    [
        "import numpy as np\nnp.load(p, allow_pickle=False)",
        "import torch\ntorch.load(p, map_location='cpu', weights_only=True)",
        "import yaml\nyaml.safe_load(text)",
        "model.eval()",
        "import json\njson.load(f)",
        "# pickle.load(f) in a comment\nx = 'np.load(p)'",
        "import h5py\nh5py.File(p, 'r')",
    ],
)
def test_scanner_accepts_safe_code(snippet):
    assert find_unsafe_loads(snippet) == []
