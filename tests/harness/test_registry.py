"""The one Registry: decorator, get/names, duplicates raise, hints, lazy modules, entry points."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

from harness import registry as registry_module
from harness.errors import HarnessError
from harness.registry import Registry


def test_decorator_get_and_sorted_names():
    things: Registry = Registry("thing")

    @things.decorator("beta")
    def beta():
        return "b"

    things.register("alpha", "a")
    assert things.get("beta") is beta and things.get("alpha") == "a"
    assert things.names() == ["alpha", "beta"] and "alpha" in things and "gamma" not in things
    assert things.items() == [("alpha", "a"), ("beta", beta)]


@pytest.mark.parametrize("name", ["", " padded", "two words"])
def test_invalid_names_raise(name):
    with pytest.raises(ValueError, match="invalid thing name"):
        Registry("thing").register(name, object())


def test_a_name_registered_twice_raises():
    things: Registry = Registry("thing")
    things.register("netvlad", 1)
    with pytest.raises(ValueError, match="thing 'netvlad' is already registered"):
        things.register("netvlad", 2)
    assert things.get("netvlad") == 1


def test_unknown_names_suggest_close_matches_and_list_the_known():
    things: Registry = Registry("search backend")
    for name in ("numpy", "faiss-cpu", "faiss-gpu"):
        things.register(name, name)
    with pytest.raises(HarnessError, match=r"unknown search backend 'faiss-cpo'; did you mean "
                                           r"faiss-cpu, faiss-gpu\? \(known: faiss-cpu"):
        things.get("faiss-cpo")
    with pytest.raises(HarnessError) as raised:
        things.get("zzz")
    assert "did you mean" not in str(raised.value) and "known: faiss-cpu, faiss-gpu, numpy" in \
        str(raised.value)


def test_registration_modules_are_imported_on_first_lookup(tmp_path, monkeypatch):
    (tmp_path / "house_registry_plugin.py").write_text(
        "from house_registry_holder import THINGS\nTHINGS.register('plugged', 42)\n")
    (tmp_path / "house_registry_holder.py").write_text(
        "from harness.registry import Registry\n"
        "THINGS = Registry('thing', ('house_registry_plugin',))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from house_registry_holder import THINGS

    assert "house_registry_plugin" not in sys.modules  # not at import of the registry
    assert THINGS.get("plugged") == 42 and "house_registry_plugin" in sys.modules
    for name in ("house_registry_plugin", "house_registry_holder"):
        monkeypatch.delitem(sys.modules, name)


def test_only_an_absent_optional_module_is_skipped():
    absent = Registry(
        "thing", ("house_no_such_module",), optional_modules=("house_no_such_module",)
    )
    assert absent.names() == []
    required = Registry("thing", ("house_no_such_module",))
    with pytest.raises(ModuleNotFoundError, match="house_no_such_module"):
        required.names()


def test_entry_points_register_objects_and_import_modules(tmp_path, monkeypatch):
    (tmp_path / "house_ep_plugin.py").write_text(
        "class Method:\n    pass\n"
        "from house_ep_holder import THINGS\nTHINGS.register('by-import', 'registered itself')\n")
    (tmp_path / "house_ep_holder.py").write_text(
        "from harness.registry import Registry\n"
        "THINGS = Registry('method', entry_point_group='house.test.methods')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [EntryPoint("by-object", "house_ep_plugin:Method", "house.test.methods"),
              EntryPoint("by-import", "house_ep_plugin", "house.test.methods")]

    def fake_entry_points(*, group):
        return [point for point in points if point.group == group]

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    from house_ep_holder import THINGS

    assert THINGS.names() == ["by-import", "by-object"]
    assert THINGS.get("by-object").__name__ == "Method"
    assert THINGS.get("by-import") == "registered itself"
    for name in ("house_ep_plugin", "house_ep_holder"):
        monkeypatch.delitem(sys.modules, name)


def test_the_projects_registries_are_this_one():
    from harness.search.backend import BACKENDS
    from harness.splits.sources import SPLIT_SOURCES
    from methods.registry import METHODS
    from methods.train.registry import TRAININGS

    for registry in (BACKENDS, SPLIT_SOURCES, METHODS, TRAININGS):
        assert isinstance(registry, Registry)
    assert "numpy" in BACKENDS and "netvlad-mat" in SPLIT_SOURCES
