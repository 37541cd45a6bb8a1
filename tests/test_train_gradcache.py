"""GradCache gives the full-batch gradients; bf16 autocast and gradient checkpointing run on CPU."""

from __future__ import annotations

import pytest
import torch

import m3e
from m3e.training.gradcache import forward_backward
from m3e.training.losses import CoSENTLoss, SigmoidLoss, SoftmaxLoss

Q = ["今天天气很好", "北京是城市", "保险理赔", "the cat sits", "向量检索", "喝茶吃饭", "汽车价格", "hello world"]
P = ["天气晴", "北京上海", "医疗保险", "a cat on the mat", "检索模型", "咖啡", "房屋价格", "good book"]
N = ["股票", "广州", "汽车", "stock market fell", "句子表示", "读书", "电脑", "bad weather"]


pytestmark = pytest.mark.usefixtures("single_thread")


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("loss", "columns", "labels"),
    [
        (SoftmaxLoss(0.05), [Q, P, N], None),
        (SoftmaxLoss(0.05, symmetric=True), [Q, P], None),
        (SigmoidLoss(0.05), [Q, P], None),
        (CoSENTLoss(0.05), [Q, P], [0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4]),
    ],
)
def test_gradcache_equals_full_batch(tiny_st_model_dir, loss, columns, labels):
    import numpy as np

    model = m3e.load(str(tiny_st_model_dir))
    model.eval()  # no dropout: both paths must see the same network
    lab = np.array(labels, dtype=np.float32) if labels is not None else None
    full_loss = forward_backward(model, columns, lab, loss)
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    cached_loss = forward_backward(model, columns, lab, loss, mini_batch=3)
    cached = _grads(model)
    assert cached_loss == pytest.approx(full_loss, rel=1e-5)
    assert full.keys() == cached.keys() and len(full) > 10
    for name, g in full.items():
        torch.testing.assert_close(cached[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_gradcache_replays_dropout(tiny_st_model_dir):
    """In train mode, the re-forward replays each chunk's random state: the loss path is consistent."""
    model = m3e.load(str(tiny_st_model_dir))
    model.train()
    torch.manual_seed(0)
    a = forward_backward(model, [Q, P], None, SoftmaxLoss(), mini_batch=4)
    ga = _grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    b = forward_backward(model, [Q, P], None, SoftmaxLoss(), mini_batch=4)
    assert a == b
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, ga[name])


def test_bf16_and_gradient_checkpointing(tiny_st_model_dir):
    from m3e.training.strategies import enable_gradient_checkpointing

    model = m3e.load(str(tiny_st_model_dir))
    model.eval()
    ref = forward_backward(model, [Q, P], None, SoftmaxLoss())
    model.zero_grad(set_to_none=True)
    enable_gradient_checkpointing(model)
    model.train()
    model.eval()
    ckpt_loss = forward_backward(model, [Q, P], None, SoftmaxLoss())
    assert ckpt_loss == pytest.approx(ref, rel=1e-5)
    model.zero_grad(set_to_none=True)
    bf16 = forward_backward(model, [Q, P], None, SoftmaxLoss(), bf16=True)
    assert bf16 == pytest.approx(ref, rel=0.05)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad and p.grad is not None)


def test_bf16_batches_are_padded_to_a_few_widths_without_changing_embeddings(tiny_st_model_dir):
    from m3e.training.gradcache import WIDTH_BUCKETS, pad_to_bucket

    model = m3e.load(str(tiny_st_model_dir))
    texts = ["a short one", "一个稍微长一点的句子，有更多的词"]
    features = model.tokenize_batch(texts)
    padded = pad_to_bucket(features, model.pad_token_id)
    assert padded["input_ids"].shape[1] in WIDTH_BUCKETS and padded["input_ids"].shape[1] >= features["input_ids"].shape[1]
    assert int(padded["attention_mask"].sum()) == int(features["attention_mask"].sum())  # only masked padding
    with torch.no_grad():
        plain, wide = model(features), model(padded)
    assert torch.allclose(plain, wide, atol=1e-5)
