"""The IOVPR leaderboard: submitted records, generated tables, the static page, checks.

Submit (``harness submit``) evaluates feature files and publishes an immutable record under
``leaderboard/results/<split>/<method>/<id>.json``; ``harness leaderboard build`` turns the
records into ``leaderboard/README.md``, LaTeX and CSV tables and a static HTML page;
``harness leaderboard check`` re-validates every record (CI runs it).

Public API::

    submit(features, *, split, method_name, metadata=None, results_dir=..., ...) -> Submission
    build_leaderboard(results_dir, out_dir, *, data_root=None) -> BuildOutput
    check_results(results_dir, *, data_root=None, feature_dirs=(), ...) -> CheckReport
    read_record(path) -> LeaderboardRecord;  load_records(results_dir)
    MethodMetadata, read_method_metadata(path)
"""

from __future__ import annotations

__all__ = [
    "submit",
    "Submission",
    "build_leaderboard",
    "BuildOutput",
    "check_results",
    "CheckReport",
    "read_record",
    "load_records",
    "LeaderboardRecord",
    "MethodMetadata",
    "read_method_metadata",
]

_LAZY = {
    "submit": "leaderboard.submit",
    "Submission": "leaderboard.submit",
    "build_leaderboard": "leaderboard.build",
    "BuildOutput": "leaderboard.build",
    "check_results": "leaderboard.check",
    "CheckReport": "leaderboard.check",
    "read_record": "leaderboard.records",
    "load_records": "leaderboard.records",
    "LeaderboardRecord": "leaderboard.records",
    "MethodMetadata": "leaderboard.records",
    "read_method_metadata": "leaderboard.records",
}


def __getattr__(name):
    # Lazy, so that `harness --help` (which imports leaderboard.cli) stays fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'leaderboard' has no attribute {name!r}")
