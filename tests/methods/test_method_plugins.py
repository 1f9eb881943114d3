"""Methods as plugins: the ``harness.methods`` entry-point group.

The example package ``examples/harness-randproj`` is installed (pip, offline, ``--target``) into
a temporary folder put on ``PYTHONPATH``; the CLI, in a subprocess, then lists it with its
distribution and module and evaluates it on the tiny synthetic city. Its descriptors and the
record's recall are checked against a numpy computation written here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from harness.errors import HarnessError  # noqa: E402
from harness.features import read_descriptors, read_names  # noqa: E402
from methods.registry import MethodRegistry, register_method  # noqa: E402
from methods.transforms import ResizeUint8  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "harness-randproj"
BUILTINS = {"netvlad", "sfrs", "probe", "iovpr-real", "iovpr-gray", "salad", "megaloc", "boq",
            "cosplace", "eigenplaces", "mixvpr"}


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """The example plugin installed by pip into a folder of its own (offline, no deps)."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "source"
    shutil.copytree(EXAMPLE, source)  # pip builds in the source folder: keep the repo clean
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(source)],
        check=True, capture_output=True,
    )
    assert (target / "harness_randproj-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


def _harness(plugin_path, *args):
    env = {**os.environ, "PYTHONPATH": str(plugin_path), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], env=env,
                          capture_output=True, text=True)


def test_methods_list_shows_the_plugin_and_the_builtins_with_their_origin(plugin_path):
    result = _harness(plugin_path, "methods", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    entries = {line.split()[0]: i for i, line in enumerate(lines) if not line.startswith(" ")}
    assert BUILTINS | {"randproj"} <= set(entries)
    origin = lines[entries["randproj"] + 1].strip()
    assert origin == ("from: harness-randproj 0.1.0 "
                      "(harness_randproj.method:RandomProjectionMethod)")
    assert lines[entries["netvlad"] + 1].strip().startswith("from: iovpr-harness ")
    assert lines[entries["netvlad"] + 1].strip().endswith("(methods.netvlad:NetVLADMethod)")
    # Without the plugin on the path the CLI does not know it.
    plain = subprocess.run([sys.executable, "-m", "harness.cli", "methods", "list"],
                           capture_output=True, text=True)
    assert plain.returncode == 0 and "randproj" not in plain.stdout


def _reference(path, dim: int, seed: int = 0, side: int = 16) -> np.ndarray:
    """The example's descriptor by its definition, in numpy."""
    with Image.open(path) as image:
        pixels = ResizeUint8(side, side)(image.convert("RGB")).numpy().astype(np.float32)
    pixels = pixels.reshape(3, -1)
    centred = (pixels - pixels.mean(axis=1, keepdims=True)).reshape(-1)
    matrix = np.random.default_rng(seed).standard_normal((3 * side * side, dim))
    descriptor = centred.astype(np.float64) @ matrix.astype(np.float32).astype(np.float64)
    return descriptor / np.linalg.norm(descriptor)


def test_eval_and_extract_run_the_plugin(plugin_path, tiny_city, tmp_path):
    split = tiny_city.split("indoor-ams-1")
    record = tmp_path / "r.json"
    result = _harness(plugin_path, "eval", "--method", "randproj", "--split",
                      "synth-indoor-ams-1", "--data-root", tiny_city.data_root,
                      "--features-dir", tmp_path / "feats", "--device", "cpu",
                      "--method-option", "dim=32", "--json", record, "--no-progress")
    assert result.returncode == 0, result.stderr
    data = json.loads(record.read_text())
    assert data["method"] == "randproj" and data["descriptor_dim"] == 32

    (query_file,) = (tmp_path / "feats").glob("randproj-*/synth-indoor-ams-1/query.h5")
    (database_file,) = (tmp_path / "feats").rglob("database-*-of-*.h5")
    stored = {}
    for part, path, root in (("query", query_file, split.query_root),
                             ("database", database_file, split.database_root)):
        names = read_names(path, part)
        expected = np.stack([_reference(Path(root) / name, 32) for name in names])
        np.testing.assert_allclose(read_descriptors(path, part), expected, atol=1e-5)
        stored[part] = dict(zip(names, expected))
    queries = np.stack([stored["query"][n] for n in split.query_names])
    database = np.stack([stored["database"][n] for n in split.database_names])
    top1 = np.argmax(queries @ database.T, axis=1)
    distance = np.linalg.norm(split.database_utm[top1] - split.query_utm, axis=1)
    # the record rounds scores to 6 digits
    recall = np.mean(distance <= split.radius_m)
    assert data["scores"]["recall@1"] == pytest.approx(recall, abs=1e-6)

    out = tmp_path / "images.h5"
    result = _harness(plugin_path, "extract", "-m", "randproj", "--images", split.query_root,
                      "-o", out, "--option", "dim=8", "--device", "cpu", "--workers", "0",
                      "--no-progress")
    assert result.returncode == 0, result.stderr
    assert read_descriptors(out, "database").shape[1] == 8


def _fake_distribution(folder: Path, name: str, entry_points: str) -> None:
    info = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[harness.methods]\n{entry_points}\n")


def test_a_broken_plugin_is_reported_and_the_others_still_load(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "broken-plugin",
                       "gone = no_such_module_here:Method\nnotamethod = json:JSONDecoder")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = MethodRegistry()
    assert BUILTINS <= set(registry.names()) and "gone" not in registry.names()
    origin, reason = registry.failures["gone"]
    assert origin.distribution == "broken-plugin" and "ModuleNotFoundError" in reason
    with pytest.raises(HarnessError, match=r"method gone \(broken-plugin 1.0 "
                                           r"\(no_such_module_here:Method\)\) failed to load"):
        registry.get("gone")
    assert "not a methods.base.Method subclass" in registry.failures["notamethod"][1]


def test_two_packages_with_one_name_is_an_error_naming_both(tmp_path, monkeypatch):
    (tmp_path / "other_vpr.py").write_text(
        "from methods.probe import ProbeMethod\n\n\nclass OtherSFRS(ProbeMethod):\n    pass\n")
    _fake_distribution(tmp_path, "other-vpr", "sfrs = other_vpr:OtherSFRS")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = MethodRegistry()
    with pytest.raises(HarnessError, match="registered twice") as info:
        registry.names()
    message = info.value.one_line()
    assert "other-vpr 1.0" in message and "iovpr-harness" in message
    with pytest.raises(HarnessError, match="registered twice"):  # not half-loaded afterwards
        registry.get("netvlad")


def test_register_method_in_process_and_its_origin(monkeypatch):
    import methods.registry as registry_module
    from methods.probe import ProbeMethod

    monkeypatch.setattr(registry_module, "METHODS", MethodRegistry())

    @register_method("probe-copy")
    class ProbeCopy(ProbeMethod):
        pass

    assert registry_module.get_method_class("probe-copy") is ProbeCopy
    assert ProbeCopy.name == "probe-copy"
    origin = registry_module.method_origin("probe-copy")
    assert origin.distribution is None and origin.value.endswith(".ProbeCopy")
    with pytest.raises(HarnessError, match="registered twice"):
        register_method("probe")(type("Other", (ProbeMethod,), {}))
