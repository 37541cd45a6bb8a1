"""Losses on embeddings: every loss takes the embedding columns of one batch and returns a scalar.

Columns: pair/triplet ``[queries, positives, negatives_1, ..., negatives_k]``; scored ``[sentences1, sentences2]``
with scores as labels; distill ``[students]`` with teacher vectors as labels. The temperature ``tau`` is a
parameter everywhere (default 0.05, i.e. scale 20).

In-batch softmax (also with hard negatives and the symmetric variant), CoSENT and MSE distillation delegate to
sentence-transformers' ``MultipleNegativesRankingLoss``, ``CoSENTLoss`` and ``MSELoss`` through their
``compute_loss_from_embeddings``; the in-batch sigmoid loss and the cosine distillation loss (with an in-batch
term against the teacher's vectors) are ours (sentence-transformers has neither). Working on
embeddings (not on a model) is what lets one GradCache and one cross-device gather serve every loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from m3e.errors import M3EError
from m3e.training.config import CONTRASTIVE_LOSSES, DISTILL_LOSSES

DEFAULT_TEMPERATURE = 0.05


class EmbeddingLoss:
    name = "loss"

    def __call__(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


@dataclass
class SoftmaxLoss(EmbeddingLoss):
    """In-batch softmax (InfoNCE): cross-entropy over cos(q_i, every passage in the batch) / tau, target p_i.

    With negative columns every positive and negative in the batch is a candidate (triplet with hard
    negatives). ``symmetric`` averages the query->passage and positive->query directions.
    """

    temperature: float = DEFAULT_TEMPERATURE
    symmetric: bool = False
    name = "softmax"

    def __post_init__(self) -> None:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        if self.temperature <= 0:
            raise M3EError("temperature must be > 0")
        directions: tuple[Any, ...] = ("query_to_doc", "doc_to_query") if self.symmetric else ("query_to_doc",)
        self._st = MultipleNegativesRankingLoss(
            None,  # type: ignore[arg-type]  # only compute_loss_from_embeddings is used
            scale=1.0 / self.temperature,
            directions=directions,
            partition_mode="per_direction" if self.symmetric else "joint",
        )

    def __call__(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        if len(embeddings) < 2:
            raise M3EError("the softmax loss needs queries and positives")
        # sentence-transformers declares labels as a Tensor; this loss never reads them
        return self._st.compute_loss_from_embeddings([e.float() for e in embeddings], labels)  # type: ignore[arg-type]

    def describe(self) -> str:
        sym = ", symmetric" if self.symmetric else ""
        return f"in-batch softmax (tau={self.temperature:g}{sym})"


@dataclass
class SigmoidLoss(EmbeddingLoss):
    """uniem's pair sigmoid loss: -mean over (i, j != pos(i)) of log sigmoid((s_i,pos(i) - s_ij) / tau).

    Candidates j are every passage in the batch (positives and negatives), so it also serves triplets.
    """

    temperature: float = DEFAULT_TEMPERATURE
    name = "sigmoid"

    def __call__(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        if len(embeddings) < 2:
            raise M3EError("the sigmoid loss needs queries and positives")
        q = F.normalize(embeddings[0].float(), dim=-1)
        docs = F.normalize(torch.cat([e.float() for e in embeddings[1:]], dim=0), dim=-1)
        n = q.shape[0]
        sim = q @ docs.T / self.temperature  # [n, n * (1 + k)]
        rows = torch.arange(n, device=q.device)
        pos = sim[rows, rows].unsqueeze(1)
        mask = torch.ones_like(sim, dtype=torch.bool)
        mask[rows, rows] = False
        if mask.sum() == 0:  # a batch of one pair has no negatives
            return sim.sum() * 0.0
        return F.softplus(sim - pos)[mask].mean()  # softplus(x) = -log sigmoid(-x)

    def describe(self) -> str:
        return f"in-batch sigmoid (tau={self.temperature:g})"


@dataclass
class CoSENTLoss(EmbeddingLoss):
    """CoSENT for scored pairs: log(1 + sum over y_i > y_j of exp((cos_j - cos_i) / tau))."""

    temperature: float = DEFAULT_TEMPERATURE
    name = "cosent"

    def __post_init__(self) -> None:
        from sentence_transformers.sentence_transformer.losses import CoSENTLoss as _STCoSENT

        # no model: only compute_loss_from_embeddings is used
        self._st = _STCoSENT(None, scale=1.0 / self.temperature)  # type: ignore[arg-type]

    def __call__(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise M3EError("CoSENT needs scores")
        return self._st.compute_loss_from_embeddings([e.float() for e in embeddings[:2]], labels.float())

    def describe(self) -> str:
        return f"CoSENT (tau={self.temperature:g})"


@dataclass
class MSEDistillLoss(EmbeddingLoss):
    """Mean squared error between the student's embeddings and cached teacher vectors."""

    name = "mse"

    def __post_init__(self) -> None:
        from sentence_transformers.sentence_transformer.losses import MSELoss

        self._st = MSELoss(None)  # type: ignore[arg-type]  # no model: only the embeddings' loss is used

    def __call__(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise M3EError("distillation needs teacher vectors")
        student = embeddings[0].float()
        if student.shape != labels.shape:
            raise M3EError(f"student dim {student.shape[-1]} != teacher dim {labels.shape[-1]}")
        return self._st.compute_loss_from_embeddings([student], [labels.float().to(student.device)])

    def describe(self) -> str:
        return "MSE distillation to teacher vectors"


@dataclass
class CosineDistillLoss(EmbeddingLoss):
    """Distillation that keeps the teacher's geometry: mean(1 - cos(s_i, t_i)) plus ``contrast`` times an
    in-batch cross-entropy over cos(s_i, t_j) / tau with target i.

    MSE on unit vectors is 2 (1 - cos) / dim, so its gradients are tiny at 384+ dimensions; the cosine term is the
    same objective at a usable scale. The contrastive term asks each student vector to be nearer its own teacher
    vector than to the batch's other teacher vectors, which is what retrieval and classification scores measure
    (two unrelated teacher vectors of an E5 model already have cosine ~0.8, so closeness alone is a weak signal).
    """

    contrast: float = 0.0
    temperature: float = DEFAULT_TEMPERATURE
    name = "cosine-distill"

    def __call__(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise M3EError("distillation needs teacher vectors")
        student = F.normalize(embeddings[0].float(), dim=-1)
        if student.shape != labels.shape:
            raise M3EError(f"student dim {student.shape[-1]} != teacher dim {labels.shape[-1]}")
        teacher = F.normalize(labels.float().to(student.device), dim=-1)
        loss = (1.0 - (student * teacher).sum(-1)).mean()
        if self.contrast > 0 and student.shape[0] > 1:
            logits = student @ teacher.T / self.temperature
            target = torch.arange(student.shape[0], device=student.device)
            loss = loss + self.contrast * F.cross_entropy(logits, target)
        return loss

    def describe(self) -> str:
        extra = f" + {self.contrast:g} x in-batch softmax (tau={self.temperature:g})" if self.contrast > 0 else ""
        return f"cosine distillation to teacher vectors{extra}"



@dataclass
class MatryoshkaLoss(EmbeddingLoss):
    """``base`` on the full vectors plus, for each of ``dims``, a term on the vectors cut to their first d
    dimensions and renormalised, averaged: the prefixes become usable embeddings of their own
    (``encode(dimensions=d)``, the server's ``dimensions``). Pair and triplet losses are applied to the cut
    vectors as they are (sentence-transformers' MatryoshkaLoss); for distillation the cut student cannot be
    compared with the teacher's vector (the teacher's prefixes are not trained to mean anything), so the cut
    term asks the cut student's in-batch similarities to follow the teacher's full ones (a softmax over each
    row, KL divergence), the relations that retrieval at that size needs.
    """

    base: EmbeddingLoss
    dims: tuple[int, ...]
    temperature: float = DEFAULT_TEMPERATURE
    name = "matryoshka"

    def __call__(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        full = embeddings[0].shape[-1]
        dims = [d for d in self.dims if d < full]
        loss = self.base(embeddings, labels)
        for d in dims:
            cut = [F.normalize(e[..., :d].float(), dim=-1) for e in embeddings]
            if isinstance(self.base, (CosineDistillLoss, MSEDistillLoss)):
                loss = loss + self._relational(cut[0], labels)
            else:
                loss = loss + self.base(cut, labels)
        return loss / (1 + len(dims))

    def _relational(self, student: Tensor, teacher: Tensor | None) -> Tensor:
        if teacher is None:
            raise M3EError("distillation needs teacher vectors")
        n = student.shape[0]
        if n < 2:
            return student.sum() * 0.0
        t = F.normalize(teacher.float().to(student.device), dim=-1)
        off = ~torch.eye(n, dtype=torch.bool, device=student.device)  # self-similarity says nothing
        s_logits = (student @ student.T / self.temperature)[off].view(n, n - 1)
        t_logits = (t @ t.T / self.temperature)[off].view(n, n - 1)
        return F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True,
                        reduction="batchmean")

    def describe(self) -> str:
        return f"{self.base.describe()}, Matryoshka over the first {', '.join(map(str, self.dims))} dimensions"


def matryoshka_dims(spec: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...]:
    """``"256,128,64"`` or ``[256, 128, 64]`` -> (256, 128, 64); None -> ()."""
    if spec is None or spec == "":
        return ()
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        dims = tuple(int(str(p).strip()) for p in parts if str(p).strip())
    except ValueError:
        raise M3EError(f"matryoshka dims must be integers like 256,128,64, not {spec!r}") from None
    if any(d <= 0 for d in dims):
        raise M3EError(f"matryoshka dims must be positive, not {spec!r}")
    return dims


def make_loss(
    record_type: str, name: str = "softmax", temperature: float = DEFAULT_TEMPERATURE, symmetric: bool = False,
    *, distill: str = "mse", distill_contrast: float = 0.0, matryoshka_dims: tuple[int, ...] = (),
) -> EmbeddingLoss:
    """The loss for one dataset's record type: contrastive ``name`` for pairs/triplets, CoSENT, and ``distill``
    (mse | cosine, with ``distill_contrast`` x in-batch softmax) for teacher vectors; with ``matryoshka_dims``,
    wrapped so that those prefixes of the vectors are trained too."""
    base = _base_loss(record_type, name, temperature, symmetric, distill=distill, distill_contrast=distill_contrast)
    if matryoshka_dims and record_type in ("pair", "triplet", "distill"):
        return MatryoshkaLoss(base, tuple(sorted(set(matryoshka_dims), reverse=True)), temperature)
    return base


def _base_loss(
    record_type: str, name: str, temperature: float, symmetric: bool, *, distill: str, distill_contrast: float
) -> EmbeddingLoss:
    if record_type in ("pair", "triplet"):
        if name == "softmax":
            return SoftmaxLoss(temperature, symmetric)
        if name == "sigmoid":
            if symmetric:
                raise M3EError("--symmetric applies to the softmax loss only")
            return SigmoidLoss(temperature)
        raise M3EError(f"loss must be one of {', '.join(CONTRASTIVE_LOSSES)}, not {name!r}")
    if record_type == "scored":
        return CoSENTLoss(temperature)
    if record_type == "distill":
        if distill == "mse":
            if distill_contrast:
                raise M3EError("distill_contrast applies to the cosine distillation loss only")
            return MSEDistillLoss()
        if distill == "cosine":
            return CosineDistillLoss(distill_contrast, temperature)
        raise M3EError(f"distill loss must be one of {', '.join(DISTILL_LOSSES)}, not {distill!r}")
    raise M3EError(f"no loss for record type {record_type!r}")
