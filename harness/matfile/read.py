"""Reading a ``dbStruct``: tell v5 from v7.3, read the fields, assemble and check the struct."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from harness.errors import HarnessError
from harness.matfile.layout import DbStruct, build_dbstruct
from harness.matfile.v5 import read_v5_fields
from harness.matfile.v73 import read_v73_fields


def read_dbstruct(path: str | os.PathLike) -> DbStruct:
    """Read a NetVLAD ``dbStruct`` from a MATLAB v5 or v7.3 ``.mat`` file.

    The struct is the variable ``dbStruct`` (or the file's only struct variable). Fields are
    taken by position; the standard and timestamp (Tokyo) variants are told apart by the
    field types. A file that is not a ``.mat`` file, holds no such struct, lacks fields, or
    whose counts disagree raises :class:`HarnessError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError(".mat file not found", path)
    version = _mat_version(path)
    try:
        if version == "v7.3":
            try:
                fields = read_v73_fields(path)
            except _V73_ERRORS as exc:
                detail = " ".join(str(exc).split()) or type(exc).__name__
                raise HarnessError(f"corrupt MATLAB v7.3 (HDF5) file ({detail})", path) from None
        else:
            fields = read_v5_fields(path)
        return build_dbstruct(path, fields, version)
    except HarnessError as exc:
        if exc.path is None:
            raise HarnessError(exc.message, path) from None
        raise


# What h5py raises for a damaged HDF5 file (its error stack mapped to KeyError, ValueError,
# OSError, RuntimeError...), plus what the bulk cell reader's arithmetic on garbage headers
# and a dataspace claiming a huge extent can raise.
_V73_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError,
               OverflowError, MemoryError, UnicodeDecodeError)


def _mat_version(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(128)
    if h5py.is_hdf5(path):
        return "v7.3"
    if len(head) == 128 and head[:6] == b"MATLAB" and head[126:128] in (b"IM", b"MI"):
        subsys_version = head[124:126]
        if subsys_version in (b"\x00\x01", b"\x01\x00"):
            return "v5"
    if head[:10] == b"MATLAB 5.0":
        return "v5"
    raise HarnessError("not a MATLAB v5 or v7.3 .mat file (unrecognised header)", path)
