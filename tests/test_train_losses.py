"""Losses against independent computations (numpy loops) and against sentence-transformers end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3e.errors import M3EError
from m3e.training.losses import (
    CoSENTLoss,
    CosineDistillLoss,
    MSEDistillLoss,
    SigmoidLoss,
    SoftmaxLoss,
    make_loss,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _emb(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def _lse(x: np.ndarray) -> float:
    m = x.max()
    return float(m + np.log(np.exp(x - m).sum()))


def ref_softmax(q, docs, tau, symmetric=False):
    q, docs = q.double().numpy(), [d.double().numpy() for d in docs]
    cand = np.concatenate(docs)
    s = _cos(q, cand) / tau
    n = q.shape[0]
    fwd = np.mean([-(s[i, i] - _lse(s[i])) for i in range(n)])
    if not symmetric:
        return fwd
    s2 = _cos(docs[0], q) / tau  # each positive against all queries
    bwd = np.mean([-(s2[i, i] - _lse(s2[i])) for i in range(n)])
    return (fwd + bwd) / 2


def test_softmax_pairs_and_temperature():
    q, p = _emb(6, seed=1), _emb(6, seed=2)
    for tau in (0.05, 0.1, 1.0):
        ours = SoftmaxLoss(tau)([q, p]).item()
        assert ours == pytest.approx(ref_softmax(q, [p], tau), rel=1e-5)


def test_softmax_triplets_every_passage_is_a_candidate():
    q, p, n1, n2 = (_emb(5, seed=s) for s in (3, 4, 5, 6))
    ours = SoftmaxLoss(0.05)([q, p, n1, n2]).item()
    assert ours == pytest.approx(ref_softmax(q, [p, n1, n2], 0.05), rel=1e-5)


def test_softmax_symmetric():
    q, p = _emb(5, seed=7), _emb(5, seed=8)
    ours = SoftmaxLoss(0.05, symmetric=True)([q, p]).item()
    assert ours == pytest.approx(ref_softmax(q, [p], 0.05, symmetric=True), rel=1e-5)
    assert ours != pytest.approx(SoftmaxLoss(0.05)([q, p]).item(), rel=1e-3)


def test_sigmoid_matches_uniem_formula():
    q, p, n = _emb(4, seed=9), _emb(4, seed=10), _emb(4, seed=11)
    tau = 0.05
    # pairs: -mean over i != j of log sigmoid((s_ii - s_ij) / tau)
    s = _cos(q.double().numpy(), p.double().numpy())
    terms = [-math.log(1 / (1 + math.exp(-(s[i, i] - s[i, j]) / tau))) for i in range(4) for j in range(4) if i != j]
    assert SigmoidLoss(tau)([q, p]).item() == pytest.approx(np.mean(terms), rel=1e-5)
    # triplets: negatives join the candidates
    s = _cos(q.double().numpy(), np.concatenate([p.double().numpy(), n.double().numpy()]))
    terms = [-math.log(1 / (1 + math.exp(-(s[i, i] - s[i, j]) / tau))) for i in range(4) for j in range(8) if j != i]
    assert SigmoidLoss(tau)([q, p, n]).item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_cosent_matches_double_loop():
    a, b = _emb(7, seed=12), _emb(7, seed=13)
    y = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.2, 1.0, 0.9])
    tau = 0.05
    s = np.diag(_cos(a.double().numpy(), b.double().numpy())) / tau
    acc = [0.0] + [s[j] - s[i] for i in range(7) for j in range(7) if y[i] > y[j]]
    ref = _lse(np.array(acc))
    assert CoSENTLoss(tau)([a, b], y).item() == pytest.approx(ref, rel=1e-5)


def test_mse_distill():
    s, t = _emb(5, seed=14), _emb(5, seed=15)
    assert MSEDistillLoss()([s], t).item() == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-6)


def test_cosine_distill_matches_numpy():
    s, t = _emb(6, seed=16), _emb(6, seed=17)
    cos = _cos(s.double().numpy(), t.double().numpy())
    closeness = float(np.mean(1 - np.diag(cos)))
    assert CosineDistillLoss()([s], t).item() == pytest.approx(closeness, rel=1e-5)
    tau = 0.1
    ce = np.mean([-(cos[i, i] / tau - _lse(cos[i] / tau)) for i in range(6)])
    assert CosineDistillLoss(0.5, tau)([s], t).item() == pytest.approx(closeness + 0.5 * ce, rel=1e-5)
    # the student that equals its teacher (up to scale) has no closeness loss, only the in-batch term left
    assert CosineDistillLoss()([t * 3.0], t).item() == pytest.approx(0.0, abs=1e-6)


def test_make_loss_dispatch():
    assert isinstance(make_loss("pair"), SoftmaxLoss)
    assert isinstance(make_loss("triplet", "sigmoid"), SigmoidLoss)
    assert isinstance(make_loss("scored"), CoSENTLoss)
    assert isinstance(make_loss("distill"), MSEDistillLoss)
    cosine = make_loss("distill", temperature=0.02, distill="cosine", distill_contrast=0.3)
    assert isinstance(cosine, CosineDistillLoss) and (cosine.contrast, cosine.temperature) == (0.3, 0.02)
    with pytest.raises(M3EError, match="distill loss"):
        make_loss("distill", distill="kl")
    with pytest.raises(M3EError, match="cosine distillation loss only"):
        make_loss("distill", distill_contrast=0.5)
    assert make_loss("pair").temperature == 0.05


def test_same_values_as_sentence_transformers_models(tiny_st_model_dir):
    """Our model forward + loss == sentence-transformers' model + MultipleNegativesRankingLoss / CoSENTLoss."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss as STCoSENT
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    import m3e
    from m3e.training.gradcache import embed

    st = SentenceTransformer(str(tiny_st_model_dir), device="cpu").eval()
    ours = m3e.load(str(tiny_st_model_dir)).eval()
    q = ["今天天气很好", "北京是城市", "保险理赔", "the cat sits"]
    p = ["天气晴", "北京上海", "医疗保险", "a cat on the mat"]
    n = ["股票", "喝茶", "汽车价格", "stock market fell"]
    scores = torch.tensor([0.9, 0.1, 0.5, 0.7])

    def feats(texts):
        return st.tokenize(texts) if hasattr(st, "tokenize") else st.preprocess(texts)

    with torch.no_grad():
        ref = MultipleNegativesRankingLoss(st)([feats(q), feats(p), feats(n)], None).item()
        got = SoftmaxLoss(0.05)([embed(ours, q), embed(ours, p), embed(ours, n)]).item()
        assert got == pytest.approx(ref, rel=1e-4)
        ref = STCoSENT(st)([feats(q), feats(p)], scores).item()
        got = CoSENTLoss(0.05)([embed(ours, q), embed(ours, p)], scores).item()
        assert got == pytest.approx(ref, rel=1e-4)


def test_matryoshka_averages_the_base_loss_over_the_cut_vectors() -> None:
    from m3e.training.losses import MatryoshkaLoss, SoftmaxLoss, make_loss

    torch.manual_seed(3)
    q, p = torch.randn(6, 32), torch.randn(6, 32)
    loss = make_loss("pair", matryoshka_dims=(8, 16, 64))  # 64 > dim: left out
    assert isinstance(loss, MatryoshkaLoss) and loss.dims == (64, 16, 8)
    base = SoftmaxLoss()
    cut = [base([F.normalize(q[:, :d], dim=-1), F.normalize(p[:, :d], dim=-1)]) for d in (16, 8)]
    expected = (base([q, p]) + sum(cut)) / 3
    assert torch.allclose(loss([q, p]), expected, atol=1e-6)


def test_matryoshka_distillation_follows_the_teachers_in_batch_similarities() -> None:
    from m3e.training.losses import make_loss

    torch.manual_seed(4)
    teacher = torch.randn(8, 32)
    loss = make_loss("distill", distill="cosine", matryoshka_dims=(16,))
    same = F.normalize(teacher, dim=-1)
    assert float(loss._relational(same, teacher)) == pytest.approx(0.0, abs=1e-6)  # same relations: nothing to learn
    student = torch.randn(8, 32, requires_grad=True)
    value = loss([student], teacher)
    value.backward()
    assert float(loss._relational(F.normalize(student[:, :16], dim=-1), teacher)) > 0.01
    assert student.grad is not None and float(student.grad[:, :16].abs().sum()) > 0


def test_matryoshka_dims_are_parsed_and_checked() -> None:
    from m3e.training.losses import matryoshka_dims

    assert matryoshka_dims("256, 128,64") == (256, 128, 64) == matryoshka_dims([256, 128, 64])
    assert matryoshka_dims(None) == ()
    for bad in ("256,x", "0"):
        with pytest.raises(M3EError, match="matryoshka dims"):
            matryoshka_dims(bad)
