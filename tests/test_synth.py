"""Tests of the synthetic city (harness.synth)."""

from __future__ import annotations


def test_tiny_city_fixture_registers_all_splits(tiny_city):
    outdoor = tiny_city.split("outdoor-ams")
    indoor = tiny_city.split("indoor-ams-1")
    assert outdoor.num_database == tiny_city.info.counts["database"]
    assert indoor.database_names == outdoor.database_names
    assert indoor.num_queries == tiny_city.info.counts["indoor1"]
