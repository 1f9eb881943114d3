"""The measured kernel rates that ``--cpu-backend auto`` decides with: measured once per
machine, cached, re-measured when the cache is unreadable or the machine differs."""

from __future__ import annotations

import json
import logging

import pytest

from harness import gemm_rates
from harness.gemm_rates import KernelRates, kernel_rates, machine_key

SMALL = {"queries": 8, "rows": 128, "dim": 64, "repeats": 1}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(gemm_rates.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(gemm_rates, "machine_busy", lambda: (False, 0.0))  # CI may be loaded
    return tmp_path / "cache"


def test_rates_measured_on_a_busy_machine_are_not_cached(cache, monkeypatch, caplog):
    monkeypatch.setattr(gemm_rates, "machine_busy", lambda: (True, 17.5))
    with caplog.at_level(logging.INFO, logger="harness.gemm_rates"):
        busy = kernel_rates(**SMALL)
    assert busy.float32 > 0 and not busy.cached
    assert not cache.exists() or not list(cache.iterdir())
    assert "load average 17.5" in caplog.text and "not cached" in caplog.text
    monkeypatch.setattr(gemm_rates, "machine_busy", lambda: (False, 0.5))
    assert not kernel_rates(**SMALL).cached and kernel_rates(**SMALL).cached


def test_machine_busy_reads_the_load_average(monkeypatch):
    monkeypatch.setattr(gemm_rates, "cpu_cores", lambda: 2)
    monkeypatch.setattr(gemm_rates.os, "getloadavg", lambda: (3.5, 1.0, 1.0))
    assert gemm_rates.machine_busy() == (True, 3.5)
    monkeypatch.setattr(gemm_rates.os, "getloadavg", lambda: (2.5, 9.0, 9.0))
    assert gemm_rates.machine_busy() == (False, 2.5)


def test_measured_once_then_read_from_the_cache(cache):
    first = kernel_rates(**SMALL)
    assert not first.cached and first.key == machine_key()
    assert first.float32 > 0
    assert first.faiss is None or first.faiss > 0
    assert first.bf16 is None or first.bf16 > 0
    files = list(cache.iterdir())
    assert [f.name for f in files] == [f"kernel-rates-{first.key}.json"]
    again = kernel_rates(**SMALL)
    assert again.cached
    assert (again.float32, again.faiss, again.bf16, again.measured_at) == (
        first.float32, first.faiss, first.bf16, first.measured_at)
    assert not kernel_rates(refresh=True, **SMALL).cached


@pytest.mark.parametrize("content", [
    "not json", "[]", json.dumps({"format_version": 99}),
    json.dumps({"format_version": 1, "float32": -1.0, "faiss": None, "bf16": None,
                "key": "x", "measured_at": "t"}),
    json.dumps({"format_version": 1, "float32": True, "faiss": None, "bf16": None,
                "key": "x", "measured_at": "t"}),
])
def test_an_unreadable_cache_is_measured_again_and_replaced(cache, caplog, content):
    cache.mkdir()
    path = cache / f"kernel-rates-{machine_key()}.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="harness.gemm_rates"):
        rates = kernel_rates(**SMALL)
    assert not rates.cached and "unreadable kernel-rates cache" in caplog.text
    assert KernelRates.from_dict(json.loads(path.read_text())).float32 == rates.float32


def test_a_cache_of_another_machine_is_not_used(cache):
    cache.mkdir()
    path = cache / f"kernel-rates-{machine_key()}.json"
    other = KernelRates(1.0, None, 1000.0, "0123456789abcdef", "2020-01-01T00:00:00Z")
    path.write_text(json.dumps(other.to_dict()))
    rates = kernel_rates(**SMALL)
    assert not rates.cached and rates.key == machine_key()


def test_an_unwritable_cache_folder_still_gives_rates(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(gemm_rates.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(gemm_rates, "machine_busy", lambda: (False, 0.0))
    with caplog.at_level(logging.WARNING, logger="harness.gemm_rates"):
        rates = kernel_rates(**SMALL)
    assert rates.float32 > 0 and "cannot cache the kernel rates" in caplog.text


def test_machine_key_is_stable_and_short():
    assert machine_key() == machine_key() and len(machine_key()) == 16
    int(machine_key(), 16)
