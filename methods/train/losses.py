"""Tuple losses of the lineage: triplet, SARE (joint / individual), SFRS soft labels.

Shapes: ``anchors`` ``(B, L)``, ``positives`` ``(B, L)``, ``negatives`` ``(B, M, L)``.

OpenIBL's NetVLAD trainer writes SARE on negative squared Euclidean distances; its SFRS
trainer on dot products divided by a temperature. For L2-normalised descriptors
``-|a - b|^2 = 2 a.b - 2`` and softmax ignores the constant, so the Euclidean form is the dot
form at temperature 0.5; both are :func:`sare_loss` with that temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EUCLIDEAN_TEMPERATURE = 0.5


def _check(anchors, positives, negatives):
    assert (
        anchors.ndim == 2 and positives.shape == anchors.shape
    ), f"{anchors.shape} vs {positives.shape}"
    assert (
        negatives.ndim == 3
        and negatives.shape[0] == anchors.shape[0]
        and negatives.shape[2] == anchors.shape[1]
    ), f"negatives {tuple(negatives.shape)} do not match anchors {tuple(anchors.shape)}"


def triplet_loss(anchors, positives, negatives, margin: float) -> torch.Tensor:
    """Mean hinge ``max(0, |a-p| - |a-n| + sqrt(margin))`` over every (anchor, negative) pair.

    ``margin`` is the lineage's option value (on squared distances); its square root is the
    hinge margin, as OpenIBL passes ``margin ** 0.5``.
    """
    _check(anchors, positives, negatives)
    count = negatives.shape[1]
    expand = lambda t: t.unsqueeze(1).expand_as(negatives).reshape(-1, t.shape[-1])  # noqa: E731
    return (
        F.triplet_margin_loss(
            expand(anchors),
            expand(positives),
            negatives.reshape(-1, negatives.shape[-1]),
            margin=margin**0.5,
            p=2,
            reduction="mean",
        )
        if count
        else anchors.sum() * 0
    )


def sare_loss(anchors, positives, negatives, *, joint: bool, temperature: float) -> torch.Tensor:
    """SARE: -log softmax of the positive's similarity against the negatives' (dot / temperature).

    ``joint``: one softmax over the positive and all negatives; else one two-way softmax per
    negative (``sare_ind``), averaged.
    """
    _check(anchors, positives, negatives)
    positive = (anchors * positives).sum(dim=1, keepdim=True)  # (B, 1)
    negative = torch.einsum("bl,bml->bm", anchors, negatives)  # (B, M)
    if joint:
        logits = torch.cat((positive, negative), dim=1) / temperature
        return -F.log_softmax(logits, dim=1)[:, 0].mean()
    logits = torch.stack((positive.expand_as(negative), negative), dim=2) / temperature  # (B, M, 2)
    return -F.log_softmax(logits, dim=2)[..., 0].mean()


def tuple_loss(
    kind: str, anchors, positives, negatives, *, margin: float, temperature: float
) -> torch.Tensor:
    """Dispatch on the loss name (``triplet``, ``sare_ind``, ``sare_joint``)."""
    if kind == "triplet":
        return triplet_loss(anchors, positives, negatives, margin)
    if kind in ("sare_ind", "sare_joint"):
        return sare_loss(
            anchors, positives, negatives, joint=kind == "sare_joint", temperature=temperature
        )
    raise ValueError(f"unknown loss {kind!r}; valid: triplet, sare_ind, sare_joint")


def soft_label_loss(
    student_scores, teacher_scores, *, student_temperature: float, teacher_temperature: float
) -> torch.Tensor:
    """SFRS's self-supervision: cross-entropy between the teacher's and student's region softmax.

    Scores ``(B, R)``: similarities of each anchor to the sub-regions of its difficult
    positives. Returns ``mean_b sum_r -softmax(teacher/Tt) log softmax(student/Ts)``.
    """
    assert student_scores.shape == teacher_scores.shape and student_scores.ndim == 2
    target = F.softmax(teacher_scores.detach() / teacher_temperature, dim=1)
    return -(target * F.log_softmax(student_scores / student_temperature, dim=1)).sum(dim=1).mean()
