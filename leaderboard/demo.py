"""`harness demo`: the whole benchmark on the embedded synthetic city, on CPU.

Stages, each cached under ``--out`` so that a rerun only redoes what is missing:

1. the synthetic inside-out city (``synth.make_city``, demo preset) and its splits,
   registered as ``synth-*`` under ``OUT/harness``;
2. the training-free probe descriptor (colour histograms) on every evaluation split;
3. unless ``--no-train``: the IOVPR study (``methods.iovpr.study``): the window segmenter, then
   three SFRS trainings of identical length (baseline, real layouts, gray layouts) with a small
   backbone, and their features on every evaluation split;
4. every method's features submitted to a demo leaderboard (``OUT/results``), whose tables are
   built into ``OUT/leaderboard`` and printed for the indoor and outdoor query sets.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

# The demo's study settings live with the study (the README's study report runs them too).
from methods.iovpr.study import DEMO_EVAL_SPLITS as EVAL_SPLITS
from methods.iovpr.study import DEMO_STUDY

logger = logging.getLogger(__name__)

PREFIX = "synth-"
# study row label -> leaderboard method name; oracle rows (true masks) are not methods.
STUDY_METHODS = {
    "sfrs (baseline)": "sfrs-small",
    "sfrs + gray queries": "sfrs-small+gray-queries",
    "iovpr-real": "iovpr-real-small",
    "iovpr-gray": "iovpr-gray-small",
}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; every field has the value ``make demo`` uses."""

    out_dir: str = "data/demo"
    preset: str = "demo"
    seed: int = 0
    train: bool = True
    device: str = "cpu"
    study_options: tuple[tuple[str, object], ...] = field(default=())


@dataclass(frozen=True)
class DemoResult:
    leaderboard_readme: Path
    records: int
    seconds: dict


def _submit_all(features: dict[str, dict[str, list[Path]]], *, data_root: Path,
                results_dir: Path) -> int:
    from leaderboard.submit import submit

    count = 0
    for method_name, per_split in features.items():
        for split_name, paths in per_split.items():
            outcome = submit(paths, split=PREFIX + split_name, method_name=method_name,
                             results_dir=results_dir, data_root=data_root)
            count += 1
            logger.info("%s %s on %s: %s", "submitted" if outcome.created else "already submitted",
                        method_name, split_name, outcome.path)
    return count


def run_demo(config: DemoConfig = DemoConfig()) -> DemoResult:
    """Run (or resume) the demo; returns where the leaderboard tables are."""
    from harness.splits import get_split, prepare_builtin_splits
    from leaderboard.build import build_leaderboard
    from synth import make_city
    from synth.probe import write_probe_features

    out = Path(config.out_dir)
    data_root = out / "harness"
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    info = make_city(out / "city", config.preset, config.seed)
    prepare_builtin_splits(info.root, prefix=PREFIX, data_root=data_root)
    seconds["city"] = time.perf_counter() - start

    start = time.perf_counter()
    features: dict[str, dict[str, list[Path]]] = {"probe-hist": {}}
    for name in EVAL_SPLITS:
        path = out / "features" / "probe-hist" / f"{name}.h5"
        if not path.is_file():
            write_probe_features(get_split(PREFIX + name, data_root), path, kind="hist")
        features["probe-hist"][name] = [path]
    seconds["probe"] = time.perf_counter() - start

    if config.train:
        from methods.iovpr.study import make_study_config, run_study

        start = time.perf_counter()
        study_dir = out / "study"
        study = make_study_config(city_root=str(info.root), data_root=str(data_root),
                                  out_dir=str(study_dir), prefix=PREFIX, eval_splits=EVAL_SPLITS,
                                  device=config.device,
                                  **{**DEMO_STUDY, **dict(config.study_options)})
        rows = {row["method"]: row for row in run_study(study).table}
        for label, method_name in STUDY_METHODS.items():
            if label in rows:
                features[method_name] = {name: [Path(p) for p in paths]
                                         for name, paths in rows[label]["features"].items()}
        print((study_dir / "study.md").read_text(encoding="utf-8"))
        seconds["train"] = time.perf_counter() - start

    start = time.perf_counter()
    records = _submit_all(features, data_root=data_root, results_dir=out / "results")
    built = build_leaderboard(out / "results", out / "leaderboard", data_root=data_root)
    seconds["leaderboard"] = time.perf_counter() - start
    readme = built.readme
    return DemoResult(leaderboard_readme=readme, records=records, seconds=seconds)


def synthetic_tables(readme: Path) -> str:
    """The synthetic-city sections of a generated leaderboard README."""
    text = readme.read_text(encoding="utf-8")
    sections = text.split("\n## ")
    keep = [s for s in sections[1:] if "synthetic" in s.lower() or "synth-" in s]
    return "\n".join("## " + s.strip() + "\n" for s in keep) or text
