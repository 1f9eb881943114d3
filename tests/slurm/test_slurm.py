"""SLURM launchers: resources and profiles, sharded evaluation and extraction, failures,
cancellation and resubmission.

Every launch test runs on ``--cluster local`` (everywhere) and on the real single-node SLURM
cluster of ``.ci/slurm-cluster.sh`` (marked ``slurm``; skipped when it is not running). Nothing
is mocked: tasks are real processes (submitit's local executor, or SLURM jobs) writing real
HDF5 and npz files. ``sacct`` lags the jobs by seconds, so tests poll, never assert at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from harness.config import EvalConfig
from harness.errors import HarnessError
from harness.features import write_features
from harness.splits import Split, save_split
from slurm.executor import (
    Resources,
    executor_parameters,
    list_profiles,
    load_profile,
    make_executor,
    parse_time_min,
)
from slurm.launch import Launch
from slurm.scheduler import parse_sacct

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(
    os.environ.get("IOVPR_SLURM_DIR", Path(os.environ.get("TMPDIR", "/tmp")) / "iovpr-slurm")
)
LAUNCH_TIMEOUT_S = 240


# --------------------------------------------------------------------------------------------
# Fixtures


def _cluster_conf() -> Path | None:
    conf = os.environ.get("SLURM_CONF")
    if conf and Path(conf).is_file():
        return Path(conf)
    conf = CLUSTER_DIR / "etc" / "slurm.conf"
    return conf if conf.is_file() else None


@pytest.fixture(scope="session")
def slurm_cluster():
    """The running test cluster (``.ci/slurm-cluster.sh``); skips the test without one.

    Under ``.ci/slurm-cluster.sh run`` (``IOVPR_SLURM_REQUIRED=1``) a cluster that does not
    answer fails the test instead: CI promised one.
    """
    unavailable = pytest.fail if os.environ.get("IOVPR_SLURM_REQUIRED") == "1" else pytest.skip
    conf = _cluster_conf()
    if conf is None or shutil.which("sbatch") is None:
        unavailable("SLURM test cluster not running (start it: .ci/slurm-cluster.sh start)")
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                               text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"SLURM test cluster not answering (sinfo: {exc})")
    answer = probe.stdout.strip() or probe.stderr.strip()
    if probe.returncode != 0 or not answer.startswith(("idle", "mixed", "alloc")):
        unavailable(f"SLURM test cluster not ready (sinfo: {answer})")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(conf))
        yield conf


@pytest.fixture
def job_env(monkeypatch):
    """What job processes inherit: this checkout first on their path, one BLAS thread."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), path) if p))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def cluster(request, job_env):
    if request.param == "slurm":
        request.getfixturevalue("slurm_cluster")
    return request.param


def _resources(cluster: str, **changes) -> Resources:
    base = Resources(time_min=10, mem_gb=1) if cluster == "slurm" else Resources(time_min=10)
    return base.replace(**changes) if changes else base


class Toy:
    """A seeded split with descriptors: query.h5 plus four database shard files."""

    def __init__(
        self, root: Path, seed: int = 0, queries: int = 40, database: int = 400, dim: int = 16
    ):
        rng = np.random.default_rng(seed)
        self.root = root
        self.database_names = tuple(f"db/{i:05d}.jpg" for i in range(database))
        self.query_names = tuple(f"q/{i:04d}.jpg" for i in range(queries))
        database_utm = rng.uniform(0, 300, (database, 2))
        query_utm = database_utm[rng.integers(0, database, queries)] + rng.normal(
            0, 8, (queries, 2)
        )
        self.split = Split(
            name="toy",
            query_names=self.query_names,
            database_names=self.database_names,
            query_utm=query_utm,
            database_utm=database_utm,
        )
        self.split_file = save_split(self.split, root / "toy.split.npz")
        descriptors = rng.normal(size=(database, dim)).astype(np.float32)
        descriptors[database - 1] = descriptors[3]  # an exact tie between two shards
        self.database = descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)
        queries_desc = self.database[rng.integers(0, database, queries)] + rng.normal(
            0, 0.3, (queries, dim)
        )
        self.queries = (queries_desc / np.linalg.norm(queries_desc, axis=1, keepdims=True)).astype(
            np.float32
        )
        self.features = root / "features"
        write_features(
            self.features / "query.h5",
            split="toy",
            method="toy",
            query=(self.query_names, self.queries),
        )
        # Shard files hold their rows in a shuffled order: names place them in the split.
        self.shards = np.array_split(rng.permutation(database), 4)
        for index in range(4):
            self.write_shard(index)

    def shard_path(self, index: int) -> Path:
        return self.features / f"database-{index}.h5"

    def write_shard(self, index: int, nan_row: bool = False) -> Path:
        rows = self.shards[index]
        descriptors = self.database[rows].copy()
        if nan_row:
            descriptors[1, 0] = np.nan
        return write_features(self.shard_path(index), split="toy", method="toy",
                              database=([self.database_names[r] for r in rows], descriptors))


@pytest.fixture
def toy(tmp_path) -> Toy:
    return Toy(tmp_path / "toy")


def _single(toy: Toy):
    from harness.evaluate import evaluate

    return evaluate([toy.features], toy.split, EvalConfig(ngpu=0))


def evaluate_features(paths, split, config):
    from harness.evaluate import evaluate

    return evaluate(paths, split, config)


def _assert_same_evaluation(record_path: Path, expected) -> None:
    """Scores and per-query predictions equal to a single-process evaluation's."""
    from harness.results import read_predictions, read_result

    result = read_result(record_path)
    assert result.scores == {k: round(v, 6) for k, v in expected.scores.items()}
    assert result.counts == expected.counts
    predictions = read_predictions(record_path, result)
    assert np.array_equal(predictions.indices, expected.prediction_data.indices)
    assert np.array_equal(predictions.scores, expected.prediction_data.scores)
    assert sorted(f.sha256 for f in result.features) == sorted(f.sha256 for f in expected.features)


def _poll(launch: Launch, condition, timeout_s: float = LAUNCH_TIMEOUT_S, every_s: float = 1.0):
    """Poll the launch's status until ``condition(status)``; sacct lags, so never assert at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = launch.status()
        if condition(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met within {timeout_s}s:\n{status.format(all_tasks=True)}"
            )
        time.sleep(every_s)


# --------------------------------------------------------------------------------------------
# Resources and profiles


@pytest.mark.parametrize("text, minutes", [
    (45, 45), ("90", 90), ("1:30:00", 90), ("0:30", 1), ("2-00:00:00", 2880), ("1-12", 2160),
    ("10:00", 10), ("0:00:01", 1),
])
def test_parse_time_min(text, minutes):
    assert parse_time_min(text) == minutes


@pytest.mark.parametrize("text", ["abc", 0, "0", True, 1.5, "1:2:3:4"])
def test_parse_time_min_rejects(text):
    with pytest.raises(HarnessError):
        parse_time_min(text)


def test_resources_reject_unknown_keys_listing_valid_ones():
    with pytest.raises(HarnessError) as info:
        Resources.from_dict({"partiton": "gpu"})
    message = info.value.one_line()
    assert "partiton" in message and "did you mean partition" in message
    for key in ("partition", "gpus", "cpus", "mem_gb", "time", "account", "qos", "constraint"):
        assert key in message


@pytest.mark.parametrize("values", [
    {"gpus": -1}, {"cpus": 0}, {"mem_gb": 0}, {"gpus": 1.5}, {"partition": ""},
    {"array_parallelism": 0}, {"time": "soon"}, {"setup": [1]}, {"time": 5, "time_min": 5},
])
def test_resources_validate_values(values):
    with pytest.raises(HarnessError):
        Resources.from_dict(values)


def test_profile_layers_and_overrides(tmp_path):
    profile = tmp_path / "site.toml"
    profile.write_text(
        'cluster = "local"\nlog_dir = "$HOME/runs"\npartition = "cpu"\ntime = "2:00:00"\n'
        '[train]\npartition = "gpu"\ngpus = 4\nmem_gb = 64\n[eval]\ncpus = 8\n'
    )
    loaded = load_profile(profile)
    assert loaded.cluster == "local" and loaded.log_dir == "$HOME/runs"
    train = loaded.resources("train")
    assert (train.partition, train.gpus, train.mem_gb, train.time_min) == ("gpu", 4, 64.0, 120)
    evaluate = loaded.resources("eval", {"time_min": "30", "cpus": None})
    assert (evaluate.partition, evaluate.cpus, evaluate.time_min, evaluate.gpus) == (
        "cpu",
        8,
        30,
        0,
    )
    assert loaded.resources("extract").partition == "cpu"


@pytest.mark.parametrize("text, expected", [
    ('partition = "gpu"\npartiton = "cpu"\n', "did you mean partition"),
    ('[train]\ngpu = 4\n', "[train]: unknown keys ['gpu']"),
    ('[training]\ngpus = 4\n', "unknown sections ['training']"),
    ('[train]\ncluster = "slurm"\n', "only at the top level"),
    ('cluster = "kubernetes"\n', "cluster must be one of"),
    ('gpus = "four"\n', "gpus must be an integer"),
    ('partition = \n', "not valid TOML"),
])
def test_profile_errors_name_the_file_and_valid_keys(tmp_path, text, expected):
    profile = tmp_path / "bad.toml"
    profile.write_text(text)
    with pytest.raises(HarnessError) as info:
        load_profile(profile)
    assert expected in info.value.one_line()
    assert str(profile) in info.value.one_line()


def test_shipped_profiles_load():
    assert {"ci", "example"} <= set(list_profiles())
    for name in list_profiles():
        profile = load_profile(name)
        for kind in ("extract", "eval", "train"):
            assert isinstance(profile.resources(kind), Resources)
    with pytest.raises(HarnessError, match="did you mean example"):
        load_profile("exampel")


def test_executor_parameters_reach_submitit(tmp_path):
    resources = Resources(partition="gpu", gpus=2, cpus=4, mem_gb=8, time_min="1:30:00",
                          account="vpr", qos="high", constraint="a100", array_parallelism=3,
                          setup=("module load cuda",))
    params = executor_parameters(resources, name="iovpr-x", tasks_per_node=2)
    assert params == {
        "name": "iovpr-x", "timeout_min": 90, "nodes": 1, "tasks_per_node": 2, "cpus_per_task": 4,
        "gpus_per_node": 2, "slurm_array_parallelism": 3, "mem_gb": 8.0, "slurm_partition": "gpu",
        "slurm_account": "vpr", "slurm_qos": "high", "slurm_constraint": "a100",
        "slurm_setup": ["module load cuda"],
    }
    # submitit accepts every one of them (it raises on unknown parameters).
    executor = make_executor("local", tmp_path, resources.replace(gpus=0), name="iovpr-x")
    assert executor._executor.parameters["timeout_min"] == 90


@pytest.mark.slurm
def test_sbatch_script_carries_the_resources(tmp_path, slurm_cluster):
    resources = Resources(partition="debug", cpus=2, mem_gb=1.5, time_min=75, account="vpr",
                          qos="normal", constraint="fast", setup=("echo ready",))
    executor = make_executor("slurm", tmp_path, resources, name="iovpr-sbatch")
    text = executor._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("#SBATCH --partition=debug", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=1536M",
                 "#SBATCH --time=75", "#SBATCH --account=vpr", "#SBATCH --qos=normal",
                 "#SBATCH --constraint=fast", "echo ready"):
        assert line in text, line


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "12|COMPLETED\n13_0|RUNNING\n13_1|CANCELLED by 0\n",
            {"12": "COMPLETED", "13_0": "RUNNING", "13_1": "CANCELLED"},
        ),
        (
            "14_[2-4%1]|PENDING\n14_0|COMPLETED\n",
            {"14_2": "PENDING", "14_3": "PENDING", "14_4": "PENDING", "14_0": "COMPLETED"},
        ),
        (
            "15_[1,3-4]|PENDING\n15_3|RUNNING\n",
            {"15_1": "PENDING", "15_3": "RUNNING", "15_4": "PENDING"},
        ),
        ("\n16|TIMEOUT\nnot a line\n", {"16": "TIMEOUT"}),
    ],
)
def test_parse_sacct(text, expected):
    assert parse_sacct(text) == expected


@pytest.mark.parametrize("counts, shards, expected", [
    ([10, 10, 10, 10], 2, [[0, 1], [2, 3]]),
    ([10, 10, 10, 10], 4, [[0], [1], [2], [3]]),
    ([10, 10, 10, 10], 3, [[0, 1], [2], [3]]),
    ([100, 1, 1, 1], 2, [[0], [1, 2, 3]]),
    ([1, 1, 1, 100], 2, [[0, 1, 2], [3]]),
    ([5], 1, [[0]]),
])
def test_balanced_groups(counts, shards, expected):
    from slurm.evaluate import _balanced_groups

    assert _balanced_groups(counts, shards) == expected


@pytest.mark.parametrize("counts, shards, align, expected", [
    # cuts at the rows nearest to 10/3 and 20/3
    ([10], 3, 1, [[(0, 0, 3)], [(0, 3, 7)], [(0, 7, 10)]]),
    ([4, 6], 3, 1, [[(0, 0, 3)], [(0, 3, 4), (1, 0, 3)], [(1, 3, 6)]]),
    ([2, 2], 4, 1, [[(0, 0, 1)], [(0, 1, 2)], [(1, 0, 1)], [(1, 1, 2)]]),
    ([5, 0, 5], 5, 1, [[(0, 0, 2)], [(0, 2, 4)], [(0, 4, 5), (2, 0, 1)], [(2, 1, 3)],
                       [(2, 3, 5)]]),
    # blocks of 4 rows from each file's start: cuts only at 4, 8, 10, 14, 18
    ([10, 10], 3, 4, [[(0, 0, 8)], [(0, 8, 10), (1, 0, 4)], [(1, 4, 10)]]),
    ([10], 3, 4, [[(0, 0, 4)], [(0, 4, 8)], [(0, 8, 10)]]),
])
def test_row_ranges(counts, shards, align, expected):
    from slurm.evaluate import _row_ranges

    assert _row_ranges(counts, shards, align) == expected


def test_row_ranges_need_enough_block_boundaries():
    from slurm.evaluate import _row_ranges

    with pytest.raises(HarnessError, match="gives at most 3"):
        _row_ranges([10], 4, align=4)


def test_more_shards_than_database_rows_is_an_error(toy):
    from slurm.evaluate import plan_eval

    with pytest.raises(HarnessError, match="the database has only 400 rows"):
        plan_eval([toy.features], toy.split, shards=401)


def test_more_shards_than_files_cut_files_by_rows(toy):
    from slurm.evaluate import plan_eval

    plan = plan_eval([toy.features], toy.split, shards=6, block_rows=10)
    assert plan.database_rows == (70, 60, 70, 70, 60, 70)
    pieces = [piece for group in plan.groups for piece in group]
    # every row of every file exactly once, in file order
    for index in range(4):
        spans = [(start, stop) for path, start, stop in pieces if path == toy.shard_path(index)]
        assert spans[0][0] == 0 and spans[-1][1] == len(toy.shards[index])
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.timeout(LAUNCH_TIMEOUT_S)
def test_one_database_file_sharded_by_row_ranges_equals_harness_eval(cluster, toy, tmp_path):
    """A database in one file, evaluated by 3 tasks of row ranges: the merged record equals a
    single-process evaluation (scores, rankings, exact ties, sha256 of every file)."""
    from slurm.evaluate import launch_eval

    single_file = tmp_path / "one" / "features.h5"
    order = np.random.default_rng(1).permutation(toy.split.num_database)
    write_features(single_file, split="toy", method="toy",
                   query=(toy.query_names, toy.queries),
                   database=([toy.database_names[r] for r in order], toy.database[order]))
    config = EvalConfig(ngpu=0, block_rows=50)  # tasks cut at the search's blocks of 50 rows
    expected = evaluate_features([single_file], toy.split, config)
    launch = launch_eval([single_file], toy.split, config, shards=3,
                         cluster=cluster, resources=_resources(cluster),
                         log_dir=tmp_path / "logs", out=tmp_path / "sharded.json")
    _assert_same_evaluation(tmp_path / "sharded.json", expected)
    assert [t["params"]["database"] for t in launch.tasks] == [
        [[str(single_file.resolve()), 0, 150]], [[str(single_file.resolve()), 150, 250]],
        [[str(single_file.resolve()), 250, 400]]]
    assert launch.status().all_completed


def test_open_rejects_what_is_not_a_launch(tmp_path):
    with pytest.raises(HarnessError, match="not a launch directory"):
        Launch.open(tmp_path)
    (tmp_path / "launch.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(HarnessError, match="lacks"):
        Launch.open(tmp_path)


# --------------------------------------------------------------------------------------------
# Sharded evaluation


def test_debug_cluster_runs_in_process_and_reports_a_raising_task(toy, tmp_path):
    from slurm.evaluate import launch_eval

    expected = _single(toy)
    out = tmp_path / "debug.json"
    launch = launch_eval([toy.features], toy.split, EvalConfig(ngpu=0), shards=2, cluster="debug",
                         log_dir=tmp_path / "logs", out=out)
    _assert_same_evaluation(out, expected)
    assert launch.status().all_completed
    # A raising task under the debug executor: reported, no pdb (stdin is not a terminal).
    toy.write_shard(3, nan_row=True)
    with pytest.raises(HarnessError) as info:
        launch_eval([toy.features], toy.split, EvalConfig(ngpu=0), shards=2, cluster="debug",
                    log_dir=tmp_path / "logs", out=out)
    message = info.value.one_line()
    assert "FAILED" in message and "NaN" in message and "resubmit" in message


@pytest.mark.timeout(LAUNCH_TIMEOUT_S)
def test_sharded_eval_cli_equals_harness_eval(cluster, toy, tmp_path):
    from harness.cli import cli
    from harness.results import read_result

    runner = CliRunner()
    single = runner.invoke(
        cli,
        [
            "eval",
            "--features",
            str(toy.features),
            "--split",
            str(toy.split_file),
            "--ngpu",
            "0",
            "--json",
            str(tmp_path / "single.json"),
            "--no-progress",
        ],
    )
    assert single.exit_code == 0, single.output
    args = ["slurm", "eval", "--features", str(toy.features), "--split", str(toy.split_file),
            "--shards", "3", "--ngpu", "0", "--json", str(tmp_path / "sharded.json"),
            "--cluster", cluster, "--log-dir", str(tmp_path / "logs"), "--time", "10"]
    if cluster == "slurm":
        args += ["--profile", "ci"]
    sharded = runner.invoke(cli, args)
    assert sharded.exit_code == 0, sharded.output
    assert "recall@1" in sharded.output
    expected = read_result(tmp_path / "single.json")
    from harness.results import read_predictions

    expected_predictions = read_predictions(tmp_path / "single.json", expected)
    result = read_result(tmp_path / "sharded.json")
    assert result.scores == expected.scores
    assert result.counts == expected.counts and result.protocol == expected.protocol
    predictions = read_predictions(tmp_path / "sharded.json", result)
    assert np.array_equal(predictions.indices, expected_predictions.indices)
    assert np.array_equal(predictions.scores, expected_predictions.scores)
    assert [f.sha256 for f in result.features] == [f.sha256 for f in expected.features]
    # Three tasks ran, each on its own share of the database.
    launch_dir = next((tmp_path / "logs").iterdir())
    status = Launch.open(launch_dir).status()
    assert len(status.tasks) == 3 and status.all_completed
    assert sum(t.output["database_rows"] for t in status.tasks) == toy.split.num_database


@pytest.mark.timeout(LAUNCH_TIMEOUT_S)
def test_raising_task_is_reported_and_rerun_skips_finished_shards(cluster, toy, tmp_path):
    from harness.cli import cli
    from slurm.evaluate import launch_eval

    expected = _single(toy)
    toy.write_shard(2, nan_row=True)
    options = dict(shards=4, cluster=cluster, resources=_resources(cluster),
                   log_dir=tmp_path / "logs", out=tmp_path / "sharded.json")
    with pytest.raises(HarnessError) as info:
        launch_eval([toy.features], toy.split, EvalConfig(ngpu=0), **options)
    launch_dir = next((tmp_path / "logs").iterdir())
    message = info.value.one_line()
    status = Launch.open(launch_dir).status()
    failed = status.problems
    assert [t.index for t in failed] == [2] and failed[0].state == "FAILED"
    assert str(toy.shard_path(2)) in failed[0].error and "NaN" in failed[0].error
    log = Path(failed[0].stderr)
    assert str(log) in message and "--tasks 2" in message
    deadline = time.monotonic() + 30  # the job's log is flushed as the job ends
    while "ValidationError" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "ValidationError" in log.read_text()
    assert all(t.completed for t in status.tasks if t.index != 2)
    shown = CliRunner().invoke(cli, ["slurm", "status", str(launch_dir)])
    assert shown.exit_code == 0 and "FAILED" in shown.output and str(log) in shown.output
    as_json = json.loads(
        CliRunner().invoke(cli, ["slurm", "status", str(launch_dir), "--json"]).output
    )
    assert as_json["counts"] == {"COMPLETED": 3, "FAILED": 1}

    # Fixed file, same command: only shard 2 is searched again.
    toy.write_shard(2)
    launch = launch_eval([toy.features], toy.split, EvalConfig(ngpu=0), **options)
    assert launch.dir == launch_dir
    assert [len(t["attempts"]) for t in launch.tasks] == [1, 1, 2, 1]
    _assert_same_evaluation(tmp_path / "sharded.json", expected)


@pytest.mark.timeout(LAUNCH_TIMEOUT_S)
def test_cancelled_tasks_are_detected_and_resubmitted_alone(cluster, toy, tmp_path):
    from slurm.evaluate import prepare_eval, read_merged_result, result_path, submit_and_finish
    from slurm.status import cancel, resubmit

    expected = _single(toy)
    launch = prepare_eval([toy.features], toy.split, EvalConfig(ngpu=0), shards=4, cluster=cluster,
                          resources=_resources(cluster, array_parallelism=1),
                          log_dir=tmp_path / "logs", out=tmp_path / "sharded.json")
    if cluster == "slurm":
        # One task at a time (%1): the last one is still pending when it is cancelled; the
        # merge job depends on all four and is dropped when one of them is cancelled.
        submit_and_finish(launch, wait=False)
        cancelled = cancel(launch.dir, [3])
        assert cancelled == [3]
        status = _poll(launch, lambda s: s.done)
        assert status.task(3).state == "CANCELLED"
        assert status.finalizer is not None and not status.finalizer.completed
    else:
        launch.submit()  # one task at a time: task 0 starts, 1-3 wait in this process
        cancelled = launch.cancel([0, 3])
        assert 3 in cancelled
        status = launch.wait(timeout_s=LAUNCH_TIMEOUT_S)
        # Task 0 was running: asked to stop just as it finished, it may complete (its own
        # outcome then stands over the cancellation recorded for it).
        if status.task(0).completed:
            cancelled = [i for i in cancelled if i != 0]
    assert sorted(t.index for t in status.problems) == sorted(cancelled) and 3 in cancelled
    assert all(t.state == "CANCELLED" for t in status.problems)
    assert all(t.completed for t in status.tasks if t.index not in cancelled)
    report = status.format()
    assert "CANCELLED" in report and f"--tasks {','.join(map(str, sorted(cancelled)))}" in report
    assert not result_path(launch).exists()
    attempts_before = [len(t["attempts"]) for t in Launch.open(launch.dir).tasks]

    resubmitted = resubmit(launch.dir)
    if cluster == "slurm":
        _poll(resubmitted, lambda s: s.finalizer is not None and s.finalizer.completed and s.done)
    final = resubmitted.status()
    assert final.all_completed
    # Only the cancelled tasks ran again (a task cancelled while queued had not run at all).
    assert [len(t["attempts"]) for t in resubmitted.tasks] == [
        n + (i in cancelled) for i, n in enumerate(attempts_before)]
    _assert_same_evaluation(tmp_path / "sharded.json", expected)
    assert read_merged_result(resubmitted).counts.database == toy.split.num_database


def test_resubmit_refuses_completed_tasks_without_force(toy, tmp_path):
    from slurm.evaluate import launch_eval
    from slurm.status import resubmit

    launch = launch_eval([toy.features], toy.split, EvalConfig(ngpu=0), shards=2, cluster="debug",
                         log_dir=tmp_path / "logs")
    with pytest.raises(HarnessError, match="already completed; pass --force"):
        resubmit(launch.dir, [1])
    with pytest.raises(HarnessError, match="no task 7"):
        resubmit(launch.dir, [7])
    again = resubmit(launch.dir, [1], force=True)
    assert [len(t["attempts"]) for t in again.tasks] == [1, 2]
    assert again.status().all_completed


def test_cli_rejects_a_bad_profile_with_exit_2(toy, tmp_path):
    from harness.cli import cli

    profile = tmp_path / "p.toml"
    profile.write_text('[eval]\ncpu = 4\n')
    result = CliRunner().invoke(cli, ["slurm", "eval", "--features", str(toy.features), "--split",
                                      str(toy.split_file), "--profile", str(profile), "--log-dir",
                                      str(tmp_path / "logs")])
    assert result.exit_code == 2
    assert "unknown keys ['cpu']" in result.output and "valid keys are" in result.output
    missing = CliRunner().invoke(cli, ["slurm", "status", str(tmp_path)])
    assert missing.exit_code == 2 and "not a launch directory" in missing.output


# --------------------------------------------------------------------------------------------
# Sharded extraction (methods + the tiny synthetic city)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A seeded NetVLAD checkpoint on the CPU-scale backbone (nothing is downloaded)."""
    pytest.importorskip("torch")
    from methods.checkpoints import save_checkpoint
    from methods.netvlad import ModelConfig, build_model

    config = ModelConfig(backbone="small", num_clusters=4, image_height=48, image_width=64)
    model = build_model(config, seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt",
                           state_dict=model.state_dict(), model_config=config.to_dict())


@pytest.mark.timeout(LAUNCH_TIMEOUT_S)
def test_sharded_extraction_over_a_job_array(cluster, tiny_city, tiny_weights, tmp_path):
    from harness.evaluate import evaluate
    from harness.features import read_info
    from slurm.extract import launch_extract, output_files

    # A private copy of the database images: one goes missing, then comes back.
    city = tiny_city.split("outdoor-ams")
    images = tmp_path / "images"
    shutil.copytree(city.database_root, images)
    split = city.replace(database_root=str(images))
    missing = split.database_names[split.num_database - 1]  # in the last shard
    hidden = tmp_path / "hidden.jpg"
    shutil.move(images / missing, hidden)

    options = dict(
        shards=3,
        cluster=cluster,
        log_dir=tmp_path / "logs",
        resources=_resources(cluster),
        weights=str(tiny_weights),
        device="cpu",
        batch_size=8,
        workers=0,
    )
    out = tmp_path / "features"
    with pytest.raises(HarnessError) as info:
        launch_extract("netvlad", split, out, **options)
    launch_dir = next((tmp_path / "logs").iterdir())
    status = Launch.open(launch_dir).status()
    assert [t.index for t in status.problems] == [2] and status.task(2).state == "FAILED"
    assert missing in status.task(2).error
    assert status.task(2).stderr in info.value.one_line()
    assert Path(status.task(2).stderr).is_file()
    assert [p.name for p in sorted(out.glob("*.h5"))] == [
        "database-00000-of-00003.h5", "database-00001-of-00003.h5", "query.h5"]
    written = {p: p.stat().st_mtime_ns for p in out.glob("*.h5")}

    # The image is back; the same command extracts only the missing shard.
    shutil.move(hidden, images / missing)
    launch = launch_extract("netvlad", split, out, **options)
    assert launch.dir == launch_dir
    assert [len(t["attempts"]) for t in launch.tasks] == [1, 1, 2]
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in written.items())
    files = output_files(launch)
    assert [read_info(f).attrs["shard"] for f in files if f.name.startswith("database")] == [
        "0/3",
        "1/3",
        "2/3",
    ]
    result = evaluate(files, split, EvalConfig(ngpu=0))
    assert result.counts.database == split.num_database
    assert result.descriptor_dim == 4 * 128

    # Everything complete: a third run submits nothing.
    again = launch_extract("netvlad", split, out, **options)
    assert [len(t["attempts"]) for t in again.tasks] == [1, 1, 2]


# --------------------------------------------------------------------------------------------
# Training


def _tiny_training(tiny_city, epochs: int) -> dict:
    return dict(
        train_split="synth-ams30k-train", data_root=str(tiny_city.data_root), backbone="small",
        num_clusters=4, image_height=48, image_width=64, epochs=epochs, neg_pool=20, neg_num=2,
        cache_size=8, batch_size=8, workers=0, device="cpu", progress=False,
        max_queries_per_epoch=6, keep_epoch_checkpoints=False,
    )


@pytest.mark.timeout(LAUNCH_TIMEOUT_S)
def test_ddp_training_job_on_the_local_cluster(tiny_city, tmp_path, job_env):
    from methods.train.trainer import read_history
    from slurm.train import launch_train

    out = tmp_path / "run"
    launch = launch_train("netvlad", _tiny_training(tiny_city, epochs=2), out, cluster="local",
                          log_dir=tmp_path / "logs", resources=Resources(time_min=10), processes=2)
    status = launch.status()
    assert status.all_completed and status.tasks[0].output == {"best": str(out / "best.pt")}
    assert [(e["generation"], e["epoch"]) for e in read_history(out)] == [(0, 0), (0, 1)]
    log = Path(status.tasks[0].stderr).read_text()
    assert "rank 0 of 2" in log  # two DDP processes (gloo on the CPU)
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()


def _wait_for(predicate, what: str, launch: Launch, timeout_s: float = LAUNCH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}:\n{launch.status().format(all_tasks=True)}"
        time.sleep(0.2)


@pytest.mark.slurm
@pytest.mark.timeout(LAUNCH_TIMEOUT_S)
def test_training_requeued_on_preemption_and_resubmitted_after_cancel(tiny_city, tmp_path, job_env,
                                                                     slurm_cluster):
    from methods.train.trainer import read_history
    from slurm.status import resubmit
    from slurm.train import launch_train

    out = tmp_path / "run"
    epochs = 100  # ~0.15 s each: the job must not finish between the resume and the cancel
    launch = launch_train("netvlad", _tiny_training(tiny_city, epochs=epochs), out, cluster="slurm",
                          log_dir=tmp_path / "logs", resources=_resources("slurm"), processes=1,
                          wait=False)
    job_id = launch.tasks[0]["attempts"][0]["job_id"]

    def epochs_done() -> int:
        try:
            return len(read_history(out))
        except (OSError, ValueError):  # not written yet
            return 0

    # 1. Once an epoch is checkpointed, the signal SLURM sends before the time limit (or on
    #    preemption; submitit's --signal=USR2@90): the job checkpoints, requeues itself, exits.
    _wait_for(lambda: epochs_done() >= 1, "no epoch finished", launch)
    subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
    # SLURM holds a requeued job for two minutes (its BeginTime); release it now.
    _wait_for(lambda: "Reason=BeginTime" in subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout,
        "the job was not requeued", launch)
    requeued_at = epochs_done()
    # slurmd revokes the old run's credential and compares times in whole seconds: a restart
    # within the same second is killed ("Job credential revoked"). Release it 2 s later.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    assert launch.status().tasks[0].active  # requeued, not failed

    # 2. The requeued run resumes; cancelled from outside (scancel) after one more epoch, it
    #    is reported CANCELLED (from sacct: it could not record anything itself).
    _wait_for(lambda: epochs_done() > requeued_at, "the requeued job did not train", launch)
    subprocess.run(["scancel", job_id], check=True)
    status = _poll(launch, lambda s: s.done)
    task = status.tasks[0]
    assert (
        task.state == "CANCELLED"
        and task.stderr
        and task.error == "the scheduler reports CANCELLED"
    )
    assert "--tasks 0" in status.format()
    cancelled_at = epochs_done()
    assert cancelled_at < epochs

    # 3. Resubmitted alone, it resumes from the last checkpoint and finishes.
    launch = resubmit(launch.dir)
    status = _poll(launch, lambda s: s.done)
    assert status.all_completed, status.format(all_tasks=True)
    assert [e["epoch"] for e in read_history(out)] == list(range(epochs))  # each epoch once
    first = Path(launch.tasks[0]["attempts"][0]["stderr"]).read_text()
    assert "Caught signal SIGUSR2" in first and f"Requeued job {job_id}" in first
    assert first.count("resuming") == 1
    second = Path(status.tasks[0].stderr).read_text()
    assert "resuming" in second and status.tasks[0].job_id != job_id
    assert len(Launch.open(launch.dir).tasks[0]["attempts"]) == 2


# --------------------------------------------------------------------------------------------
# The cluster script


@pytest.mark.slurm
def test_cluster_script_start_is_idempotent(slurm_cluster):
    script = REPO_ROOT / ".ci" / "slurm-cluster.sh"
    env = dict(os.environ, IOVPR_SLURM_DIR=str(Path(slurm_cluster).parent.parent))

    def daemons() -> dict[str, str]:
        result = subprocess.run([str(script), "status"], env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = [line.split() for line in result.stdout.splitlines() if "running (pid" in line]
        return {words[0]: words[3].rstrip(")") for words in lines}

    before = daemons()
    assert set(before) == {"munged", "mariadb", "slurmdbd", "slurmctld", "slurmd"}
    again = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert "up in" in again.stderr and "logs:" in again.stderr
    assert daemons() == before  # nothing restarted
