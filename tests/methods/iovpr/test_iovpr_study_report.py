"""The IOVPR study report: paired tests against the baseline from real result records."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import EvalConfig
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.results import read_predictions
from harness.stats import mcnemar_exact
from methods.iovpr.study_report import (
    BASELINE,
    BEGIN,
    END,
    paired_against_baseline,
    replace_readme_section,
    seed_section,
)

SETS = ("indoor-ams-1", "indoor-ams-2")


@pytest.fixture(scope="module")
def study_rows(tiny_city, tmp_path_factory):
    """Study-like rows: the probe on raw queries as the baseline, on gray queries as a method."""
    from synth.probe import write_probe_features

    folder = tmp_path_factory.mktemp("study")
    config = EvalConfig(ngpu=0, checksums=False, bootstrap_resamples=200)
    rows = []
    for label, masks in ((BASELINE, None), ("gray probe", tiny_city.masks_dir)):
        row = {"method": label, "records": {}}
        for name in SETS:
            split = tiny_city.split(name)
            slug = label.replace(" ", "-").replace("(", "").replace(")", "")
            features = write_probe_features(split, folder / f"{slug}-{name}.h5", mask_dir=masks)
            result = evaluate([features], split, config, method=slug)
            row["records"][name] = str(result.write(folder / f"{slug}-{name}.json"))
        rows.append(row)
    rows.append({"method": "outdoor only", "records": {}})
    return rows


def test_paired_against_baseline_counts_the_pooled_queries(study_rows):
    paired, = paired_against_baseline(study_rows)
    hits = {}
    for row in study_rows[:2]:
        ranks = [read_predictions(row["records"][name]).first_positive_rank for name in SETS]
        hits[row["method"]] = [r == 0 for r in ranks]
    base, gray = hits[BASELINE], hits["gray probe"]
    won = sum(int(np.count_nonzero(g & ~b)) for b, g in zip(base, gray))
    lost = sum(int(np.count_nonzero(b & ~g)) for b, g in zip(base, gray))
    assert (paired.won, paired.lost) == (won, lost)
    assert paired.p_value == mcnemar_exact(lost, won)
    means = [np.mean([h.mean() for h in hits[m]]) for m in (BASELINE, "gray probe")]
    assert paired.difference == pytest.approx(means[1] - means[0])
    assert paired.low <= paired.difference <= paired.high
    assert paired.queries == sum(len(h) for h in base)


def test_seed_section_and_readme_markers(study_rows, tmp_path):
    lines = seed_section(43, {"table": study_rows}, SETS)
    text = "\n".join(lines)
    assert "**Seed 43**" in text and "| gray probe |" in text and " ± " in text
    assert "outdoor only" in text.split("Against the baseline")[0]  # listed, not tested
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold hand counts\n{END}\nafter\n")
    replace_readme_section(readme, text)
    content = readme.read_text()
    assert "old hand counts" not in content and "**Seed 43**" in content
    assert content.startswith("intro\n") and content.endswith(f"{END}\nafter\n")
    readme.write_text("no markers\n")
    with pytest.raises(HarnessError, match="markers"):
        replace_readme_section(readme, text)


def test_study_report_cli_rejects_bad_seeds(tmp_path):
    from click.testing import CliRunner

    from harness.cli import cli

    result = CliRunner().invoke(cli, ["iovpr", "study-report", "--city", str(tmp_path),
                                      "--data-root", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--seeds", "43,x"])
    assert result.exit_code == 2 and "expected integers like 43,44" in result.output


def test_a_finished_study_of_the_same_settings_is_reused(study_rows, tmp_path):
    import json

    from harness.io import write_json_atomic
    from methods.iovpr.study import make_study_config
    from methods.iovpr.study_report import _finished_study
    from methods.options import config_to_dict

    config = make_study_config(city_root="c", data_root="d", out_dir=str(tmp_path), seed=43)
    write_json_atomic(tmp_path / "study.json", {"config": config_to_dict(config),
                                                "table": study_rows[:2]})
    assert _finished_study(config)["table"][0]["method"] == BASELINE
    other = make_study_config(city_root="c", data_root="d", out_dir=str(tmp_path), seed=44)
    assert _finished_study(other) is None  # other settings: run again
    study = json.loads((tmp_path / "study.json").read_text())
    study["table"][0]["records"]["indoor-ams-1"] = str(tmp_path / "gone.json")
    write_json_atomic(tmp_path / "study.json", study)
    assert _finished_study(config) is None  # a record is missing: run again
