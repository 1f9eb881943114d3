"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) for chosen pairs, in bounded memory.

SFRS ranks the positives of each query by the re-ranked distance to pick difficult ones.
OpenIBL builds dense ``(Q+N) x (Q+N)`` matrices for that; the distance only needs, for each
item, its ``k1 + 1`` nearest neighbours (all items: queries then database) and its largest
distance, which a blockwise pass computes. With them, for a pair ``(a, b)``:

* ``d(i, j) = |f_i - f_j|^4 / max_j |f_i - f_j|^4`` (the lineage squares the squared
  distance, then normalises each row by its maximum);
* ``R*(i)``: the k-reciprocal neighbours of ``i``, expanded by those of its members whose own
  (k1/2)-reciprocal sets overlap it by more than 2/3;
* ``V_i[j] = exp(-d(i, j)) / sum`` over ``j`` in ``R*(i)``;
* ``jaccard(a, b) = 1 - m / (2 - m)``, ``m = sum_j min(V_a[j], V_b[j])``;
* ``final = (1 - lambda) jaccard + lambda d(a, b)`` (``k2 = 1``: no query expansion, as SFRS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class NeighbourGraph:
    """``neighbours[i]``: the ``k1 + 1`` nearest items of ``i`` (itself first), and row maxima."""

    features: torch.Tensor
    neighbours: np.ndarray
    max_distance: np.ndarray
    k1: int


def _distance(similarity: torch.Tensor) -> torch.Tensor:
    return (2.0 - 2.0 * similarity).clamp_min(0) ** 2


def build_graph(features: torch.Tensor, k1: int = 20, block_rows: int = 1024) -> NeighbourGraph:
    """Nearest neighbours and row maxima of all items, ``block_rows`` rows at a time."""
    count = features.shape[0]
    k = min(k1 + 1, count)
    neighbours = np.empty((count, k), dtype=np.int64)
    max_distance = np.empty(count, dtype=np.float64)
    with torch.no_grad():
        for start in range(0, count, block_rows):
            block = features[start : start + block_rows] @ features.T
            top = torch.topk(block, k, dim=1).indices
            neighbours[start : start + block.shape[0]] = top.cpu().numpy()
            max_distance[start : start + block.shape[0]] = (
                _distance(block.min(dim=1).values).double().cpu().numpy()
            )
    max_distance[max_distance <= 0] = 1.0
    return NeighbourGraph(
        features=features, neighbours=neighbours, max_distance=max_distance, k1=k1
    )


def _reciprocal(graph: NeighbourGraph, item: int, k: int) -> np.ndarray:
    forward = graph.neighbours[item, : k + 1]
    backward = graph.neighbours[forward, : k + 1]
    return forward[(backward == item).any(axis=1)]


def _expanded_set(graph: NeighbourGraph, item: int) -> np.ndarray:
    members = _reciprocal(graph, item, graph.k1)
    expanded = [members]
    half = int(np.around(graph.k1 / 2.0))
    for candidate in members:
        candidate_set = _reciprocal(graph, int(candidate), half)
        if len(np.intersect1d(candidate_set, members)) > 2.0 / 3.0 * len(candidate_set):
            expanded.append(candidate_set)
    return np.unique(np.concatenate(expanded))


class _Encoder:
    def __init__(self, graph: NeighbourGraph):
        self.graph = graph
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def normalised_distance(self, item: int, others: np.ndarray) -> np.ndarray:
        features = self.graph.features
        with torch.no_grad():
            similarity = features[torch.as_tensor(others, device=features.device)] @ features[item]
        return _distance(similarity).double().cpu().numpy() / self.graph.max_distance[item]

    def vector(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        if item not in self.cache:
            members = _expanded_set(self.graph, item)
            weights = np.exp(-self.normalised_distance(item, members))
            self.cache[item] = (members, weights / weights.sum())
        return self.cache[item]


def reranked_distances(
    graph: NeighbourGraph, first: np.ndarray, second: np.ndarray, lambda_value: float = 0.1
) -> np.ndarray:
    """Re-ranked distance of each pair ``(first[p], second[p])`` of items, float64 ``(P,)``."""
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    assert first.shape == second.shape and first.ndim == 1
    encoder = _Encoder(graph)
    result = np.empty(first.shape[0], dtype=np.float64)
    for p, (a, b) in enumerate(zip(first.tolist(), second.tolist())):
        members_a, weights_a = encoder.vector(a)
        members_b, weights_b = encoder.vector(b)
        common, index_a, index_b = np.intersect1d(
            members_a, members_b, assume_unique=True, return_indices=True
        )
        overlap = np.minimum(weights_a[index_a], weights_b[index_b]).sum() if common.size else 0.0
        jaccard = 1.0 - overlap / (2.0 - overlap)
        original = encoder.normalised_distance(a, np.array([b]))[0]
        result[p] = jaccard * (1.0 - lambda_value) + original * lambda_value
    return result
