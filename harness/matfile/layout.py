"""The ``dbStruct`` layout: field positions per variant, the :class:`DbStruct` read from a file,
and its assembly (with every consistency check) from the fields a reader found."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

DBSTRUCT_VARIABLE = "dbStruct"
VARIANTS = ("standard", "timestamp")
MAT_VERSIONS = ("v5", "v7.3")

# Field names as NetVLAD's MATLAB code writes them (only the positions matter when reading).
STANDARD_FIELDS = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "qImageFns",
    "utmQ",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)
TIMESTAMP_FIELDS = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "dbTimeStamp",
    "qImageFns",
    "utmQ",
    "qTimeStamp",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)
# Field positions per variant; fields after pos_dist_thr are optional when reading.
FIELD_POSITIONS = {
    "standard": dict(
        which_set=0,
        db_images=1,
        utm_db=2,
        q_images=3,
        utm_q=4,
        num_db=5,
        num_q=6,
        pos_dist_thr=7,
        pos_dist_sq_thr=8,
        non_triv_pos_dist_sq_thr=9,
    ),
    "timestamp": dict(
        which_set=0,
        db_images=1,
        utm_db=2,
        db_timestamps=3,
        q_images=4,
        utm_q=5,
        q_timestamps=6,
        num_db=7,
        num_q=8,
        pos_dist_thr=9,
        pos_dist_sq_thr=10,
        non_triv_pos_dist_sq_thr=11,
    ),
}
# NetVLAD's default for nonTrivPosDistSqThr (10 m squared); only written, never relied on.


@dataclass(frozen=True, eq=False)
class DbStruct:
    """The content of one ``dbStruct``; positions are ``(n, 2)`` UTM easting/northing.

    Image lists keep the file's order (sorting is the split builder's job).
    """

    path: Path | None
    which_set: str
    db_images: tuple[str, ...]
    utm_db: np.ndarray
    q_images: tuple[str, ...]
    utm_q: np.ndarray
    pos_dist_thr: float
    pos_dist_sq_thr: float | None = None
    non_triv_pos_dist_sq_thr: float | None = None
    db_timestamps: np.ndarray | None = None
    q_timestamps: np.ndarray | None = None
    variant: str = "standard"
    mat_version: str = "v5"

    @property
    def num_db(self) -> int:
        return len(self.db_images)

    @property
    def num_q(self) -> int:
        return len(self.q_images)


# ----------------------------------------------------------------------------- writing



class Field:
    """One struct field as read: its kind and its value.

    ``kind`` is ``"cell"`` (value: list of str), ``"char"`` (str) or ``"numeric"`` (a
    MATLAB-shaped float64 array), or ``"other"`` (value: a description for the error).
    """

    __slots__ = ("name", "kind", "value")

    def __init__(self, name: str, kind: str, value):
        self.name, self.kind, self.value = name, kind, value


# ---- v5


def choose_variable(path: Path, variables: list[tuple[str, str]]) -> str:
    structs = [name for name, cls in variables if cls == "struct"]
    if any(name == DBSTRUCT_VARIABLE for name, _ in variables):
        return DBSTRUCT_VARIABLE
    if len(structs) == 1:
        return structs[0]
    found = ", ".join(f"{n} ({c})" for n, c in variables) or "none"
    raise HarnessError(f"no {DBSTRUCT_VARIABLE} struct variable (variables: {found})", path)


# ---- v7.3



def build_dbstruct(path: Path, fields: list[Field], version: str) -> DbStruct:
    if len(fields) < 8:
        raise HarnessError(
            f"dbStruct has {len(fields)} fields; a NetVLAD dbStruct has at least 8 "
            "(whichSet, dbImage, utmDb, qImage, utmQ, numDb, numQ, posDistThr)",
            path,
        )
    if fields[3].kind == "cell":
        variant = "standard"
    elif fields[3].kind == "numeric" and len(fields) > 4 and fields[4].kind == "cell":
        variant = "timestamp"
    else:
        raise HarnessError(
            f"dbStruct field 3 ({fields[3].name!r}) is neither the query image list "
            f"nor database timestamps; not a NetVLAD dbStruct",
            path,
        )
    layout = FIELD_POSITIONS[variant]
    required = layout["pos_dist_thr"] + 1
    if len(fields) < required:
        raise HarnessError(
            f"dbStruct ({variant} variant) has {len(fields)} fields, needs at least {required}",
            path,
        )

    def field(key: str, kind: str) -> Field:
        item = fields[layout[key]]
        if item.kind != kind:
            shown = item.value if item.kind == "other" else f"a {item.kind} value"
            raise HarnessError(
                f"dbStruct field {layout[key]} ({item.name!r}) should be a {kind} value, "
                f"is {shown}",
                path,
            )
        return item

    def scalar(key: str) -> float:
        item = field(key, "numeric")
        if item.value.size != 1:
            raise HarnessError(
                f"dbStruct field {layout[key]} ({item.name!r}) should be a scalar, "
                f"has shape {item.value.shape}",
                path,
            )
        return float(item.value.reshape(-1)[0])

    which_set = field("which_set", "char").value
    db_images = tuple(field("db_images", "cell").value)
    q_images = tuple(field("q_images", "cell").value)
    utm_db = _utm(path, field("utm_db", "numeric"), len(db_images), "database")
    utm_q = _utm(path, field("utm_q", "numeric"), len(q_images), "query")
    num_db, num_q = scalar("num_db"), scalar("num_q")
    if num_db != len(db_images):
        raise HarnessError(f"numDb is {num_db:g} but dbImage holds {len(db_images)} names", path)
    if num_q != len(q_images):
        raise HarnessError(f"numQ is {num_q:g} but qImage holds {len(q_images)} names", path)
    pos_dist_thr = scalar("pos_dist_thr")
    optional = {}
    for key in ("pos_dist_sq_thr", "non_triv_pos_dist_sq_thr"):
        optional[key] = (
            scalar(key)
            if layout[key] < len(fields) and fields[layout[key]].kind == "numeric"
            else None
        )
    timestamps = {}
    if variant == "timestamp":
        for key, count in (("db_timestamps", len(db_images)), ("q_timestamps", len(q_images))):
            values = field(key, "numeric").value.reshape(-1)
            if values.size != count:
                raise HarnessError(
                    f"dbStruct field {layout[key]} holds {values.size} timestamps "
                    f"for {count} images",
                    path,
                )
            timestamps[key] = values
    return DbStruct(
        path=path,
        which_set=which_set,
        db_images=db_images,
        utm_db=utm_db,
        q_images=q_images,
        utm_q=utm_q,
        pos_dist_thr=pos_dist_thr,
        variant=variant,
        mat_version=version,
        **optional,
        **timestamps,
    )


def _utm(path: Path, item: Field, count: int, part: str) -> np.ndarray:
    value = item.value
    if value.ndim != 2 or value.shape[0] != 2 or value.shape[1] != count:
        raise HarnessError(
            f"{item.name} should be 2 x {count} (easting; northing per {part} image), "
            f"has shape {' x '.join(map(str, value.shape))}",
            path,
        )
    utm = np.ascontiguousarray(value.T, dtype=np.float64)
    if not np.all(np.isfinite(utm)):
        raise HarnessError(f"{item.name} holds non-finite positions", path)
    return utm
