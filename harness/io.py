"""Atomic writes and checksums: nothing half-written is ever taken for a complete file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

_CHUNK_BYTES = 8 << 20

#: What reading a damaged or foreign ``.npz`` (a zip of ``.npy`` files) with ``np.load`` can
#: raise: the zip layer (``BadZipFile``; ``NotImplementedError``/``RuntimeError`` for unknown
#: compression or encryption), inflation (``zlib.error``), the ``.npy`` headers and data
#: (``ValueError``, ``EOFError``; ``MemoryError`` for a header claiming a huge array), a
#: missing member (``KeyError``). Readers of submitted files turn these into HarnessErrors.
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, MemoryError,
              zipfile.BadZipFile, zlib.error)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; a finished file gets the mode open() would have given it, so
# that shared folders (features written by cluster jobs, registered splits, leaderboard
# records) stay readable by whoever the umask lets read them.
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary file lives in the same directory (same filesystem), so ``os.replace`` is
    atomic: readers see either the old file, or the complete new one, never a partial one.
    """
    path = Path(path)
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with contextlib.suppress(FileNotFoundError):
            if tmp.stat().st_mode & 0o777 == 0o600:  # still mkstemp's mode
                os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        for folder in created:  # a failed write leaves no empty folders behind either
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (deterministic bytes), atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def npz_member(archive, name: str):
    """``archive[name]`` of an opened ``.npz``, refused unless it is an array.

    (``np.load`` hands back the raw bytes of a member whose ``.npy`` header is damaged.)
    """
    value = archive[name]
    if not isinstance(value, np.ndarray):
        raise ValueError(f"member {name!r} is not a .npy array")
    return value


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
