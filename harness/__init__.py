"""Inside-Out VPR benchmark harness: splits, ground truth, feature files, exact evaluation.

The harness only reads files: methods write feature files (``harness.features``), the
evaluator reads them. Nothing here imports torch or the ``methods`` package.
"""

__version__ = "0.1.0"
