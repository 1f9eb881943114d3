"""What one training step computes: the forward pass DDP wraps, and the loss of a batch.

NetVLAD trains on global descriptors with a triplet or SARE tuple loss; SFRS trains on the
nine sub-region descriptors, mining the hardest sub-region of each negative after the first
generation and adding the soft-label loss taught by the previous generation's model.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.netvlad import NetVLADModel, normalize_vlad
from methods.sfrs import region_similarities, region_vlads
from methods.train import losses
from methods.train.config import TrainConfig


class TrainingForward(nn.Module):
    """What DDP wraps: images -> global NetVLAD ``(N, L)`` or SFRS regions ``(N, 9, L)``."""

    def __init__(self, model: NetVLADModel, regions: bool):
        super().__init__()
        self.model = model
        self.regions = regions

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.local_features(images)
        if self.regions:
            return region_vlads(self.model.net_vlad, features)
        return normalize_vlad(self.model.net_vlad(features))


def tuple_temperature(config: TrainConfig) -> float:
    """The SARE temperature: SFRS's first one, otherwise the Euclidean default."""
    if config.mode == "sfrs":
        return float(config.temperatures[0])
    return losses.EUCLIDEAN_TEMPERATURE


def batch_loss(
    config: TrainConfig,
    outputs: torch.Tensor,
    generation: int,
    teacher_outputs: torch.Tensor | None,
):
    """``(hard, soft)`` losses of one batch of tuple outputs ``(B, S, ...)``.

    NetVLAD: the tuple loss of the global descriptors. SFRS: generation 0 as NetVLAD on the
    whole-image region; later generations take each negative's hardest sub-region and add the
    soft-label loss against the teacher's region similarities (zero without a teacher).
    """
    c = config
    m = c.neg_num
    if c.mode == "netvlad":
        hard = losses.tuple_loss(
            c.loss,
            outputs[:, 0],
            outputs[:, 1],
            outputs[:, 2 : 2 + m],
            margin=c.margin,
            temperature=tuple_temperature(c),
        )
        return hard, torch.zeros((), device=outputs.device)
    anchors = outputs[:, 0]  # (B, 9, L)
    if generation == 0:
        hard = losses.tuple_loss(
            c.loss,
            anchors[:, 0],
            outputs[:, 1, 0],
            outputs[:, 2 : 2 + m, 0],
            margin=c.margin,
            temperature=tuple_temperature(c),
        )
    else:
        # The hardest sub-region of each negative stands in for it (SFRS).
        scores = region_similarities(anchors, outputs[:, 2 : 2 + m])[:, :, 0, :]  # (B, M, 9)
        pick = scores.detach().argmax(dim=2)
        negatives = torch.gather(
            outputs[:, 2 : 2 + m],
            2,
            pick[:, :, None, None].expand(-1, -1, 1, outputs.shape[-1]),
        ).squeeze(2)
        hard = losses.tuple_loss(
            c.loss,
            anchors[:, 0],
            outputs[:, 1, 0],
            negatives,
            margin=c.margin,
            temperature=tuple_temperature(c),
        )
    if teacher_outputs is None:
        return hard, torch.zeros((), device=outputs.device)
    student = region_similarities(anchors, outputs[:, 2 + m :])[:, :, 0, :].flatten(1)
    target = region_similarities(teacher_outputs[:, 0], teacher_outputs[:, 1:])[
        :, :, 0, :
    ].flatten(1)
    soft = losses.soft_label_loss(
        student,
        target,
        student_temperature=float(c.temperatures[0]),
        teacher_temperature=float(c.temperatures[generation]),
    )
    return hard, soft
