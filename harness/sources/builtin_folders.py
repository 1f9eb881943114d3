"""Built-in splits registered from dataset folders (``splits/folders.toml``).

:func:`prepare_all` is what ``harness splits prepare`` runs: the ``.mat`` built-ins
(:func:`harness.splits.prepare_builtin_splits`), then every folder built-in whose folders exist
under the root and whose name the ``.mat`` files did not already register.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from harness.errors import HarnessError
from harness.sources.downloader import split_from_folder
from harness.sources.msls import split_from_msls
from harness.splits import (
    PrepareOutcome,
    builtin_definitions,
    prepare_builtin_splits,
    register_split,
)
from harness.toml_tables import read_typed_tables

logger = logging.getLogger(__name__)

FOLDERS_FORMAT_VERSION = 1
_TYPES = {
    "description": str, "folder": str, "database_folder": str, "queries_folder": str,
    "msls": str, "cities": list, "radius_m": (int, float), "recall_ns": list,
    "spatial_nms": bool, "no_positive": str,
}


@dataclass(frozen=True)
class FolderDefinition:
    """One entry of ``splits/folders.toml``: a downloader-layout folder or an MSLS root."""

    name: str
    description: str
    radius_m: float
    folder: str | None = None
    database_folder: str | None = None
    queries_folder: str | None = None
    msls: str | None = None
    cities: tuple[str, ...] = ("cph", "sf")
    recall_ns: tuple[int, ...] | None = None
    spatial_nms: bool = False
    no_positive: str = "miss"

    def __post_init__(self):
        kinds = [self.folder is not None, self.database_folder is not None
                 or self.queries_folder is not None, self.msls is not None]
        if sum(kinds) != 1 or (kinds[1] and not (self.database_folder and self.queries_folder)):
            raise HarnessError(f"split {self.name}: give folder, or database_folder and "
                               "queries_folder, or msls")

    def required_paths(self, root: Path) -> list[Path]:
        if self.msls is not None:
            return [root / self.msls / "train_val"]
        if self.folder is not None:
            return [root / self.folder / "database", root / self.folder / "queries"]
        return [root / self.database_folder, root / self.queries_folder]

    def build(self, root: Path, name: str):
        """The split from the files under ``root`` (registered under ``name``)."""
        if self.msls is not None:
            return split_from_msls(name, root / self.msls, cities=self.cities,
                                   threshold_m=self.radius_m, recall_ns=self.recall_ns,
                                   description=self.description)
        return split_from_folder(
            name, None if self.folder is None else root / self.folder,
            database_folder=None if self.database_folder is None else root / self.database_folder,
            queries_folder=None if self.queries_folder is None else root / self.queries_folder,
            radius_m=self.radius_m, recall_ns=self.recall_ns, spatial_nms=self.spatial_nms,
            no_positive=self.no_positive, description=self.description,
        )


def parse_folder_definitions(text: str, source: str = "<string>") -> dict[str, FolderDefinition]:
    """Parse a ``folders.toml`` document; unknown keys and wrong types name the file."""
    definitions = {}
    tables = read_typed_tables(
        text, source, section="splits", format_version=FOLDERS_FORMAT_VERSION,
        types=_TYPES, required=("description", "radius_m"), int_lists=("recall_ns",),
    )
    for name, entry in tables.items():
        values = dict(entry)
        for key in ("cities", "recall_ns"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            definitions[name] = FolderDefinition(name=name, **values)
        except HarnessError as exc:
            raise HarnessError(exc.message, source) from None
    return definitions


@functools.lru_cache(maxsize=1)
def _folder_definitions() -> tuple[tuple[str, FolderDefinition], ...]:
    resource = resources.files("splits").joinpath("folders.toml")
    return tuple(parse_folder_definitions(resource.read_text(encoding="utf-8"),
                                          str(resource)).items())


def folder_definitions() -> dict[str, FolderDefinition]:
    """The folder built-ins shipped in ``splits/folders.toml``, in file order."""
    return dict(_folder_definitions())


def prepare_all(
    root: str | os.PathLike,
    *,
    prefix: str = "",
    data_root: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
):
    """Register every built-in split (``.mat`` or folder) whose files exist under ``root``.

    Returns one :class:`harness.splits.PrepareOutcome` per built-in name considered. A name
    defined both ways is registered from its ``.mat`` files when they exist.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HarnessError("dataset root is not a directory", root)
    mat_definitions, folders = builtin_definitions(), folder_definitions()
    known = list(dict.fromkeys([*mat_definitions, *folders]))
    if names is not None:
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise HarnessError(f"unknown built-in split {name!r}{hint} "
                                   f"(built-ins: {', '.join(known)})")
    selected = known if names is None else [n for n in known if n in set(names)]
    mat_names = [n for n in selected if n in mat_definitions]
    outcomes = {o.name: o for o in (prepare_builtin_splits(root, prefix=prefix, data_root=data_root,
                                                           names=mat_names) if mat_names else [])}
    for name in selected:
        definition = folders.get(name)
        target = prefix + name
        if definition is None or (target in outcomes and outcomes[target].registered):
            continue
        missing = [p for p in definition.required_paths(root) if not p.is_dir()]
        if missing:
            reason = "missing " + ", ".join(str(p) for p in missing)
            if target in outcomes:
                reason = f"{outcomes[target].reason}; or {reason}"
            outcomes[target] = PrepareOutcome(target, False, reason=reason)
            continue
        path = register_split(definition.build(root, target), data_root)
        outcomes[target] = PrepareOutcome(target, True, path=path)
    return [outcomes[prefix + n] for n in selected if prefix + n in outcomes]
