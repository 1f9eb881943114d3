"""Evaluation configuration: a frozen dataclass that rejects unknown keys.

Protocol fields left ``None`` take the split's values (radius, recall Ns, spatial NMS, the
no-positive policy), so a plain ``EvalConfig()`` evaluates a split exactly as it is defined.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from harness.errors import HarnessError
from harness.results import Protocol
from harness.stats import BootstrapSettings

CPU_BACKENDS = ("auto", "numpy", "faiss", "bf16")
#: OpenIBL's spatial NMS looks at the first max(N) x 12 predictions.
NMS_POOL_FACTOR = 12


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    Attributes:
        recall_ns: Recall@N cut-offs (default: the split's).
        radius_m: positive radius in metres (default: the split's).
        spatial_nms: keep one prediction per database place (default: the split's).
        no_positive: ``"miss"`` or ``"exclude"`` queries without positives (default: split's).
        map_k: depth of mAP@K (default: max of ``recall_ns``).
        ngpu: -1 every visible GPU, 0 CPU only, n at most n GPUs (CPU fallback).
        cpu_backend: ``auto``, ``numpy``, ``faiss`` or ``bf16`` (exact top-K through a
            bfloat16 shortlist re-scored in float32; needs torch; 2x faster on CPUs with AMX
            at Outdoor-Ams scale, where ``auto`` takes it: ``harness.search.bf16_shortlist_pays``).
        block_rows: database rows per streamed block (default: ~128 MB of float32).
        query_batch_rows: queries per GEMM (default: bounded score buffer).
        prefetch: read the next block in a background thread.
        validate: check the feature files against the split first (``harness.validate``).
        checksums: record the sha256 of every feature file (hashed in a thread from the bytes
            the search streams, so the database is read once; ~1.8 GB/s of one core).
        reuse_digests: take the sha256 remembered from an earlier hashing of a file whose
            identity (inode, size, modification and change times) is unchanged
            (:mod:`harness.digests`); fresh digests are remembered either way.
        progress: show progress bars.
        bootstrap_resamples: query resamples of the bootstrap intervals (0: no intervals).
        bootstrap_confidence: confidence of the intervals (0.95).
        bootstrap_seed: seed of the resampling (the same seed gives the same intervals).
        query_conditions: CSV ``name,condition`` of the queries' conditions (default: from
            the query names where they carry one; see :mod:`harness.breakdowns`).
        window_masks: folder of window masks ``<query name>.png`` (default: the true masks
            beside the query folder, ``query_masks/``, where the dataset has them).
        window_masks_kind: ``true`` or ``predicted`` (what the record says the masks are).
        breakdowns: compute the per-condition, per-window-fraction and per-radius scores.
    """

    recall_ns: tuple[int, ...] | None = None
    radius_m: float | None = None
    spatial_nms: bool | None = None
    no_positive: str | None = None
    map_k: int | None = None
    ngpu: int = -1
    cpu_backend: str = "auto"
    block_rows: int | None = None
    query_batch_rows: int | None = None
    prefetch: bool = True
    validate: bool = True
    checksums: bool = True
    reuse_digests: bool = True
    progress: bool = False
    bootstrap_resamples: int = 1000
    bootstrap_confidence: float = 0.95
    bootstrap_seed: int = 0
    query_conditions: str | None = None
    window_masks: str | None = None
    window_masks_kind: str = "predicted"
    breakdowns: bool = True

    def __post_init__(self):
        if self.recall_ns is not None:
            ns = tuple(sorted({int(n) for n in self.recall_ns}))
            if not ns or ns[0] < 1:
                raise HarnessError(f"recall_ns must be positive integers, got {self.recall_ns}")
            object.__setattr__(self, "recall_ns", ns)
        if self.radius_m is not None and not float(self.radius_m) > 0:
            raise HarnessError(f"radius_m must be > 0, got {self.radius_m}")
        if self.no_positive is not None and self.no_positive not in ("miss", "exclude"):
            raise HarnessError(f"no_positive must be 'miss' or 'exclude', got {self.no_positive!r}")
        if self.map_k is not None and int(self.map_k) < 1:
            raise HarnessError(f"map_k must be >= 1, got {self.map_k}")
        if self.cpu_backend not in CPU_BACKENDS:
            raise HarnessError(
                f"cpu_backend must be one of {CPU_BACKENDS}, got {self.cpu_backend!r}"
            )
        if int(self.ngpu) < -1:
            raise HarnessError(f"ngpu must be -1 (all), 0 (CPU) or a GPU count, got {self.ngpu}")
        if int(self.bootstrap_resamples) < 0 or int(self.bootstrap_seed) < 0:
            raise HarnessError("bootstrap_resamples and bootstrap_seed must be >= 0")
        if not 0.0 < float(self.bootstrap_confidence) < 1.0:
            raise HarnessError(
                f"bootstrap_confidence must be in (0, 1), got {self.bootstrap_confidence}")
        if self.window_masks_kind not in ("true", "predicted"):
            raise HarnessError("window_masks_kind must be 'true' or 'predicted', "
                               f"got {self.window_masks_kind!r}")
        for name in ("block_rows", "query_batch_rows"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise HarnessError(f"{name} must be >= 1, got {value}")

    @classmethod
    def from_dict(cls, data: Mapping) -> "EvalConfig":
        """Build from a mapping; unknown keys raise a :class:`HarnessError` listing the valid
        ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise HarnessError(f"unknown EvalConfig keys {unknown}; valid keys are {valid}")
        values = dict(data)
        if values.get("recall_ns") is not None:
            values["recall_ns"] = tuple(values["recall_ns"])
        return cls(**values)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if data["recall_ns"] is not None:
            data["recall_ns"] = list(data["recall_ns"])
        return data

    def replace(self, **changes) -> "EvalConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise HarnessError(f"unknown EvalConfig keys {unknown}")
        return dataclasses.replace(self, **changes)

    def bootstrap_settings(self):
        """The :class:`harness.stats.BootstrapSettings` of this config (None: no intervals)."""
        if not self.bootstrap_resamples:
            return None
        return BootstrapSettings(resamples=int(self.bootstrap_resamples),
                                 confidence=float(self.bootstrap_confidence),
                                 seed=int(self.bootstrap_seed))

    def protocol(self, split) -> Protocol:
        """This config's protocol for ``split`` (the split fills every ``None``)."""
        recall_ns = self.recall_ns if self.recall_ns is not None else tuple(split.recall_ns)
        # A depth beyond the database (or the split's own Ns) retrieves nothing more but sizes
        # the top-K buffers (queries x K): refused before anything is allocated.
        bound = max([getattr(split, "num_database", 0), *split.recall_ns])
        for option, value in (("--map-k", self.map_k),
                              ("--recall-ns", None if self.recall_ns is None else
                               max(self.recall_ns))):
            if value is not None and int(value) > bound:
                raise HarnessError(
                    f"{option} {value} is larger than the {split.num_database} database images "
                    f"of split {split.name} (at most {bound})")
        spatial_nms = split.spatial_nms if self.spatial_nms is None else bool(self.spatial_nms)
        map_k = int(self.map_k) if self.map_k is not None else max(recall_ns)
        depth = max(max(recall_ns), map_k)
        nms_pool = depth * NMS_POOL_FACTOR if spatial_nms else 0
        return Protocol(
            radius_m=float(split.radius_m if self.radius_m is None else self.radius_m),
            recall_ns=tuple(recall_ns),
            map_k=map_k,
            k=nms_pool if spatial_nms else depth,
            spatial_nms=spatial_nms,
            nms_pool=nms_pool,
            no_positive=split.no_positive if self.no_positive is None else self.no_positive,
        )

