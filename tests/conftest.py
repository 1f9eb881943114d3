"""Shared fixtures.

``tiny_city`` (session scope): the synthetic inside-out city of the ``tiny`` preset, generated
once per test session (a few seconds) into a temporary folder, with its splits registered
under their ``synth-`` names in a private data root. Use it read-only::

    def test_something(tiny_city):
        split = tiny_city.split("indoor-ams-1")          # a harness.splits.Split
        split = get_split("synth-outdoor-ams", tiny_city.data_root)   # the same, by name
        image = tiny_city.root / "raw/Amsterdam/queries" / split.query_names[0]
        mask = tiny_city.mask_path(split.query_names[0])  # indoor queries only
        ade = tiny_city.ade_dir                            # ADEChallengeData2016/

Tests that write (features, results, new splits) write into their own ``tmp_path``; a test
that needs a data root it may add splits to copies :attr:`TinyCity.data_root` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_CITY_SEED = 0
SYNTH_PREFIX = "synth-"


@dataclass(frozen=True)
class TinyCity:
    """The generated tiny city.

    Attributes:
        info: the :class:`synth.CityInfo` returned by ``make_city`` (``info.counts``,
            ``info.config`` with the image size, ``info.query_metadata()`` with the true
            window fraction, place and camera of every query).
        root: dataset root (``raw/ams30k_*.mat``, ``raw/amsoutdoor_test.mat``,
            ``raw/amsindoor{1,2}_test.mat``, ``raw/Amsterdam/{images,queries,query_masks}``).
        data_root: where the splits are registered: ``synth-ams30k-train``,
            ``synth-ams30k-val``, ``synth-ams30k-test``, ``synth-outdoor-ams``,
            ``synth-indoor-ams-1``, ``synth-indoor-ams-2`` (pass it as ``data_root=`` or
            ``--data-root``; the splits' ``query_root``/``database_root`` are absolute).
        ade_dir: the ADE20k-format folder ``ADEChallengeData2016`` (training + validation).
        masks_dir: root of the indoor window masks (255 = window), one PNG per indoor query.
        split_names: built-in name -> registered name (``"indoor-ams-1" -> "synth-indoor-ams-1"``).
    """

    info: object
    root: Path
    data_root: Path
    ade_dir: Path
    masks_dir: Path
    split_names: dict

    def split(self, builtin: str):
        """The registered split for a built-in name (``outdoor-ams``) or a ``synth-`` name."""
        from harness.splits import get_split

        name = builtin if builtin.startswith(SYNTH_PREFIX) else SYNTH_PREFIX + builtin
        return get_split(name, self.data_root)

    def mask_path(self, query_name: str) -> Path:
        """The true window mask of an indoor query (``indoor1/000000.jpg`` -> its PNG)."""
        return self.info.mask_path(query_name)


@pytest.fixture(scope="session")
def tiny_city(tmp_path_factory) -> TinyCity:
    from harness.splits import prepare_builtin_splits
    from synth import make_city

    base = tmp_path_factory.mktemp("tiny_city")
    info = make_city(base / "city", "tiny", seed=TINY_CITY_SEED, workers=1)
    data_root = base / "data"
    outcomes = prepare_builtin_splits(info.root, prefix=SYNTH_PREFIX, data_root=data_root)
    names = {o.name[len(SYNTH_PREFIX) :]: o.name for o in outcomes if o.registered}
    expected = {
        "ams30k-train",
        "ams30k-val",
        "ams30k-test",
        "outdoor-ams",
        "indoor-ams-1",
        "indoor-ams-2",
    }
    assert expected <= set(
        names
    ), f"tiny city splits not registered: {sorted(expected - set(names))}"
    return TinyCity(
        info=info,
        root=info.root,
        data_root=data_root,
        ade_dir=info.ade_dir,
        masks_dir=info.masks_dir,
        split_names=names,
    )


@pytest.fixture(scope="session", autouse=True)
def kernel_rates_cache(tmp_path_factory):
    """The measured kernel rates (``--cpu-backend auto``) are cached in a session folder, not
    in the user's ~/.cache (job processes inherit it through the environment)."""
    import os

    from harness.gemm_rates import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("harness-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="session", autouse=True)
def no_remembered_digests():
    """Feature files are hashed in every evaluation of the tests (each test sees the hashing it
    asks for); tests of :mod:`harness.digests` turn remembering on in their own folder."""
    import os

    from harness.digests import DIGEST_CACHE_ENV

    previous = os.environ.get(DIGEST_CACHE_ENV)
    os.environ[DIGEST_CACHE_ENV] = "off"
    yield
    if previous is None:
        os.environ.pop(DIGEST_CACHE_ENV, None)
    else:
        os.environ[DIGEST_CACHE_ENV] = previous
