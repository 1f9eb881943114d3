"""The benchmark scripts run end to end on tiny sizes (their figures are not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_scale_compares_backends_side_by_side_and_cleans_up(tmp_path):
    pytest.importorskip("torch")
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "scale.py"),
        "--rows",
        "6000",
        "--dim",
        "64",
        "--queries",
        "60",
        "--shard-rows",
        "2500",
        "--block-rows",
        "500",
        "--cpu-backend",
        "numpy,bf16",
        "--no-peak",
        "--dir",
        str(tmp_path),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    table = lines[
        lines.index(
            next(line for line in lines if line.startswith("backend ") and "wall s" in line)
        ) :
    ]
    assert table[1].startswith("numpy") and "identical (indices and scores)" in table[1]
    # The shortlist really ran (the top-K is full after the first block) and gave the numpy
    # ranking: bit for bit where the BLAS allows it (OpenBLAS), else the same indices.
    assert table[2].startswith("bf16 shortlist")
    assert "identical (indices and scores)" in table[2] or "indices identical" in table[2]
    shortlisted = [line for line in lines if line.startswith("bf16 shortlist:")]
    assert shortlisted and not shortlisted[0].startswith("bf16 shortlist: 0 blocks")
    assert not list(tmp_path.iterdir())  # the generated data is removed


def test_scale_reads_past_the_page_cache_and_mapped_side_by_side(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--rows", "3000", "--dim",
               "64", "--queries", "40", "--shard-rows", "1000", "--block-rows", "400",
               "--cpu-backend", "numpy", "--direct-io", "on,off", "--no-peak", "--dir",
               str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("numpy")]
    assert [("direct_io=on" in row, "direct_io=off" in row) for row in rows] == [
        (True, False), (False, True)]
    assert all("identical (indices and scores)" in row for row in rows)
    bad = subprocess.run(command[:-4] + ["--direct-io", "sometimes", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--direct-io" in bad.stderr


def test_shortlist_benchmark_prints_rescoring_rates_and_windows():
    pytest.importorskip("torch")
    command = [sys.executable, str(ROOT / "benchmarks" / "shortlist.py"), "--dim", "64",
               "--queries", "40", "--block-rows", "600", "--pairs", "1000", "--rows", "100000",
               "--sample-rows", "2000"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bits identical" in out.stdout
    assert "GEMM bfloat16 (torch)" in out.stdout
    margins = [line for line in out.stdout.splitlines() if "first pass: margin" in line]
    assert [line.split()[0] for line in margins] == ["bf16", "int8"]


def test_scale_rejects_an_unknown_backend(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--rows", "100",
               "--cpu-backend", "numpy,bf61", "--dir", str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown bf61" in out.stderr


def test_end_to_end_prints_the_runs_side_by_side_and_cleans_up(tmp_path):
    pytest.importorskip("faiss")
    command = [sys.executable, str(ROOT / "benchmarks" / "end_to_end.py"), "--rows", "3000",
               "--dim", "64", "--queries", "40", "--shards", "2", "--rounds", "1",
               "--tmp", str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run (best of 1)"))
    rows = {line[:36].strip(): line for line in lines[header + 1:header + 6]}
    assert set(rows) == {"harness eval, digests cold", "harness eval, digests remembered",
                         "harness eval --no-checksums", "numpy in memory (hand-written)",
                         "faiss IndexFlatIP in memory"}
    assert "sha256 0.00 s" in rows["harness eval, digests remembered"]
    recalls = {line.split("recall@1 ")[1] for name, line in rows.items() if "harness" in name}
    assert len(recalls) == 1  # the same record three ways
    assert "agree on 100.0% of the queries" in lines[-1]
    assert not list(tmp_path.iterdir())  # the generated data is removed
