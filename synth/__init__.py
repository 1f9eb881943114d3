"""A procedural inside-out city in the layout of the real Amsterdam-XXXL release.

``make_city(out_dir, preset="demo", seed=0)`` writes database street views, outdoor and
indoor queries (rooms whose windows show the street at the query's location, with their true
window masks), NetVLAD ``.mat`` dbStructs and an ADE20k-format folder of indoor scenes, so the
same import, extraction and evaluation code runs on it and on the real data. Only numpy and
Pillow are used (no torch).
"""

from __future__ import annotations

from synth.dataset import CityInfo, make_city, mask_path
from synth.presets import CityConfig, get_preset, list_presets, register_preset

__all__ = [
    "CityConfig",
    "CityInfo",
    "get_preset",
    "list_presets",
    "make_city",
    "mask_path",
    "register_preset",
]
