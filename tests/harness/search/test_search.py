"""Exact streaming top-K: streaming vs in-memory vs brute force, ties, fp16, shards, merging."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.features import write_features
from harness.search import (
    BlockSource,
    RunningTopK,
    SearchStats,
    TopK,
    cpu_backend_choice,
    get_backend,
    iter_array_blocks,
    iter_feature_blocks,
    list_backends,
    merge_topk,
    prefetch,
    resolve_backend,
    search,
    search_blocks,
)


def brute_force(queries: np.ndarray, database: np.ndarray, k: int) -> TopK:
    """Reference: the full score matrix, rows ordered by (score desc, index asc)."""
    scores = queries.astype(np.float32) @ database.astype(np.float32).T
    indices = np.arange(database.shape[0])
    order = np.stack([np.lexsort((indices, -row)) for row in scores])[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    pad = k - order.shape[1]
    if pad > 0:
        order = np.concatenate([order, np.full((len(order), pad), -1)], axis=1)
        top_scores = np.concatenate([top_scores, np.full((len(order), pad), -np.inf)], axis=1)
    return TopK(top_scores, order)


def normalised(rng, rows, dim):
    values = rng.standard_normal((rows, dim)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def tied(rng, rows, dim):
    """Small integer vectors: many exactly equal inner products."""
    return rng.integers(-1, 2, (rows, dim)).astype(np.float32)


def assert_same(actual: TopK, expected: TopK):
    np.testing.assert_array_equal(actual.indices, expected.indices)
    np.testing.assert_array_equal(actual.scores, expected.scores)


def assert_same_up_to_rounding(actual: TopK, expected: TopK, atol=1e-5):
    """Tie-tolerant: equal score lists; where indices differ the scores must be (near) equal."""
    np.testing.assert_allclose(actual.scores, expected.scores, atol=atol)
    differ = actual.indices != expected.indices
    np.testing.assert_allclose(actual.scores[differ], expected.scores[differ], atol=atol)
    assert differ.mean() < 0.01


@pytest.mark.parametrize("make", [normalised, tied], ids=["random", "ties"])
@pytest.mark.parametrize("block_rows", [1, 7, 64, 10_000])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_streaming_equals_brute_force(make, block_rows, k):
    rng = np.random.default_rng(k * 1000 + block_rows)
    queries, database = make(rng, 23, 8), make(rng, 300, 8)
    expected = brute_force(queries, database, k)
    result = search(queries, database, k, block_rows=block_rows, ngpu=0)
    if make is tied:  # small integers: every inner product is exact, ties must match exactly
        assert_same(result, expected)
    else:  # BLAS may round the last bit differently per GEMM shape
        assert_same_up_to_rounding(result, expected)


def test_settled_rows_are_skipped_without_changing_the_result():
    # Many blocks after the first K rows: most rows gain nothing from a block, some do.
    rng = np.random.default_rng(17)
    queries, database = normalised(rng, 40, 8), normalised(rng, 4000, 8)
    result = search(queries, database, 5, block_rows=50, ngpu=0)
    assert_same_up_to_rounding(result, brute_force(queries, database, 5))
    queries, database = tied(rng, 40, 4), tied(rng, 2000, 4)
    assert_same(
        search(queries, database, 5, block_rows=50, ngpu=0), brute_force(queries, database, 5)
    )


def test_row_order_and_query_batches_do_not_change_the_result():
    rng = np.random.default_rng(1)
    queries, database = tied(rng, 31, 6), tied(rng, 500, 6)
    expected = brute_force(queries, database, 25)
    permutation = rng.permutation(len(database))
    shuffled = search(queries, database[permutation], 25, rows=permutation, block_rows=37,
                      ngpu=0, query_batch_rows=4)
    assert_same(shuffled, expected)


def test_selection_threads_over_query_rows_give_the_same_result():
    rng = np.random.default_rng(10)
    queries, database = tied(rng, 300, 5), tied(rng, 700, 5)
    backend = get_backend("numpy", selection_threads=3, query_batch_rows=250)
    result = search_blocks(queries, iter_array_blocks(database, 128), 15, backend=backend)
    assert_same(result, brute_force(queries, database, 15))


def test_database_smaller_than_k_is_padded():
    rng = np.random.default_rng(2)
    queries, database = normalised(rng, 4, 5), normalised(rng, 3, 5)
    result = search(queries, database, 6, block_rows=2, ngpu=0)
    assert result.indices.shape == (4, 6)
    assert (result.indices[:, 3:] == -1).all() and np.isneginf(result.scores[:, 3:]).all()
    assert_same(result.truncate(3), brute_force(queries, database, 3))


def test_empty_database_gives_all_padding():
    queries = np.ones((2, 3), np.float32)
    result = search_blocks(queries, [], 4, ngpu=0)
    assert (result.indices == -1).all()


def test_faiss_cpu_backend_agrees_with_numpy_including_ties():
    rng = np.random.default_rng(3)
    queries, database = tied(rng, 20, 7), tied(rng, 400, 7)
    expected = brute_force(queries, database, 30)
    assert_same(search(queries, database, 30, block_rows=90, ngpu=0, cpu_backend="faiss"), expected)


def test_merge_topk_of_shards_equals_single_search():
    rng = np.random.default_rng(4)
    queries, database = tied(rng, 17, 6), tied(rng, 410, 6)
    permutation = rng.permutation(len(database))
    shards = np.array_split(permutation, 5)
    parts = [
        search(queries, database[rows], 20, rows=rows, block_rows=33, ngpu=0) for rows in shards
    ]
    merged = merge_topk(parts[::-1])
    assert_same(merged, brute_force(queries, database, 20))
    assert_same(merge_topk(parts, k=5), brute_force(queries, database, 5))


def test_merge_topk_rejects_the_same_shard_twice():
    rng = np.random.default_rng(5)
    part = search(normalised(rng, 3, 4), normalised(rng, 10, 4), 4, ngpu=0)
    with pytest.raises(ValueError, match="more than one part"):
        merge_topk([part, part])


def test_merge_topk_hand_case_ties_lower_index_first():
    a = TopK(np.array([[0.9, 0.5]], np.float32), np.array([[7, 3]]))
    b = TopK(np.array([[0.9, 0.5]], np.float32), np.array([[2, 8]]))
    merged = merge_topk([a, b], k=3)
    np.testing.assert_array_equal(merged.indices, [[2, 7, 3]])
    np.testing.assert_array_equal(merged.scores, np.array([[0.9, 0.9, 0.5]], np.float32))


def test_running_topk_keeps_all_tied_entries_in_index_order():
    state = RunningTopK(1, 3)
    state.add_scores(
        slice(0, 1), np.array([[1.0, 1.0, 1.0, 1.0, 1.0]], np.float32), np.array([9, 4, 7, 1, 5])
    )
    state.add_scores(slice(0, 1), np.array([[1.0, 0.5]], np.float32), np.array([0, 2]))
    np.testing.assert_array_equal(state.result().indices, [[0, 1, 4]])


def write_database(path, database, rows, dtype, split="s"):
    names = [f"db/{r:05d}.jpg" for r in rows]
    return write_features(path, split=split, method="m", database=(names, database.astype(dtype)))


@pytest.mark.parametrize("dtype, reader_threads", [("float32", 1), ("float16", 1), ("float16", 3)])
def test_streaming_from_shards_on_disk(tmp_path, dtype, reader_threads, monkeypatch):
    # Small pieces so that a block is read as several pieces (in parallel with reader_threads).
    monkeypatch.setattr("harness.search.streaming.PIECE_BYTES", 16 * 4 * 10)
    rng = np.random.default_rng(6)
    queries, database = normalised(rng, 12, 16), normalised(rng, 700, 16)
    permutation = rng.permutation(len(database))
    sources = []
    for number, rows in enumerate(np.array_split(permutation, 3)):
        path = write_database(tmp_path / f"shard{number}.h5", database[rows], rows, dtype)
        sources.append(BlockSource(path, rows))
    stats = SearchStats()
    blocks = iter_feature_blocks(sources, 64, reader_threads=reader_threads)
    streamed = search_blocks(queries, blocks, 10, ngpu=0, stats=stats)
    stored = database.astype(dtype).astype(np.float32)
    expected = brute_force(queries, stored, 10)
    # fp16 is widened exactly, and the same GEMM path scores it: identical ranking.
    assert_same_up_to_rounding(streamed, expected)
    assert stats.database_rows == 700 and stats.blocks == sum(
        -(-len(s.rows) // 64) for s in sources
    )
    in_memory = search(queries, stored, 10, ngpu=0, block_rows=64)
    assert_same_up_to_rounding(streamed, in_memory, atol=1e-6)


def test_chunked_dataset_falls_back_to_h5py_reads(tmp_path):
    import h5py

    rng = np.random.default_rng(7)
    database = normalised(rng, 50, 8)
    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset(
            "database/descriptors", data=database, chunks=(8, 8), compression="gzip"
        )
    blocks = list((rows.copy(), block.copy()) for rows, block in
                  iter_feature_blocks([BlockSource(path, np.arange(50))], 16))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), database)


def test_feature_blocks_reject_wrong_row_count(tmp_path):
    rng = np.random.default_rng(8)
    path = write_database(tmp_path / "db.h5", normalised(rng, 5, 4), np.arange(5), "float32")
    with pytest.raises(HarnessError, match="row indices"):
        list(iter_feature_blocks([BlockSource(path, np.arange(4))], 2))


def test_truncated_feature_file_is_a_clear_error(tmp_path):
    import h5py

    rng = np.random.default_rng(11)
    path = write_database(tmp_path / "db.h5", normalised(rng, 400, 64), np.arange(400), "float32")
    with h5py.File(path, "r") as handle:
        end = handle["database/descriptors"].id.get_offset() + 400 * 64 * 4
    with open(path, "r+b") as handle:  # cut into the descriptors
        handle.truncate(end - 1000)
    with pytest.raises(HarnessError, match="truncated|not a readable HDF5"):
        list(iter_feature_blocks([BlockSource(path, np.arange(400))], 100))


def test_blocks_of_a_plain_float32_file_are_mapped_not_copied(tmp_path):
    rng = np.random.default_rng(12)
    database = normalised(rng, 300, 16)
    path = write_database(tmp_path / "db.h5", database, np.arange(300), "float32")
    blocks = iter_feature_blocks([BlockSource(path, np.arange(300))], 128, prefetch_blocks=False)
    rows, first = next(blocks)
    assert not first.flags.writeable and not first.flags.owndata
    np.testing.assert_array_equal(first, database[:128])
    blocks.close()


def test_prefetch_propagates_errors_and_stops_early():
    def broken():
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(prefetch(broken()))
    produced = []

    def endless():
        for i in range(10_000):
            produced.append(i)
            yield i

    iterator = prefetch(endless(), depth=1)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    iterator.close()
    assert len(produced) < 10


def test_backend_registry_and_cpu_choice():
    assert {"numpy", "faiss-cpu", "faiss-gpu"} <= set(list_backends())
    with pytest.raises(HarnessError, match="did you mean numpy"):
        get_backend("numpyy")
    choice = cpu_backend_choice()
    assert choice.backend in ("numpy", "faiss-cpu") and choice.reason
    assert resolve_backend(ngpu=0).name == choice.backend


def test_block_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="dim"):
        search_blocks(
            np.ones((2, 3), np.float32),
            iter_array_blocks(np.ones((4, 5), np.float32), 2),
            2,
            ngpu=0,
        )


@pytest.mark.gpu
@pytest.mark.parametrize("backend_name", ["auto", "faiss-gpu", "torch-cuda"])
def test_gpu_backends_equal_cpu(backend_name):
    from harness.search import faiss_gpu_count, torch_gpu_count

    available = {"faiss-gpu": faiss_gpu_count(), "torch-cuda": torch_gpu_count()}
    available["auto"] = max(available.values())
    if available[backend_name] < 1:
        pytest.skip(f"no GPU for {backend_name}")
    backend = resolve_backend(ngpu=-1) if backend_name == "auto" else get_backend(backend_name)
    assert backend.name in ("faiss-gpu", "torch-cuda")
    rng = np.random.default_rng(9)
    queries, database = normalised(rng, 50, 64), normalised(rng, 5000, 64)
    gpu = search_blocks(queries, iter_array_blocks(database, 1500), 20, backend=backend)
    cpu = search(queries, database, 20, block_rows=1500, ngpu=0)
    assert_same_up_to_rounding(gpu, cpu)
    # Exact ties (small integers): the GPU path must order them like the CPU path.
    queries, database = tied(rng, 40, 6), tied(rng, 3000, 6)
    gpu = search_blocks(queries, iter_array_blocks(database, 1000), 30, backend=backend)
    assert_same(gpu, brute_force(queries, database, 30))


# --------------------------------------------------------------------------------------------
# float16 widening, blocks as stored, stored-bytes hook, overlapped selection, multi-device


def special_float16(rng, rows, dim):
    """float16 values with subnormals, signed zeros, the largest finite values, Inf and NaN."""
    values = (rng.standard_normal((rows, dim)) / 64).astype(np.float16)
    values.reshape(-1)[:8] = np.array(
        [6e-8, -6e-8, 3e-5, -0.0, 0.0, 65504, np.inf, np.nan], np.float16
    )
    return values


@pytest.mark.parametrize("choice", ["numpy", "torch"])
def test_float16_converters_are_exact(choice):
    from harness.search import float16_converter

    if choice == "torch":
        pytest.importorskip("torch")
    stored = special_float16(np.random.default_rng(0), 40, 1000)  # > torch's serial piece size
    out = np.empty(stored.shape, np.float32)
    float16_converter(choice)(stored, out)
    expected = stored.astype(np.float32)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))  # bit for bit
    with pytest.raises(HarnessError, match="valid: auto, numpy, torch"):
        float16_converter("fast")


def test_float16_converter_auto_takes_torch_only_at_scale(monkeypatch):
    import sys

    from harness.search import widen as search_module

    monkeypatch.delenv(search_module.FP16_CONVERTER_ENV, raising=False)
    monkeypatch.setattr(search_module, "torch_installed", lambda: True)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # installed, not imported
    small = search_module.float16_converter("auto", stored_bytes=1 << 20)
    assert small is search_module.widen_numpy and "torch" not in sys.modules
    monkeypatch.setitem(sys.modules, "torch", None)  # "installed", but importing it fails
    large = search_module.float16_converter(
        "auto", stored_bytes=search_module.TORCH_WIDEN_MIN_BYTES
    )
    assert large is search_module.widen_numpy  # no torch after all: numpy, and no error
    monkeypatch.setenv(search_module.FP16_CONVERTER_ENV, "numpy")
    assert (
        search_module.float16_converter("auto", stored_bytes=1 << 40) is search_module.widen_numpy
    )


def test_blocks_as_stored_and_the_stored_bytes_hook(tmp_path):
    rng = np.random.default_rng(13)
    database = normalised(rng, 300, 16)
    path = write_database(tmp_path / "db.h5", database, np.arange(300), "float16")
    seen = []

    def hook(source, file_offset, stored):
        seen.append((file_offset, stored.copy()))

    blocks = list((rows.copy(), block.copy(), block.dtype, block.flags.writeable) for rows, block in
                  iter_feature_blocks([BlockSource(path, np.arange(300))], 128, as_stored=True,
                                      on_stored_block=hook))
    assert [b[2] for b in blocks] == [np.float16] * 3 and all(b[3] for b in blocks)
    np.testing.assert_array_equal(
        np.concatenate([b[1] for b in blocks]), database.astype(np.float16)
    )
    raw = path.read_bytes()
    offsets = [offset for offset, _ in seen]
    assert offsets == [offsets[0] + i * 128 * 16 * 2 for i in range(3)]  # in file order
    for offset, stored in seen:  # the hook sees the file's own bytes
        assert raw[offset:offset + stored.nbytes] == stored.tobytes()


@pytest.mark.parametrize("make", [normalised, tied], ids=["random", "ties"])
def test_overlapped_selection_gives_the_same_result(make):
    rng = np.random.default_rng(14)
    queries, database = make(rng, 150, 6), make(rng, 900, 6)
    plain = search_blocks(queries, iter_array_blocks(database, 100), 12,
                          backend=get_backend("numpy", overlap=False))
    for batch in (None, 40):
        backend = get_backend("numpy", overlap=True, query_batch_rows=batch, selection_threads=2)
        assert "overlapped" in backend.describe()
        assert_same(
            search_blocks(queries, iter_array_blocks(database, 100), 12, backend=backend), plain
        )
    if make is tied:
        assert_same(plain, brute_force(queries, database, 12))


def test_overlapped_selection_propagates_errors():
    backend = get_backend("numpy", overlap=True)

    def blocks():
        yield np.arange(3), np.ones((3, 4), np.float32)
        yield np.arange(3, 6), np.ones((3, 4), np.float32)

    class Broken(RuntimeError):
        pass

    def explode(*args):
        raise Broken("selection failed")

    backend._select = explode
    with pytest.raises(Broken):
        search_blocks(np.ones((2, 4), np.float32), blocks(), 2, backend=backend)
    assert backend._selector is None and backend._pending is None  # cleaned up


class FakeDevices:
    """A multi-GPU backend whose "devices" run numpy: the split/merge/tie-repair code path of
    the real GPU backends, runnable without a GPU. Each device returns exact ties in the
    *wrong* order (higher index first), as a GPU heap may."""

    @staticmethod
    def make(count: int, accepts_float16: bool = True):
        from harness.search import MultiGpuBackend

        class Backend(MultiGpuBackend):
            name = "fake-gpus"
            max_k = 1 << 20

            def __init__(self):
                self.devices = list(range(count))
                self.accepts_float16 = accepts_float16
                self.calls = []
                self._pool = None

            def prepare(self, queries, k):
                self._queries = queries

            def _search_device(self, slot, sub_block, depth):
                self.calls.append((slot, sub_block.dtype, sub_block.shape[0]))
                scores = self._queries @ sub_block.astype(np.float32).T  # "widened on the device"
                columns = np.arange(sub_block.shape[0])
                order = np.stack([np.lexsort((-columns, -row)) for row in scores])[:, :depth]
                return np.take_along_axis(scores, order, axis=1), order

        return Backend()


@pytest.mark.parametrize("devices", [1, 3])
def test_multi_device_split_and_merge_equals_cpu(tmp_path, devices):
    rng = np.random.default_rng(15)
    queries, database = tied(rng, 25, 8), tied(rng, 600, 8)  # small integers: exact in float16
    permutation = rng.permutation(len(database))
    sources = []
    for number, rows in enumerate(np.array_split(permutation, 2)):
        path = write_database(tmp_path / f"shard{number}.h5", database[rows], rows, "float16")
        sources.append(BlockSource(path, rows))
    backend = FakeDevices.make(devices)
    blocks = iter_feature_blocks(sources, 128, as_stored=backend.accepts_float16)
    result = search_blocks(queries, blocks, 30, backend=backend)
    assert_same(result, brute_force(queries, database, 30))
    assert {slot for slot, _, _ in backend.calls} == set(range(devices))
    assert {dtype for _, dtype, _ in backend.calls} == {np.dtype(np.float16)}  # widened "on device"
    assert sum(n for _, _, n in backend.calls) == len(database)


def test_gpus_asked_for_without_a_gpu_fall_back_to_the_cpu(caplog, monkeypatch):
    from harness import hardware

    monkeypatch.setattr(hardware, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(hardware, "torch_gpu_count", lambda: 0)
    with caplog.at_level("WARNING", logger="harness.search"):
        backend = resolve_backend(ngpu=2)
    assert backend.name in ("numpy", "faiss-cpu") and "searching on the CPU" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="harness.search"):
        assert resolve_backend(ngpu=-1).name in ("numpy", "faiss-cpu")
    assert "searching on the CPU" not in caplog.text  # -1 means "whatever is there": no warning


@pytest.mark.gpu
@pytest.mark.parametrize("ngpu", [1, -1])
def test_gpu_streamed_float16_shards_equal_cpu(tmp_path, ngpu):
    from harness.search import faiss_gpu_count, torch_gpu_count

    if max(faiss_gpu_count(), torch_gpu_count()) < 1:
        pytest.skip("no CUDA GPU")
    rng = np.random.default_rng(16)
    queries = tied(rng, 40, 32)
    database = tied(rng, 5000, 32)
    permutation = rng.permutation(len(database))
    sources = []
    for number, rows in enumerate(np.array_split(permutation, 3)):
        path = write_database(tmp_path / f"shard{number}.h5", database[rows], rows, "float16")
        sources.append(BlockSource(path, rows))
    backend = resolve_backend(ngpu=ngpu)
    assert backend.name in ("faiss-gpu", "torch-cuda")
    gpu = search_blocks(
        queries,
        iter_feature_blocks(sources, 1024, as_stored=backend.accepts_float16),
        50,
        backend=backend,
    )
    cpu = search_blocks(queries, iter_feature_blocks(sources, 1024), 50, ngpu=0)
    assert_same(gpu, cpu)
    assert_same(cpu, brute_force(queries, database, 50))


# --------------------------------------------------------------------------------------------
# bfloat16 shortlist re-scored in float32 (opt-in CPU backend)


def near_duplicates(rng, rows, dim, groups=20):
    """Rows clustered around a few centres: many scores inside the bfloat16 error window."""
    centres = normalised(rng, groups, dim)
    values = centres[rng.integers(0, groups, rows)] + 0.05 * rng.standard_normal(
        (rows, dim)
    ).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "make", [normalised, near_duplicates, tied], ids=["random", "clustered", "ties"]
)
def test_bf16_shortlist_equals_exact_search(make):
    pytest.importorskip("torch")
    rng = np.random.default_rng(18)
    queries, database = make(rng, 60, 64), make(rng, 3000, 64)
    backend = get_backend("bf16")
    backend.dense_backoff_blocks = 0  # shortlist every block, however loose
    result = search_blocks(queries, iter_array_blocks(database, 256), 10, backend=backend)
    expected = search(queries, database, 10, block_rows=256, ngpu=0, cpu_backend="numpy")
    if make is tied:
        assert_same(result, brute_force(queries, database, 10))
    elif backend.bitwise:  # re-scored pairs carry the GEMM's bits: the numpy backend's ranking
        assert_same(result, expected)
    else:
        assert_same_up_to_rounding(result, expected, atol=1e-6)
    assert backend.checked and not backend.fallback
    assert backend.exact_blocks == 1 and backend.shortlisted_blocks == 11 and backend.candidates > 0
    assert "bf16" in backend.describe()


def test_bf16_shortlist_loose_blocks_and_the_error_bound():
    pytest.importorskip("torch")
    from harness.search import Bf16ShortlistBackend

    rng = np.random.default_rng(19)
    queries, database = (
        near_duplicates(rng, 30, 32, groups=2),
        near_duplicates(rng, 2000, 32, groups=2),
    )
    backend = get_backend("bf16")
    backend.dense_fraction = 0.0  # every shortlist counts as loose: the float32 GEMM fallback
    result = search_blocks(queries, iter_array_blocks(database, 200), 15, backend=backend)
    assert_same_up_to_rounding(result, search(queries, database, 15, ngpu=0), atol=1e-6)
    assert backend.candidates > 0
    # 10 blocks: the first exact (top-K not full), one loose shortlist, then 8 in float32 only.
    assert (backend.exact_blocks, backend.shortlisted_blocks) == (9, 1)

    class Broken(Bf16ShortlistBackend):
        def _approximate(self, block):  # pretend the kernel accumulates in bfloat16
            return super()._approximate(block) + 0.5

    broken = Broken()
    result = search_blocks(queries, iter_array_blocks(database, 200), 15, backend=broken)
    assert broken.fallback and broken.shortlisted_blocks == 0 and "fell back" in broken.describe()
    assert_same_up_to_rounding(result, search(queries, database, 15, ngpu=0), atol=1e-6)

    class BrokenForTheLastQuery(Bf16ShortlistBackend):
        def _approximate(self, block):
            scores = super()._approximate(block).clone()
            scores[-1] += 0.5
            return scores

    # The check takes 3 of the 30 queries, spread over them: the first, a middle and the last.
    sampled = BrokenForTheLastQuery()
    sampled.check_queries = 3
    search_blocks(queries, iter_array_blocks(database, 200), 15, backend=sampled)
    assert sampled.fallback


def test_parallel_rescoring_gives_the_same_bits_and_restores_blas_threads():
    pytest.importorskip("torch")
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(23)
    queries, database = normalised(rng, 300, 64), normalised(rng, 4096, 64)
    blas_threads = [pool["num_threads"] for pool in threadpool_info()
                    if pool["user_api"] == "blas"]
    results = {}
    for workers in (1, 2):
        backend = get_backend("bf16")
        backend.dense_backoff_blocks, backend.dense_fraction = 0, 1.0  # always pair by pair
        backend.rescore_workers = workers
        results[workers] = search_blocks(queries, iter_array_blocks(database, 512), 10,
                                         backend=backend)
        assert (backend.parallel_rescores > 0) == (workers == 2), backend.parallel_rescores
        assert backend.candidates > 512 * backend.parallel_rescores
    assert_same(results[2], results[1])
    assert_same_up_to_rounding(results[2], brute_force(queries, database, 10))
    assert [pool["num_threads"] for pool in threadpool_info()
            if pool["user_api"] == "blas"] == blas_threads


def test_rescored_pairs_are_the_gemm_scores():
    """Tile re-scoring is the GEMM's value up to rounding always, and bit for bit exactly when
    the bf16 backend's own check says so (OpenBLAS); dot products are einsum's values."""
    pytest.importorskip("torch")
    from harness.search import rescore_pairs

    rng = np.random.default_rng(23)
    queries, block = (
        normalised(rng, 70, 4096),
        normalised(rng, 300, 4096).astype(np.float16).astype(np.float32),
    )
    query_rows = np.sort(rng.integers(0, 70, 517))  # not a multiple of the tile or chunk
    columns = rng.integers(0, 300, 517)
    gemm = (queries @ block.T)[query_rows, columns]
    tiled = rescore_pairs(queries, block, query_rows, columns)
    dots = rescore_pairs(queries, block, query_rows, columns, as_gemm=False)
    np.testing.assert_allclose(tiled, gemm, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(dots, np.einsum("ij,ij->i", queries[query_rows], block[columns]))
    backend = get_backend("bf16")
    backend.prepare(queries, 10)
    backend._check_bound(queries, block)
    assert not backend.fallback
    assert backend.bitwise == np.array_equal(tiled, gemm)


@pytest.mark.parametrize("value, expected", [
    (1.0, 1.0),
    (1.0 + 2.0 ** -10, 1.0),  # truncated
    (-(1.0 + 2.0 ** -10), -(1.0 + 2.0 ** -7)),  # one bfloat16 ulp away from zero
    (1.0 - 1e-12, 1.0 - 2.0 ** -8),  # float64 just below 1: the bfloat16 below 1
    (-1.0, -1.0),
    (0.0, 0.0),
    (0.0625 + 3e-5, 0.0625),  # a top-100 score at 4096-D: the grid there is 2^-11
    (-3.0e38 * 1.2, -np.inf),  # beyond the bfloat16 range
])
def test_bf16_floor_hand_cases(value, expected):
    torch = pytest.importorskip("torch")
    from harness.search import bf16_floor

    bits = bf16_floor(np.array([value]))
    assert torch.from_numpy(bits).view(torch.bfloat16).float().item() == expected


def test_bf16_floor_is_the_largest_bfloat16_not_above():
    torch = pytest.importorskip("torch")
    from harness.search import bf16_floor

    rng = np.random.default_rng(21)
    values = rng.standard_normal(20000) * np.exp2(rng.integers(-60, 60, 20000))
    bits = bf16_floor(values)
    below = torch.from_numpy(bits).view(torch.bfloat16).double().numpy()
    # The next bfloat16 up: one step of the bit pattern toward +inf (down in magnitude below 0).
    next_up = torch.from_numpy(bits + np.where(below >= 0, 1, -1).astype(np.int16))
    next_up = next_up.view(torch.bfloat16).double().numpy()
    assert (below <= values).all()
    assert (next_up > values).all()


def adversarial_pairs(rng, rows, dim):
    """Queries and rows whose every element sits just under a bfloat16 rounding midpoint and
    shares its sign with the matching element: every rounding error points the same way and
    the Cauchy-Schwarz bound is nearly tight."""
    magnitudes = np.exp2(rng.uniform(-8, -4, (rows, dim)))
    grid = np.exp2(np.floor(np.log2(magnitudes)) - 7)  # one bfloat16 ulp
    under_midpoint = (np.floor(magnitudes / grid) + 0.5 - 1e-3) * grid
    signs = np.where(rng.random(dim) < 0.5, -1.0, 1.0)
    return (under_midpoint * signs).astype(np.float32)


@pytest.mark.parametrize("kind", ["random", "clustered", "adversarial"])
def test_bf16_margins_hold_for_torch_bfloat16_scores(kind):
    """The guarantee the shortlist rests on, pair by pair: a pair's bfloat16 score is at least
    its float32 score minus the margin, rounded down to the bfloat16 grid."""
    torch = pytest.importorskip("torch")
    from harness.search import bf16_floor, bf16_margins

    rng = np.random.default_rng(22)
    dim = 4096
    if kind == "random":
        queries, database = normalised(rng, 64, dim), normalised(rng, 512, dim)
    elif kind == "clustered":
        queries, database = (
            near_duplicates(rng, 64, dim, groups=2),
            near_duplicates(rng, 512, dim, groups=2),
        )
    else:
        queries = adversarial_pairs(rng, 64, dim)
        database = np.abs(adversarial_pairs(rng, 512, dim)) * np.sign(queries[0])
        database = database.astype(np.float32)
    margins = bf16_margins(queries)
    unit = margins / np.linalg.norm(queries.astype(np.float64), axis=1)
    # About 0.4 u for the query's measured rounding + u for the database's worst case + sums.
    worst = 2 * 2.0 ** -8 + 2 * (dim + 2) * 2.0 ** -24 * 1.01
    assert (unit < worst).all()
    if kind != "adversarial":
        assert 0.004 < unit.mean() < 0.0066
    exact = (queries @ database.T).astype(np.float64)
    approximate = torch.mm(
        torch.from_numpy(queries).bfloat16(), torch.from_numpy(database).bfloat16().T
    )
    approximate = approximate.double().numpy()
    slack = np.outer(margins, np.linalg.norm(database.astype(np.float64), axis=1))
    floor = torch.from_numpy(bf16_floor(exact - slack)).view(torch.bfloat16).double().numpy()
    assert (approximate >= floor).all()
    if kind == "adversarial":
        # The errors really are near the worst case here: the margin is needed.
        rounded = (torch.from_numpy(queries).bfloat16().double().numpy()
                   @ torch.from_numpy(database).bfloat16().double().numpy().T)
        assert (np.abs(rounded - exact) / slack).max() > 0.5


def test_bf16_backend_by_name_and_auto_on_small_searches():
    pytest.importorskip("torch")
    from harness.config import EvalConfig

    assert EvalConfig(cpu_backend="bf16").cpu_backend == "bf16"
    assert resolve_backend(ngpu=0, cpu_backend="bf16").name == "bf16"
    with pytest.raises(HarnessError, match="bf16"):
        EvalConfig(cpu_backend="bfloat")
    # Small searches never take the shortlist, whatever the CPU.
    small = resolve_backend(ngpu=0, database_rows=999_999, num_queries=1000)
    assert small.name != "bf16"
    assert cpu_backend_choice(database_rows=5000, num_queries=5000).backend != "bf16"


def _rates(float32=200.0, faiss=None, bf16=440.0):
    from harness.gemm_rates import KernelRates

    return KernelRates(float32, faiss, bf16, "0" * 16, "2026-01-01T00:00:00Z")


@pytest.mark.parametrize("rows, queries, rates, torch_available, pays, why", [
    (6_400_000, 1000, _rates(), True, True, "exact bfloat16 shortlist"),  # AVX-512 BF16 (AMD)
    (6_400_000, 1000, _rates(bf16=870.0, float32=244.0), True, True, "870 GFLOP/s"),  # AMX
    (1_000_000, 100, _rates(), True, True, "shortlist"),  # both thresholds inclusive
    (999_999, 1000, _rates(), True, False, "does not pay"),
    (6_400_000, 99, _rates(), True, False, "does not pay"),
    (6_400_000, 1000, _rates(bf16=300.0), True, False, "below 1.6x"),  # emulated or slow
    (6_400_000, 1000, _rates(faiss=900.0, bf16=440.0), True, True, "vs float32 200"),
    (6_400_000, 1000, _rates(bf16=None), True, False, "no bfloat16 GEMM"),
    (6_400_000, 1000, _rates(), False, False, "torch"),
    (None, 1000, _rates(), True, False, "not known"),
])
def test_auto_takes_the_bf16_shortlist_only_where_it_pays(rows, queries, rates, torch_available,
                                                          pays, why):
    from harness.search import bf16_shortlist_pays

    decision, reason = bf16_shortlist_pays(rows, queries, rates, torch_available)
    assert decision is pays and why in reason


def test_auto_follows_the_measured_rates():
    """Measured rates decide the shortlist; faiss is never taken for being measured faster
    (its last bits depend on how the database is cut, so shards would not merge exactly)."""
    base = cpu_backend_choice(rates=_rates(bf16=None)).backend
    if base != "numpy":
        pytest.skip("numpy's BLAS runs a generic kernel here: auto takes faiss regardless")
    assert cpu_backend_choice(rates=_rates(faiss=900.0, bf16=None)).backend == "numpy"
    big = dict(database_rows=6_400_000, num_queries=1000)
    if importlib.util.find_spec("torch") is not None:
        chosen = cpu_backend_choice(rates=_rates(), **big)
        assert chosen.backend == "bf16" and "measured" in chosen.reason
    assert cpu_backend_choice(rates=_rates(bf16=250.0), **big).backend == "numpy"


def test_auto_on_a_million_rows_takes_the_shortlist_where_it_pays_and_ranks_identically():
    """1M x 16-D rows, 100 queries: ``auto`` follows the rule for this machine, and the
    ranking is the numpy backend's (bit for bit where the backend's check allows it)."""
    from harness.gemm_rates import kernel_rates
    from harness.search import SearchStats, bf16_shortlist_pays

    rng = np.random.default_rng(24)
    queries, database = normalised(rng, 100, 16), normalised(rng, 1_000_000, 16)
    stats = SearchStats()
    found = search(queries, database, 20, block_rows=1 << 16, ngpu=0, stats=stats)
    expected = search(queries, database, 20, block_rows=1 << 16, ngpu=0, cpu_backend="numpy")
    pays, _ = bf16_shortlist_pays(1_000_000, 100, kernel_rates(),
                                  importlib.util.find_spec("torch") is not None)
    assert stats.backend.startswith("bf16") is pays
    assert_same(found, expected)


@pytest.mark.parametrize("make", [normalised, tied], ids=["random", "ties"])
def test_column_workers_give_the_same_bits(make):
    rng = np.random.default_rng(15)
    queries, database = make(rng, 130, 24), make(rng, 2000, 24)
    plain = search_blocks(queries, iter_array_blocks(database, 700), 25,
                          backend=get_backend("numpy", workers=1, overlap=False))
    for workers, sub_rows, batch in ((2, 64, None), (3, 50, 40), (4, 1000, 7)):
        backend = get_backend("numpy", workers=workers, sub_block_rows=sub_rows,
                              query_batch_rows=batch)
        assert f"{workers} column workers" in backend.describe()
        found = search_blocks(queries, iter_array_blocks(database, 700), 25, backend=backend)
        np.testing.assert_array_equal(found.indices, plain.indices)
        np.testing.assert_array_equal(found.scores.view(np.uint32), plain.scores.view(np.uint32))
    assert_same(plain, brute_force(queries, database, 25))


def test_column_workers_limit_blas_to_one_thread_and_restore_it():
    from threadpoolctl import threadpool_info, threadpool_limits

    from harness.search.numpy_backend import blas_threads

    seen = []
    with threadpool_limits(limits=2, user_api="blas"):
        backend = get_backend("numpy", workers=2)

        def blocks():
            for start in range(0, 400, 100):
                seen.append(blas_threads())
                yield np.arange(start, start + 100), np.ones((100, 8), np.float32)

        search_blocks(np.ones((5, 8), np.float32), blocks(), 3, backend=backend)
        assert seen[1:] == [1, 1, 1]  # during the search: one BLAS thread per worker
        assert blas_threads() == 2  # restored afterwards
        assert any(info["user_api"] == "blas" for info in threadpool_info())


def test_column_workers_propagate_errors_and_refuse_two_searches():
    backend = get_backend("numpy", workers=2, sub_block_rows=2)
    with pytest.raises(ValueError, match="different ways"):
        get_backend("numpy", workers=2, overlap=True)

    def bad_blocks():
        yield np.arange(4), np.ones((4, 3), np.float32)
        yield np.arange(4, 8), np.ones((4, 5), np.float32)  # wrong dimension

    with pytest.raises(ValueError, match="does not match"):
        search_blocks(np.ones((3, 3), np.float32), bad_blocks(), 2, backend=backend)
    backend = get_backend("numpy", workers=2)
    backend.prepare(np.ones((2, 3), np.float32), 1)
    try:
        backend.add_block(RunningTopK(2, 1), np.ones((2, 3), np.float32),
                          np.ones((4, 3), np.float32), np.arange(4))
        with pytest.raises(ValueError, match="one search at a time"):
            backend.add_block(RunningTopK(2, 1), np.ones((2, 3), np.float32),
                              np.ones((4, 3), np.float32), np.arange(4, 8))
    finally:
        backend.finish()


@pytest.mark.parametrize("block_rows", [2, 5])  # b <= k and b > k
def test_a_floor_drops_only_scores_below_it(block_rows):
    state = RunningTopK(2, 2)
    scores = np.array([[0.9, 0.5, 0.7, 0.5, 0.1], [0.2, 0.3, 0.4, 0.6, 0.8]], np.float32)
    rows = np.arange(5)
    floor = np.array([0.5, 0.7], np.float32)  # scores equal to the floor may still tie in
    for first in range(0, 5, block_rows):
        state.add_scores(slice(0, 2), np.ascontiguousarray(scores[:, first:first + block_rows]),
                         rows[first:first + block_rows], floor=floor)
    np.testing.assert_array_equal(state.indices, [[0, 2], [4, -1]])
    np.testing.assert_array_equal(state.scores, np.array([[0.9, 0.7], [0.8, -np.inf]],
                                                         np.float32))
    assert state.full.tolist() == [True, False]  # the second query holds one entry above 0.7
