"""Validation during training: Recall@N of the model's descriptors on the validation split,
ranked on the device (exact inner-product top-K over the whole database).
"""

from __future__ import annotations

import numpy as np
import torch

from harness.ground_truth import positives_within_radius

RECALL_NS = (1, 5, 10)


def validation_recalls(queries: torch.Tensor, database: torch.Tensor, split) -> dict:
    """``{"recall@N": value}`` for :data:`RECALL_NS`; queries without a positive count per
    the split's ``no_positive`` policy (excluded, or as misses)."""
    positives = positives_within_radius(split.database_utm, split.query_utm, split.radius_m)
    k = min(max(RECALL_NS), database.shape[0])
    top = []
    with torch.no_grad():
        for start in range(0, queries.shape[0], 1024):
            top.append(
                torch.topk(queries[start : start + 1024] @ database.T, k, dim=1)
                .indices.cpu()
                .numpy()
            )
    hits = positives.is_positive(np.concatenate(top))
    counted = (
        positives.has_positive
        if split.no_positive == "exclude"
        else np.ones(len(hits), dtype=bool)
    )
    found = np.cumsum(hits, axis=1) > 0
    denominator = max(1, int(counted.sum()))
    return {
        f"recall@{n}": float(found[counted, min(n, k) - 1].sum() / denominator)
        for n in RECALL_NS
    }
