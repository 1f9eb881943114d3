"""The sha256 of a feature file, remembered per file identity, so a file is hashed once.

Hashing is the one part of an evaluation that does not shrink with a faster GEMM: sha256 runs
at ~1.8 GB/s per core with SHA extensions, about 11 % of the CPU time of a 1,000-query float32
search. A file evaluated again (another split sharing the database, other Recall@N, a re-run)
reuses the digest recorded the first time, as git's index and DVC reuse theirs: while the
file's device, inode, size, modification time and change time (in nanoseconds) are all
unchanged. The change time cannot be set from user space, so rewriting a file and restoring its
modification time still invalidates the digest.

A digest is remembered only when the file did not change while it was hashed and its
modification time is :data:`RACY_SECONDS` older than the start of the hashing (a write within
the file system's timestamp resolution could otherwise go unseen: git's "racy" entries).

Entries live in ``$HARNESS_DIGEST_CACHE`` (default ``<harness cache>/digests``; ``off``
disables it), one small JSON file per identity, written atomically. Leaderboard code that
handles strangers' files always hashes them afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from harness.errors import HarnessError
from harness.gemm_rates import cache_dir
from harness.io import read_text_bounded, write_json_atomic
from harness.results import SHA256_HEX, FileDigest
from harness.search.streaming import BlockSource

logger = logging.getLogger(__name__)

DIGEST_CACHE_ENV = "HARNESS_DIGEST_CACHE"
#: A file modified less than this long before its hashing started is not remembered.
RACY_SECONDS = 2.0


@dataclass(frozen=True)
class FileIdentity:
    """What must stay the same for a remembered digest to hold."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "FileIdentity":
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns,
                   stat.st_ctime_ns)


def digest_cache_dir() -> Path | None:
    """Where digests are remembered, or None when ``$HARNESS_DIGEST_CACHE`` is ``off``."""
    value = os.environ.get(DIGEST_CACHE_ENV, "")
    if value.strip().lower() in ("off", "0", "none", "false"):
        return None
    return Path(value) if value else cache_dir() / "digests"


def _entry_path(folder: Path, identity: FileIdentity) -> Path:
    key = json.dumps(asdict(identity), sort_keys=True).encode()
    return folder / f"{hashlib.sha256(key).hexdigest()[:32]}.json"


def remembered_digest(path: str | os.PathLike) -> tuple[str | None, FileIdentity | None]:
    """(the remembered sha256 of ``path`` or None, its identity now; None if it cannot be
    read: then it is hashed, and the hashing reports the problem)."""
    try:
        identity = FileIdentity.of(path)
    except OSError:
        return None, None
    folder = digest_cache_dir()
    if folder is None:
        return None, identity
    try:
        entry = json.loads(read_text_bounded(_entry_path(folder, identity), 4096))
    except (OSError, ValueError, HarnessError):
        return None, identity
    if (not isinstance(entry, dict) or entry.get("identity") != asdict(identity)
            or not isinstance(entry.get("sha256"), str)
            or not SHA256_HEX.fullmatch(entry["sha256"])):
        return None, identity
    return entry["sha256"], identity


def remember_digest(identity: FileIdentity, sha256: str, hashing_started_ns: int) -> bool:
    """Remember ``sha256`` for the file of ``identity`` (its identity before hashing) if it is
    unchanged now and was not modified just before ``hashing_started_ns`` (``time.time_ns``).
    Returns whether it was remembered; never raises for a cache that cannot be written."""
    folder = digest_cache_dir()
    if folder is None or not SHA256_HEX.fullmatch(sha256):
        return False
    try:
        if FileIdentity.of(identity.path) != identity:
            return False
    except OSError:
        return False
    if identity.mtime_ns > hashing_started_ns - int(RACY_SECONDS * 1e9):
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_entry_path(folder, identity),
                          {"identity": asdict(identity), "sha256": sha256})
    except (OSError, HarnessError) as exc:
        logger.debug("cannot remember the digest of %s: %s", identity.path, exc)
        return False
    return True


class RememberedDigests:
    """Which of ``paths`` must be hashed, and the remembered digests of the others.

    Built before the search (the files' identities are taken then); :meth:`combine` after
    it checks that no remembered file changed meanwhile and remembers the fresh digests.
    """

    def __init__(self, paths: Sequence[Path], reuse: bool = True):
        self.paths = list(paths)
        self.identities: dict[Path, FileIdentity] = {}
        self.remembered: dict[Path, FileDigest] = {}
        for path in self.paths:
            sha256, identity = remembered_digest(path)
            if identity is not None:
                self.identities[path] = identity
            if sha256 is not None and reuse:
                self.remembered[path] = FileDigest(str(path), sha256, identity.size)
        self.started_ns = time.time_ns()

    @property
    def to_hash(self) -> list[Path]:
        return [path for path in self.paths if path not in self.remembered]

    def combine(self, fresh: Sequence[FileDigest]) -> tuple[FileDigest, ...]:
        """Every file's digest in ``paths`` order, from ``fresh`` (the files hashed now, then
        remembered) and the remembered ones (an error if such a file changed since)."""
        for path in self.remembered:
            try:
                now = FileIdentity.of(path)
            except OSError:
                now = None
            if now != self.identities[path]:
                raise HarnessError("changed during the evaluation: its remembered sha256 need "
                                   "not describe the bytes searched; evaluate it again", path)
        for digest in fresh:
            identity = self.identities.get(Path(digest.path))
            if identity is not None:
                remember_digest(identity, digest.sha256, self.started_ns)
        by_path = {Path(digest.path): digest for digest in fresh} | self.remembered
        return tuple(by_path[path] for path in self.paths)


class StreamedDigests:
    """sha256 of every feature file, computed in one background thread beside the search.

    A database file that the search streams through a file mapping is hashed from the very
    bytes it reads (``on_stored_block``), in file order: the blocks arrive in file order, and
    the bytes between them (header, names, another part) and after the last are read from the
    file. The database is thus read once, not twice (a 52 GB database does not fit in the page
    cache). Other files (the query file, HDF5-chunked datasets) are hashed from the file. The
    hash itself still costs CPU (~1-2 GB/s per core with SHA extensions): ``busy_s`` records it.
    A bounded queue makes the reader wait when hashing falls behind, so memory stays bounded.
    """

    chunk_bytes = 8 << 20
    queued_blocks = 4

    def __init__(self, paths: Sequence[Path], streamed: Sequence[Path]):
        self._paths = list(paths)
        self._streamed = {Path(p) for p in streamed}
        self._queue: queue.Queue = queue.Queue(maxsize=self.queued_blocks)
        self._states: dict[Path, list] = {}  # path -> [sha256 object, next byte to hash, in order]
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._digests: dict[Path, FileDigest] = {}
        self.busy_s = 0.0
        self.streamed_bytes = 0  # hashed from the blocks the search read
        self.read_bytes = 0  # read from the files only to hash them
        self._thread = threading.Thread(target=self._run, name="harness-sha256", daemon=True)
        self._thread.start()

    # -- producer side (the search's reading thread) ---------------------------------------

    def on_stored_block(self, source: BlockSource, file_offset: int, stored: np.ndarray) -> None:
        if Path(source.path) in self._streamed and not self._stop.is_set():
            self._queue.put((Path(source.path), int(file_offset), stored))

    def result(self) -> tuple[tuple[FileDigest, ...], float]:
        """Wait for every digest; (digests in ``paths`` order, seconds spent hashing)."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise HarnessError(f"cannot checksum a feature file ({self._error})") from None
        return tuple(self._digests[path] for path in self._paths), self.busy_s

    def cancel(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.05)
                break
            except Exception:  # queue full: the thread is draining it
                continue
        self._thread.join()

    # -- hashing thread ----------------------------------------------------------------------

    def _hash_range(self, handle, digest, begin: int, end: int) -> None:
        handle.seek(begin)
        remaining = end - begin
        while remaining > 0 and not self._stop.is_set():
            chunk = handle.read(min(self.chunk_bytes, remaining))
            if not chunk:
                raise OSError(f"{handle.name}: file ended while hashing (truncated?)")
            digest.update(chunk)
            remaining -= len(chunk)
            self.read_bytes += len(chunk)

    def _block(self, path: Path, offset: int, stored: np.ndarray) -> None:
        state = self._states.setdefault(path, [hashlib.sha256(), 0, True])
        digest, position, in_order = state
        if not in_order:
            return
        if offset < position:  # not in file order: hash the whole file from disk instead
            state[2] = False
            return
        if offset > position:
            with open(path, "rb") as handle:
                self._hash_range(handle, digest, position, offset)
        digest.update(memoryview(stored.reshape(-1).view(np.uint8)))
        state[1] = offset + stored.nbytes
        self.streamed_bytes += stored.nbytes

    def _finish(self, path: Path) -> None:
        size = path.stat().st_size
        state = self._states.get(path)
        if state is None or not state[2]:
            state = [hashlib.sha256(), 0, True]
        digest, position, _ = state
        with open(path, "rb") as handle:
            self._hash_range(handle, digest, position, size)
        if not self._stop.is_set():
            self._digests[path] = FileDigest(str(path), digest.hexdigest(), size)

    def _run(self) -> None:
        try:
            for path in self._paths:  # files not streamed: hashed first, while blocks queue up
                if path not in self._streamed and not self._stop.is_set():
                    started = time.perf_counter()
                    self._finish(path)
                    self.busy_s += time.perf_counter() - started
            while True:
                item = self._queue.get()
                if item is None:
                    break
                if self._stop.is_set():
                    continue
                started = time.perf_counter()
                self._block(*item)
                self.busy_s += time.perf_counter() - started
            started = time.perf_counter()
            for path in self._paths:
                if path in self._streamed and not self._stop.is_set():
                    self._finish(path)
            self.busy_s += time.perf_counter() - started
        except BaseException as exc:  # re-raised in result()
            self._error = exc
            self._stop.set()
            while True:  # keep the producer from blocking on a full queue
                if self._queue.get() is None:
                    break
