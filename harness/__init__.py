"""Inside-Out VPR benchmark harness: splits, ground truth, feature files, exact evaluation.

The harness only reads files: methods write feature files (``harness.features``), the
evaluator reads them. Nothing here imports torch or the ``methods`` package.

Public Python API (loaded on first use, so ``import harness`` stays light)::

    split = harness.load_split("pitts30k-test")          # or a .split.npz path
    result = harness.evaluate("feats.h5", split)          # or ranking="ranking.txt"
    result.scores["recall@1"]
    features = harness.read_features("feats.h5", split)   # rows in the split's order
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_split": "harness.api",
    "read_features": "harness.api",
    "Features": "harness.api",
    "EvalConfig": "harness.config",
    "HarnessError": "harness.errors",
}


def __getattr__(name):
    if name == "evaluate":
        # The submodule harness.evaluate becomes this attribute once anything imports it;
        # it is callable (harness.api.evaluate), so harness.evaluate(...) works either way.
        return importlib.import_module("harness.evaluate")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "evaluate", *_LAZY])
