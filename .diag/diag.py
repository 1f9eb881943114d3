import sys, time, json, numpy as np, tempfile, shutil, os
from pathlib import Path
sys.path.insert(0, "benchmarks")
from threadpoolctl import threadpool_limits
from search import generate
from harness.config import EvalConfig
from harness.evaluate import search_features
from harness.splits import get_split
from harness.hardware import measure_gemm_gflops
from harness.search import search_blocks, iter_feature_blocks, BlockSource, get_backend, search
import harness.search as hs
rows = int(sys.argv[1])
folder = Path(tempfile.mkdtemp(prefix="diag-", dir="/tmp"))
with threadpool_limits(limits=2):
  try:
    paths = generate(folder, rows, 1000, 4096, "float32", 1, 0)
    split = get_split("bench", paths["data_root"])
    files = [paths["queries"]["bench"], *paths["shards"]]
    from harness.features import read_descriptors
    queries = read_descriptors(files[0], "query")
    def run_blocks(label, **kw):
        sel = kw.pop("selection_threads", None)
        src=[BlockSource(Path(files[1]), np.arange(rows))]
        be = get_backend("numpy", selection_threads=sel)
        p1 = measure_gemm_gflops(1000, 8192, 4096)
        t=time.perf_counter(); c=time.process_time()
        search_blocks(queries, iter_feature_blocks(src, 8192, **kw), 100, backend=be)
        dt=time.perf_counter()-t; cpu=time.process_time()-c
        p2 = measure_gemm_gflops(1000, 8192, 4096)
        g=2*1000*4096*rows/dt/1e9
        print(f"{label:34s} {g:6.1f} GFLOP/s peaks {p1:6.1f}/{p2:6.1f} ratio {g/((p1+p2)/2):.2f} cpu/wall {cpu/dt:.2f}", flush=True)
    for rep in range(1):
        for label, cfg in [("evaluate path (prefetch+validate)", EvalConfig(ngpu=0)), ("evaluate path, no validate", EvalConfig(ngpu=0, validate=False))]:
            p1 = measure_gemm_gflops(1000, 8192, 4096)
            out = search_features(files, split, cfg)
            p2 = measure_gemm_gflops(1000, 8192, 4096)
            g = 2*1000*4096*rows/out.search_s/1e9
            print(f"{label:34s} {g:6.1f} GFLOP/s peaks {p1:6.1f}/{p2:6.1f} ratio {g/((p1+p2)/2):.2f}", flush=True)
        run_blocks("blocks prefetch, sel=2")
        run_blocks("blocks prefetch, sel=1", selection_threads=1)
        run_blocks("blocks no prefetch, sel=2", prefetch_blocks=False)
    db = np.empty((rows, 4096), np.float32)
    import h5py
    with h5py.File(files[1]) as h: h["database/descriptors"].read_direct(db)
    for sel in (1, 2):
        be = get_backend("numpy", selection_threads=sel)
        p1 = measure_gemm_gflops(1000, 8192, 4096)
        t=time.perf_counter(); search(queries, db, 100, block_rows=8192, backend=be); dt=time.perf_counter()-t
        p2 = measure_gemm_gflops(1000, 8192, 4096)
        g=2*1000*4096*rows/dt/1e9
        print(f"in-memory sel={sel}                    {g:6.1f} GFLOP/s peaks {p1:6.1f}/{p2:6.1f} ratio {g/((p1+p2)/2):.2f}", flush=True)
    # pure GEMM loop over the in-memory blocks (no selection): the streaming GEMM ceiling
    out_buf=np.empty((1000,8192),np.float32)
    t=time.perf_counter()
    for s in range(0, rows, 8192): np.matmul(queries, db[s:s+8192].T, out=out_buf)
    dt=time.perf_counter()-t
    print(f"GEMM-only loop over blocks          {2*1000*4096*rows/dt/1e9:6.1f} GFLOP/s")
  finally:
    shutil.rmtree(folder)
