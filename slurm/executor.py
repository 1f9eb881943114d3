"""Validated cluster resources, TOML profiles, and the submitit executor built from them.

Resources come, lowest precedence first, from the :class:`Resources` defaults, a profile's
top-level keys, the profile's section for the job kind (``[extract]``, ``[eval]``,
``[train]``), and command-line options. A profile is a TOML file, given by path or by the name
of a file in ``slurm/profiles/``::

    cluster = "slurm"                 # slurm | local | debug
    log_dir = "/shared/$USER/iovpr-slurm"
    partition = "gpu"
    account = "my-project"
    time = "4:00:00"                  # or time_min = 240

    [train]
    gpus = 4
    cpus = 8
    mem_gb = 64
    time = "2-00:00:00"

Unknown keys (at the top level or in a section) are rejected with the valid ones listed, so a
misspelt ``partiton`` never silently submits to the default partition.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from harness.errors import HarnessError

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as _toml

logger = logging.getLogger(__name__)

CLUSTERS = ("slurm", "local", "debug")
JOB_KINDS = ("extract", "eval", "train")
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
LOG_DIR_ENV = "HARNESS_SLURM_LOGS"
#: Keys a profile may hold besides the resources.
_PROFILE_KEYS = ("cluster", "log_dir")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time_min(value: Any, where: str = "time") -> int:
    """Minutes from an int or a SLURM time string (``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``)."""
    if isinstance(value, bool):
        raise HarnessError(f"{where} must be minutes or a SLURM time string, got {value!r}")
    if isinstance(value, int):
        minutes = value
    elif isinstance(value, str):
        match = _TIME.match(value.strip())
        if not match:
            raise HarnessError(
                f"{where}: cannot read {value!r} as a time (use minutes, HH:MM:SS or D-HH:MM:SS)"
            )
        days, first, second, third = match.groups()
        if days is None and second is None:  # "90": minutes
            minutes = int(first)
        elif days is None and third is None:  # "MM:SS"
            minutes = int(first) + (1 if int(second) else 0)
        else:
            hours = int(first) + 24 * int(days or 0)
            minutes = hours * 60 + int(second or 0) + (1 if int(third or 0) else 0)
    else:
        raise HarnessError(f"{where} must be minutes or a SLURM time string, got {value!r}")
    if minutes < 1:
        raise HarnessError(f"{where} must be at least one minute, got {value!r}")
    return minutes


@dataclass(frozen=True)
class Resources:
    """What one task of a job asks the scheduler for.

    Attributes:
        partition: SLURM partition (``None``: the cluster's default).
        gpus: GPUs per node (training starts one process per GPU).
        cpus: CPUs per task.
        mem_gb: memory per node in GB (``None``: the partition's default).
        time_min: time limit in minutes; a TOML profile may give ``time = "HH:MM:SS"``.
        account: ``--account``.
        qos: ``--qos``.
        constraint: ``--constraint`` (node features, e.g. ``"a100|h100"``).
        array_parallelism: job-array tasks running at once (``%N``; also caps local runs).
        setup: shell lines run before each task (``module load ...``, ``source venv``).
    """

    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 32
    setup: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("partition", "account", "qos", "constraint"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise HarnessError(f"{name} must be a non-empty string, got {value!r}")
        for name, minimum in (("gpus", 0), ("cpus", 1), ("array_parallelism", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise HarnessError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.mem_gb is not None:
            if isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float)) \
                    or not self.mem_gb > 0:
                raise HarnessError(f"mem_gb must be a positive number, got {self.mem_gb!r}")
            object.__setattr__(self, "mem_gb", float(self.mem_gb))
        object.__setattr__(self, "time_min", parse_time_min(self.time_min, "time_min"))
        setup = (self.setup,) if isinstance(self.setup, str) else self.setup
        if not all(isinstance(line, str) for line in setup):
            raise HarnessError(f"setup must be a list of shell lines, got {self.setup!r}")
        object.__setattr__(self, "setup", tuple(setup))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "resources") -> "Resources":
        """Build from a mapping (``time`` is accepted for ``time_min``); unknown keys raise."""
        return cls(**_resource_values(data, where))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["setup"] = list(self.setup)
        return data

    def replace(self, **changes) -> "Resources":
        return Resources(**{**self.to_dict(), **_resource_values(changes, "resources")})


def _resource_values(data: Mapping[str, Any], where: str) -> dict:
    valid = Resources.field_names()
    values = dict(data)
    if "time" in values:
        if "time_min" in values:
            raise HarnessError(f"{where}: give either time or time_min, not both")
        values["time_min"] = values.pop("time")
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise HarnessError(
            f"{where}: unknown keys {unknown}{_close(unknown, valid)}; valid keys are "
            f"{', '.join(valid + ['time'])}"
        )
    return values


def _close(unknown: list[str], valid: list[str]) -> str:
    hints = [m for key in unknown for m in difflib.get_close_matches(key, valid, n=1)]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


@dataclass(frozen=True)
class Profile:
    """A parsed profile file: defaults for every job kind plus per-kind sections."""

    path: Path | None = None
    cluster: str | None = None
    log_dir: str | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sections: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def resources(self, kind: str, overrides: Mapping[str, Any] | None = None) -> Resources:
        """Resources for a job of ``kind``: defaults < profile < ``[kind]`` < ``overrides``."""
        if kind not in JOB_KINDS:
            raise HarnessError(f"unknown job kind {kind!r}; valid: {', '.join(JOB_KINDS)}")
        merged: dict[str, Any] = {}
        for layer in (self.defaults, self.sections.get(kind, {}), overrides or {}):
            merged.update({("time_min" if k == "time" else k): v
                           for k, v in layer.items() if v is not None})
        where = f"{self.path}" if self.path else "resources"
        return Resources.from_dict(merged, where)


def list_profiles() -> list[str]:
    """Names of the profiles shipped in ``slurm/profiles/``."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def profile_path(name_or_path: str | os.PathLike) -> Path:
    """A profile file: an existing path, or the name of a shipped profile."""
    text = os.fspath(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate
    if os.sep in text or text.endswith(".toml"):
        raise HarnessError("profile file not found", candidate)
    shipped = PROFILE_DIR / f"{text}.toml"
    if shipped.is_file():
        return shipped
    names = list_profiles()
    close = difflib.get_close_matches(text, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise HarnessError(f"unknown profile {text!r}{hint} (shipped: {', '.join(names) or 'none'})")


def load_profile(name_or_path: str | os.PathLike | None) -> Profile:
    """Parse and validate a profile (``None``: an empty profile)."""
    if name_or_path is None:
        return Profile()
    path = profile_path(name_or_path)
    try:
        data = _toml.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read profile ({exc})", path) from None
    except _toml.TOMLDecodeError as exc:
        raise HarnessError(f"not valid TOML ({exc})", path) from None
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    unknown_sections = sorted(set(sections) - set(JOB_KINDS))
    if unknown_sections:
        raise HarnessError(
            f"unknown sections {unknown_sections}{_close(unknown_sections, list(JOB_KINDS))}; "
            f"valid sections are {', '.join(JOB_KINDS)}",
            path,
        )
    cluster = top.pop("cluster", None)
    if cluster is not None and cluster not in CLUSTERS:
        raise HarnessError(f"cluster must be one of {', '.join(CLUSTERS)}, got {cluster!r}", path)
    log_dir = top.pop("log_dir", None)
    if log_dir is not None and not isinstance(log_dir, str):
        raise HarnessError(f"log_dir must be a string, got {log_dir!r}", path)
    valid = Resources.field_names() + ["time"]
    for where, values in [("top level", top)] + [(f"[{k}]", v) for k, v in sections.items()]:
        unknown = sorted(set(values) - set(valid))
        if unknown:
            extra = " (cluster and log_dir only at the top level)" if where != "top level" else ""
            raise HarnessError(
                f"{where}: unknown keys {unknown}{_close(unknown, valid + list(_PROFILE_KEYS))}; "
                f"valid keys are {', '.join(valid)}, and at the top level "
                f"{', '.join(_PROFILE_KEYS)}{extra}",
                path,
            )
    profile = Profile(path=path, cluster=cluster, log_dir=log_dir, defaults=top, sections=sections)
    for kind in JOB_KINDS:  # fail now, not when the third job kind is first used
        try:
            profile.resources(kind)
        except HarnessError as exc:
            raise HarnessError(exc.message, path) from None
    return profile


def resolve_cluster(cluster: str | None, profile: Profile | None = None) -> str:
    """``cluster`` as given, else the profile's, else slurm where ``sbatch`` exists, else local."""
    chosen = cluster or (profile.cluster if profile else None)
    if chosen is None:
        chosen = "slurm" if shutil.which("sbatch") else "local"
        logger.info("no --cluster given: using %s", chosen)
    if chosen not in CLUSTERS:
        close = difflib.get_close_matches(str(chosen), CLUSTERS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise HarnessError(f"unknown cluster {chosen!r}{hint} (valid: {', '.join(CLUSTERS)})")
    if chosen == "slurm" and not shutil.which("sbatch"):
        raise HarnessError("--cluster slurm needs the SLURM client commands (sbatch not on PATH)")
    return chosen


def resolve_log_dir(log_dir: str | os.PathLike | None, profile: Profile | None = None) -> Path:
    """Where launches keep their records and logs; it must be visible from every node.

    ``log_dir`` as given, else the profile's, else ``$HARNESS_SLURM_LOGS``, else
    ``<harness data root>/slurm``.
    """
    chosen = log_dir or (profile.log_dir if profile else None) or os.environ.get(LOG_DIR_ENV)
    if chosen is None:
        from harness.splits import default_data_root

        return default_data_root() / "slurm"
    return Path(os.path.expandvars(os.fspath(chosen))).expanduser()


def executor_parameters(resources: Resources, *, name: str, tasks_per_node: int = 1) -> dict:
    """submitit ``update_parameters`` keywords for ``resources`` (cluster-prefixed where needed)."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": resources.time_min,
        "nodes": 1,
        "tasks_per_node": tasks_per_node,
        "cpus_per_task": resources.cpus,
        "gpus_per_node": resources.gpus,
        "slurm_array_parallelism": resources.array_parallelism,
    }
    if resources.mem_gb is not None:
        params["mem_gb"] = resources.mem_gb
    for field_name, key in (
        ("partition", "slurm_partition"),
        ("account", "slurm_account"),
        ("qos", "slurm_qos"),
        ("constraint", "slurm_constraint"),
    ):
        value = getattr(resources, field_name)
        if value is not None:
            params[key] = value
    if resources.setup:
        params["slurm_setup"] = list(resources.setup)
    return params


def make_executor(
    cluster: str,
    folder: str | os.PathLike,
    resources: Resources,
    *,
    name: str,
    tasks_per_node: int = 1,
    extra_slurm: Mapping[str, Any] | None = None,
):
    """A submitit executor for ``cluster`` with ``resources`` set through ``update_parameters``.

    ``folder`` holds submitit's pickles and the task logs (``<folder>/<job id>/``); it must be
    on a filesystem shared with the compute nodes. ``extra_slurm`` passes
    ``slurm_additional_parameters`` (e.g. a dependency) on SLURM and is ignored elsewhere.
    """
    import submitit

    if cluster not in CLUSTERS:
        raise HarnessError(f"unknown cluster {cluster!r} (valid: {', '.join(CLUSTERS)})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    params = executor_parameters(resources, name=name, tasks_per_node=tasks_per_node)
    if cluster == "slurm" and extra_slurm:
        params["slurm_additional_parameters"] = dict(extra_slurm)
    executor.update_parameters(**params)
    return executor
