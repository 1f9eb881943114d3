"""Reading past the page cache (O_DIRECT) and the per-block choice between it and a mapping."""

from __future__ import annotations

import errno
import gc
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from harness.config import EvalConfig
from harness.direct_io import DIRECT_ALIGN, AlignedBuffers, UncachedFile, resident_share
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.hdf5 import DatasetReader
from harness.io import sha256_file
from harness.search import BlockSource, iter_feature_blocks, search_blocks
from harness.search.streaming import DIRECT_IO_ENV, direct_io_choice
from tests.harness.search.test_search import (
    assert_same_up_to_rounding,
    brute_force,
    normalised,
    write_database,
)
from tests.harness.test_eval_cli import make_descriptors, make_split, write_sharded


def o_direct_works(folder: Path) -> bool:
    """Whether ``folder``'s filesystem serves an aligned O_DIRECT read (tested without the
    harness's code, so that a harness bug cannot pass as a filesystem's refusal)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = folder / "o_direct_probe"
    probe.write_bytes(b"\0" * 8192)
    try:
        descriptor = os.open(probe, os.O_RDONLY | os.O_DIRECT)
        try:
            return os.preadv(descriptor, [mmap.mmap(-1, 4096)], 0) == 4096
        finally:
            os.close(descriptor)
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture
def direct_folder(tmp_path):
    if not o_direct_works(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT (the harness maps instead)")
    return tmp_path


def evict(path) -> None:
    """Drop the file's pages from the page cache (written back first: only clean pages go)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def test_a_lent_buffer_comes_back_only_when_every_view_is_gone():
    buffers = AlignedBuffers(keep=2)
    first = buffers.take(10_000)
    assert len(first) >= 10_000
    array = np.frombuffer(first, dtype=np.uint8)
    view = array.reshape(100, 100)[3:5]  # numpy's base of every view is ``array``
    buffers.lend(first, array)
    del array
    gc.collect()
    assert buffers.lent == 1
    assert buffers.take(10_000) is not first  # still in use through ``view``
    del view
    gc.collect()
    assert buffers.lent == 0
    assert buffers.take(10_000) is first  # reused: no new faults, no zeroing
    assert buffers.take(20_000) is not first  # too small for that


@pytest.mark.parametrize("begin, end", [(0, 1), (1, 4097), (4095, 4097), (5000, 70_000),
                                        (0, 70_001), (70_000, 70_001), (12_288, 16_384)])
def test_uncached_reads_return_the_files_bytes(direct_folder, begin, end):
    content = np.random.default_rng(1).integers(0, 256, 70_001, dtype=np.uint8).tobytes()
    path = direct_folder / "data.bin"
    path.write_bytes(content)
    evict(path)
    handle = UncachedFile(path)
    loaded = handle.read(begin, end, AlignedBuffers())
    assert loaded is not None, "O_DIRECT refused on the test's filesystem"
    buffer, offset = loaded
    assert offset == begin % DIRECT_ALIGN  # the read started at the aligned offset below
    assert buffer[offset:offset + end - begin] == content[begin:end]
    handle.close()
    assert handle.read(begin, end, AlignedBuffers()) is None  # closed


def test_an_uncached_read_past_the_end_is_a_truncation_error(direct_folder):
    path = direct_folder / "short.bin"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(HarnessError, match="short.bin.*truncated"):
        UncachedFile(path).read(4000, 9000, AlignedBuffers())


def test_a_filesystem_refusing_o_direct_falls_back(tmp_path, monkeypatch):
    # What a filesystem without O_DIRECT answers (EINVAL at open); the reader then maps.
    path = write_database(tmp_path / "db.h5", normalised(np.random.default_rng(2), 40, 8),
                          np.arange(40), "float32")
    real_open = os.open
    refused = []

    def refusing(file, flags, *args, **kwargs):
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(file)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    reader = DatasetReader(path, "database")
    assert reader.read_rows_uncached(0, 10) is None
    assert reader.read_rows_uncached(10, 20) is None
    assert len(refused) == (1 if hasattr(os, "O_DIRECT") else 0)  # remembered: not asked again
    blocks = [block.copy() for _, block in
              iter_feature_blocks([BlockSource(path, np.arange(40))], 16, direct_io="on")]
    np.testing.assert_array_equal(np.concatenate(blocks), reader.dataset[:])
    reader.close()


def test_resident_share_follows_the_page_cache(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1 << 20))
    descriptor = os.open(path, os.O_RDONLY)
    try:
        path.read_bytes()
        cached = resident_share(descriptor, 0, 1 << 20)
        evict(path)
        dropped = resident_share(descriptor, 0, 1 << 20)
        middle = resident_share(descriptor, 12_345, 500_000)
    finally:
        os.close(descriptor)
    if cached is None:
        pytest.skip("mincore is not available here")
    assert cached == 1.0
    assert dropped < 0.5 and middle < 0.5


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("direct_io", ["on", "off"])
def test_streaming_read_past_the_cache_equals_brute_force(direct_folder, dtype, direct_io):
    rng = np.random.default_rng(3)
    queries, database = normalised(rng, 9, 24), normalised(rng, 900, 24)
    sources, seen = [], []
    for number, rows in enumerate(np.array_split(rng.permutation(900), 3)):
        path = write_database(direct_folder / f"shard{number}.h5", database[rows], rows, dtype)
        evict(path)
        sources.append(BlockSource(path, rows))

    def hook(source, file_offset, stored):
        seen.append((source.path, file_offset, stored.tobytes()))

    blocks = iter_feature_blocks(sources, 100, direct_io=direct_io, on_stored_block=hook)
    writable = []

    def recording(stream):
        for rows, block in stream:
            writable.append(block.flags.writeable)
            yield rows, block

    streamed = search_blocks(queries, recording(blocks), 10, ngpu=0)
    expected = brute_force(queries, database.astype(dtype).astype(np.float32), 10)
    assert_same_up_to_rounding(streamed, expected)
    for path, offset, stored in seen:  # the bytes a hasher sees are the file's own
        with open(path, "rb") as handle:
            handle.seek(offset)
            assert handle.read(len(stored)) == stored
    assert len(seen) == sum(-(-len(s.rows) // 100) for s in sources)
    if dtype == "float32":  # an O_DIRECT buffer is writable, a read-only mapping is not
        assert all(writable) == (direct_io == "on") and any(writable) == (direct_io == "on")


def test_auto_reads_past_the_cache_only_what_the_cache_could_not_keep(direct_folder, monkeypatch):
    rng = np.random.default_rng(4)
    database = normalised(rng, 2000, 256)  # 2 MB: blocks of 400 rows span 100 pages each
    path = write_database(direct_folder / "db.h5", database, np.arange(2000), "float32")

    def writable_blocks():
        return [block.flags.writeable for _, block in
                iter_feature_blocks([BlockSource(path, np.arange(2000))], 400,
                                    prefetch_blocks=False)]

    monkeypatch.delenv(DIRECT_IO_ENV, raising=False)
    probe = os.open(path, os.O_RDONLY)
    try:
        if resident_share(probe, 0, 1) is None:
            pytest.skip("mincore is not available here")
    finally:
        os.close(probe)
    # The memory could keep the whole stream: mapped (and cached for the next evaluation),
    # even when cold.
    evict(path)
    assert writable_blocks() == [False] * 5
    # A machine whose memory could not keep it: cold blocks are read past the cache (an
    # O_DIRECT buffer is writable, a read-only mapping is not), cached ones still mapped.
    monkeypatch.setattr("harness.search.streaming.available_memory_bytes", lambda: 1 << 20)
    path.read_bytes()
    assert writable_blocks() == [False] * 5
    evict(path)
    assert writable_blocks() == [True] * 5


def test_direct_io_choice_and_its_environment_override(monkeypatch):
    monkeypatch.delenv(DIRECT_IO_ENV, raising=False)
    assert direct_io_choice("auto") == "auto"
    assert direct_io_choice("off") == "off"
    monkeypatch.setenv(DIRECT_IO_ENV, "on")
    assert direct_io_choice("auto") == "on"
    assert direct_io_choice("off") == "off"  # an explicit choice wins
    monkeypatch.setenv(DIRECT_IO_ENV, "sometimes")
    with pytest.raises(HarnessError, match="unknown direct_io 'sometimes'.*HARNESS_DIRECT_IO"):
        direct_io_choice("auto")


def test_an_evaluation_read_past_the_cache_equals_one_through_mappings(direct_folder, monkeypatch):
    split = make_split()
    queries, database = make_descriptors(split)
    paths = sorted(write_sharded(direct_folder / "features", split, queries, database).glob("*.h5"))
    results = {}
    for mode in ("off", "on"):
        monkeypatch.setenv(DIRECT_IO_ENV, mode)
        for path in paths:
            evict(path)
        results[mode] = evaluate(paths, split, EvalConfig(ngpu=0, block_rows=8))
    np.testing.assert_array_equal(results["on"].prediction_data.indices,
                                  results["off"].prediction_data.indices)
    np.testing.assert_array_equal(results["on"].prediction_data.scores,
                                  results["off"].prediction_data.scores)
    assert results["on"].scores == results["off"].scores
    hashed = {digest.path: digest.sha256 for digest in results["on"].features}
    assert hashed and all(hashed[path] == sha256_file(path) for path in hashed)


def test_available_memory_is_the_kernels_memavailable():
    from harness.hardware import available_memory_bytes

    available = available_memory_bytes()
    assert available is not None and available > 0
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo here")
    line = next(line for line in meminfo.read_text().splitlines()
                if line.startswith("MemAvailable:"))
    assert abs(available - int(line.split()[1]) * 1024) < 0.2 * available  # moments apart
