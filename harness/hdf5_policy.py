"""What a submitted HDF5 file may hold: its own bytes only, in sizes that are cheap to read.

A leaderboard record pins the sha256 of every feature file it scored, so every byte that is
read must be in that file, and no file may make the reader allocate or decompress more than
its contents justify. :func:`check_hdf5_contents` walks every link of an open file (without
resolving one) and refuses, before any value is read:

* soft links, external links (to objects in other files) and user-defined links;
* datasets whose raw data lives in other files (external storage) or that are virtual
  datasets (views of other datasets, possibly in other files);
* filters (compression...) that this HDF5 library does not have, and filters other than the
  standard ones (deflate, shuffle, Fletcher-32, LZF, N-bit, scale-offset, szip);
* chunks larger than :data:`MAX_CHUNK_BYTES` (a chunk is decompressed whole), elements larger
  than :data:`MAX_ELEMENT_BYTES`, filtered datasets that claim more than
  :data:`MAX_COMPRESSION_RATIO` times their stored size (a decompression bomb: real
  descriptors and names compress by less than 10x), and (``require_stored``, for readers
  that read whole datasets) unfiltered ones that store fewer bytes than they declare;
* more than :data:`MAX_LINKS` links (a file is a few groups and datasets).
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError

MAX_LINKS = 10_000
MAX_CHUNK_BYTES = 64 << 20
MAX_ELEMENT_BYTES = 1 << 16
MAX_COMPRESSION_RATIO = 1000
_CHECKED: set = set()  # (path, inode, size, mtime) of files found sound


def _standard_filters() -> dict[int, str]:
    import h5py

    z = h5py.h5z
    return {z.FILTER_DEFLATE: "deflate", z.FILTER_SHUFFLE: "shuffle",
            z.FILTER_FLETCHER32: "fletcher32", z.FILTER_LZF: "lzf", z.FILTER_NBIT: "nbit",
            z.FILTER_SCALEOFFSET: "scaleoffset", z.FILTER_SZIP: "szip"}


def dataset_problem(dataset, *, require_stored: bool = False) -> str | None:
    """Why the raw data of ``dataset`` may not be read (None when it may).

    ``require_stored``: also refuse an unfiltered dataset that stores fewer bytes than it
    declares (feature files check that themselves, with messages of their own).
    """
    import h5py

    plist = dataset.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        return "is a virtual dataset (its data is read from other datasets or files)"
    if plist.get_external_count():
        name = plist.get_external(0)[0].decode("utf-8", "replace")
        return f"stores its data in another file ({name!r}, external storage)"
    itemsize = dataset.id.get_type().get_size()
    if itemsize > MAX_ELEMENT_BYTES:
        return f"has {itemsize}-byte elements (at most {MAX_ELEMENT_BYTES})"
    standard = _standard_filters()
    filters = plist.get_nfilters()
    for index in range(filters):
        code = plist.get_filter(index)[0]
        if code not in standard:
            available = "installed" if h5py.h5z.filter_avail(code) else "not installed"
            return f"uses HDF5 filter {code} ({available}; only standard filters are read)"
        if not h5py.h5z.filter_avail(code):
            return f"uses the {standard[code]} filter, which this HDF5 library lacks"
    shape = dataset.shape or ()
    logical = itemsize
    for extent in shape:
        logical *= int(extent)
    chunks = dataset.chunks
    if chunks is not None:
        chunk_bytes = itemsize
        for extent in chunks:
            chunk_bytes *= int(extent)
        if chunk_bytes > MAX_CHUNK_BYTES:
            return f"has chunks of {chunk_bytes} bytes (at most {MAX_CHUNK_BYTES})"
    if logical:
        stored = dataset.id.get_storage_size()
        if filters and logical > MAX_COMPRESSION_RATIO * max(stored, 1):
            return (f"claims {logical} bytes from {stored} stored (more than "
                    f"{MAX_COMPRESSION_RATIO}x compression: a decompression bomb)")
        if require_stored and not filters and stored < logical:
            # Unwritten storage reads as fill values: memory the file never paid for.
            return (f"declares {logical} bytes but stores {stored} (never written, or "
                    "truncated)")
    return None


def check_hdf5_contents(handle, path: str | os.PathLike) -> None:
    """Refuse a file with links or datasets that :mod:`harness.hdf5_policy` forbids."""
    import h5py

    path = Path(path)
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _CHECKED:
        return
    names: list[str] = []

    def collect(name, _info=None):
        names.append(name)
        return None if len(names) <= MAX_LINKS else True  # a true value stops the visit

    handle.visit_links(collect)
    if len(names) > MAX_LINKS:
        raise HarnessError(f"holds more than {MAX_LINKS} HDF5 links", path)
    for name in names:
        parent, _, leaf = name.rpartition("/")
        group = handle[parent] if parent else handle
        link = group.get(leaf, getlink=True)
        if isinstance(link, h5py.SoftLink):
            raise HarnessError(
                f"/{name} is a soft link (to {link.path}); submitted files hold their objects "
                "directly", path)
        if isinstance(link, h5py.ExternalLink):
            raise HarnessError(
                f"/{name} is an external link to {link.filename}:{link.path}; every byte scored "
                "must be in the submitted file", path)
        if not isinstance(link, h5py.HardLink):
            raise HarnessError(f"/{name} is a user-defined HDF5 link", path)
        kind = group.get(leaf, getclass=True)
        if kind is h5py.Dataset:
            problem = dataset_problem(group[leaf])
            if problem:
                raise HarnessError(f"/{name} {problem}", path)
    if key is not None:
        if len(_CHECKED) > 4096:
            _CHECKED.clear()
        _CHECKED.add(key)
