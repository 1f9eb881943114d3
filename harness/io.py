"""Atomic writes and checksums: nothing half-written is ever taken for a complete file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
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


def require_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file (symlinks followed); a HarnessError naming it if not.

    Called before a file is opened: opening a FIFO blocks until a writer appears, and a
    device or ``/dev/zero`` reads forever, so neither may reach ``open``. The error says what
    the path is instead (missing, a directory, a FIFO, a device, a socket).
    """
    from harness.errors import HarnessError

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise HarnessError(f"{what} not found", path) from None
    except OSError as exc:
        raise HarnessError(f"cannot read {what} ({exc.strerror or exc})", path) from None
    if stat.S_ISREG(mode):
        return path
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device"
            if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a plain file")
    raise HarnessError(f"is {kind}, not a {what}" if kind != "not a plain file" else
                       f"is not a regular file, not a {what}", path)


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
    tmp = make_temp_file(path)
    try:
        yield tmp
        with contextlib.suppress(FileNotFoundError):
            if tmp.stat().st_mode & 0o777 == 0o600:  # still mkstemp's mode
                os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        for folder in created:  # a failed write leaves no empty folders behind either
            with contextlib.suppress(OSError):
                folder.rmdir()
        reason = write_failure(exc)
        if reason:
            from harness.errors import HarnessError

            raise HarnessError(f"cannot write it: {reason} (nothing was written)", path) \
                from None
        raise


#: This host in temporary names (dots replaced: the names are split on them).
TEMP_HOST = socket.gethostname().replace(".", "_") or "host"
_HOST = TEMP_HOST
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
#: errno values and HDF5 message fragments that mean "the disk (or quota, or RLIMIT_FSIZE) is
#: full" or "this place is not writable": a one-line error, never a traceback.
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large "
                 "(file size limit)", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system"}
_WRITE_TEXTS = {"errno = 28": errno.ENOSPC, "No space left on device": errno.ENOSPC,
                "errno = 27": errno.EFBIG, "File too large": errno.EFBIG,
                "errno = 122": errno.EDQUOT, "errno = 30": errno.EROFS}


def write_failure(exc: BaseException) -> str | None:
    """What a failed write ran into when it is the disk's fault (full, quota, size limit,
    read-only), as words; None for any other exception. HDF5 reports these as an
    ``OSError`` without errno whose text holds the C errno."""
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    if code not in _WRITE_ERRNOS:
        text = str(exc)
        code = next((value for key, value in _WRITE_TEXTS.items() if key in text), None)
    return _WRITE_ERRNOS.get(code)


def require_free_space(path: str | os.PathLike, needed_bytes: int) -> None:
    """Refuse to start writing ``needed_bytes`` beside ``path`` when they cannot fit.

    Checked before an HDF5 file is filled (the library's behaviour on a full disk is an
    error deep inside a write, or worse): the free space of the file system, and this
    process's file size limit (``RLIMIT_FSIZE``, which ``ulimit -f`` and batch systems set).
    """
    import resource

    from harness.errors import HarnessError

    path = Path(path)
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise HarnessError(f"cannot write it: {needed_bytes} bytes needed, {free} free on "
                           f"{folder} (nothing was written)", path)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and needed_bytes > limit:
        raise HarnessError(f"cannot write it: {needed_bytes} bytes needed, the file size limit "
                           f"(ulimit -f) is {limit} (nothing was written)", path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temporary files left in ``folder`` by killed writers (of ``name``, or any).

    Temporary names carry the host and process id of their writer
    (:func:`make_temp_file`); one whose writer is no longer running on this host is a
    leftover of an interrupted run. Writers on other hosts (a shared file system) and
    running ones are left alone.
    """
    removed = []
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if match["host"] != _HOST or _process_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def make_temp_file(path: str | os.PathLike, *, directory: bool = False) -> Path:
    """A new temporary file (or folder) beside ``path``, named after it, this host and pid.

    Leftovers of killed writers of the same ``path`` are removed first. A parent that
    cannot be created or written is a one-line HarnessError naming ``path``.
    """
    from harness.errors import HarnessError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, path.name)
        prefix = f".{path.name}.{_HOST}.{os.getpid()}."
        if directory:
            return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    except OSError as exc:
        parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
        if parent is not None and not parent.is_dir():
            reason = f"{parent} is not a folder"
        else:
            reason = write_failure(exc) or exc.strerror or str(exc)
        raise HarnessError(f"cannot write here: {reason}", path) from None
    os.close(fd)
    return Path(tmp_name)


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


#: Deflate expands at most ~1032x; a zip member declaring more is lying (a decompression bomb).
MAX_INFLATE_RATIO = 1100


def read_text_bounded(path: str | os.PathLike, max_bytes: int, what: str = "file") -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` (checked before reading)."""
    from harness.errors import HarnessError

    path = require_regular_file(path, what)
    size = path.stat().st_size
    if size > max_bytes:
        raise HarnessError(f"{what} is {size} bytes, larger than the {max_bytes} allowed", path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
        return data[: max_bytes + 1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{what} is not UTF-8 text ({exc})", path) from None
    except OSError as exc:
        raise HarnessError(f"cannot read {what} ({exc.strerror or exc})", path) from None


def parse_json(text: str, path, what: str = "JSON file", invalid: str = "not valid JSON"):
    """``json.loads`` whose every failure is a one-line HarnessError naming ``path``.

    Covers malformed JSON, nesting too deep for the parser, and integers longer than
    Python's 4300-digit limit (a ``ValueError`` that is not a ``JSONDecodeError``).
    """
    from harness.errors import HarnessError

    try:
        return json.loads(text)
    except RecursionError:
        raise HarnessError(f"not a {what}: JSON nested too deeply", path) from None
    except ValueError as exc:  # JSONDecodeError, and the int digit limit
        detail = " ".join(str(exc).split())[:200]
        raise HarnessError(f"{invalid} ({detail})", path) from None


def npz_shapes(path: str | os.PathLike, max_member_bytes: int) -> dict[str, tuple]:
    """``{member: (shape, dtype)}`` of an ``.npz`` read from its headers, nothing allocated.

    Every member must declare at most ``max_member_bytes`` uncompressed (the zip header),
    be a ``.npy`` array without objects, and its array header must account for exactly the
    declared bytes: then ``np.load`` allocates no more than the file's members hold, and a
    caller can compare the shapes with what it expects before loading anything.
    Raises ``ValueError`` (one of :data:`NPZ_ERRORS`) naming the member otherwise.
    """
    import numpy as np

    require_regular_file(path)
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > 64:
            raise ValueError(f"holds {len(members)} members (at most 64)")
        for info in members:
            if info.file_size > max_member_bytes:
                raise ValueError(f"member {info.filename!r} declares {info.file_size} bytes "
                                 f"(at most {max_member_bytes})")
            if info.file_size > MAX_INFLATE_RATIO * info.compress_size + (1 << 16):
                raise ValueError(
                    f"member {info.filename!r} declares {info.file_size} bytes from "
                    f"{info.compress_size} compressed (more than deflate can give: a bomb)")
            if not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not a .npy array")
            readers = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    shape, _, dtype = readers[version](member, max_header_size=10_000)
                except (ValueError, KeyError, EOFError, SyntaxError):
                    raise ValueError(f"member {info.filename[:-4]!r} is not a .npy array") \
                        from None
                header = member.tell() if member.seekable() else None
            if dtype.hasobject:
                raise ValueError(f"member {info.filename!r} holds Python objects")
            count = 1
            for extent in shape:
                count *= int(extent)
            if header is not None and count * dtype.itemsize + header != info.file_size:
                raise ValueError(
                    f"member {info.filename!r}: header says {shape} {dtype} "
                    f"({count * dtype.itemsize} bytes), the member holds "
                    f"{info.file_size - header}")
            shapes[info.filename[:-4]] = (tuple(int(e) for e in shape), dtype)
    return shapes


def sha256_file(path: str | os.PathLike) -> str:
    require_regular_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
