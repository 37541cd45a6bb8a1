"""A reranker's losses on the logits of query groups.

Every loss takes ``logits`` [groups, candidates] (the positive first in each group), the candidates' ``labels``
and, for distillation, a teacher's scores of the same candidates, and returns the SUM over its units (groups, or
pairs for the pointwise loss): the caller divides by the batch's units, so a batch split into chunks whose
gradients accumulate gives the full batch's loss and gradient exactly (groups are independent of each other).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from m3e.errors import M3EError
from m3e.training.config import RERANK_LOSSES

# A reranker teacher's logits are on the student's scale; an embedder's cosines are compressed into [-1, 1]
# and are spread as its contrastive training spread them (scale 20).
TEACHER_TEMPERATURE = {"reranker": 1.0, "embedder": 0.05}


class RerankLoss:
    name = "loss"
    unit = "group"  # what the returned sum is over: "group" or "pair"

    def __call__(self, logits: Tensor, labels: Tensor, teacher: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def units(self, groups: int, candidates: int) -> int:
        """How many units the sum of ``groups`` groups of ``candidates`` each is over."""
        return groups if self.unit == "group" else groups * candidates

    def describe(self) -> str:
        return self.name


class ListwiseLoss(RerankLoss):
    """FlagEmbedding's reranker loss: cross-entropy of the softmax over each group, the positive the target."""

    name = "listwise"

    def __call__(self, logits: Tensor, labels: Tensor, teacher: Tensor | None = None) -> Tensor:
        if logits.shape[1] < 2:
            raise M3EError("the listwise loss needs groups of a positive and negatives")
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits.float(), target, reduction="sum")

    def describe(self) -> str:
        return "listwise softmax cross-entropy over each group (the positive is the target)"


class PointwiseLoss(RerankLoss):
    """Binary cross-entropy of each pair's logit against its label (1 positive, 0 negative, or a score)."""

    name = "bce"
    unit = "pair"

    def __call__(self, logits: Tensor, labels: Tensor, teacher: Tensor | None = None) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")

    def describe(self) -> str:
        return "pointwise binary cross-entropy on relevance labels"


@dataclass
class TeacherKLLoss(RerankLoss):
    """Distillation: KL(teacher || student) between the softmax of the teacher's scores divided by
    ``temperature`` and the softmax of the student's logits, over each group."""

    temperature: float = 1.0
    teacher_kind: str = "reranker"
    name = "distill"

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise M3EError("the teacher temperature must be > 0")

    def __call__(self, logits: Tensor, labels: Tensor, teacher: Tensor | None = None) -> Tensor:
        if teacher is None:
            raise M3EError("distillation needs the teacher's scores")
        target = F.log_softmax(teacher.float().to(logits.device) / self.temperature, dim=-1)
        student = F.log_softmax(logits.float(), dim=-1)
        return F.kl_div(student, target, reduction="sum", log_target=True)

    def describe(self) -> str:
        score = "cosine" if self.teacher_kind == "embedder" else "logit"
        return (f"KL distillation from the teacher's {score} over each group "
                f"(teacher temperature {self.temperature:g})")


def make_rerank_loss(
    record_type: str, name: str = "softmax", *, teacher_kind: str | None = None,
    teacher_temperature: float | None = None,
) -> RerankLoss:
    """The loss of one dataset's record type: groups take ``name`` (softmax: listwise, bce: pointwise), or
    distillation with a teacher; scored pairs always train pointwise on their scores."""
    if name not in RERANK_LOSSES:
        raise M3EError(f"a reranker's loss must be one of {', '.join(RERANK_LOSSES)}, not {name!r}")
    if record_type == "scored":
        return PointwiseLoss()
    if record_type != "triplet":
        raise M3EError(f"no reranker loss for {record_type} records")
    if teacher_kind is not None:
        if name != "softmax":
            raise M3EError("distillation from a teacher is listwise (KL over each group); leave --loss at softmax")
        given = teacher_temperature
        temperature = given if given is not None else TEACHER_TEMPERATURE[teacher_kind]
        return TeacherKLLoss(temperature, teacher_kind)
    return ListwiseLoss() if name == "softmax" else PointwiseLoss()
