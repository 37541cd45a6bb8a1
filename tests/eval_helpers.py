"""Small hand-made task files in the `m3e data` contract format, for the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_POS = ["这家酒店很干净，服务也好", "房间宽敞明亮，下次还来", "书的内容很精彩，值得一读", "电脑速度快，屏幕清楚",
        "早餐丰富，位置方便", "物流很快，包装完好", "性价比高，非常满意", "前台热情，入住顺利",
        "音质不错，做工精细", "故事感人，推荐给朋友"]
_NEG = ["房间很脏，空调也坏了", "服务态度差，再也不来", "书印刷模糊，错字很多", "电脑发热严重，经常死机",
        "早餐难吃，价格太贵", "物流太慢，包装破损", "质量很差，后悔购买", "隔音不好，一晚没睡",
        "屏幕有坏点，客服不理", "内容空洞，浪费时间"]
_QA = [
    ("汽车保险包括哪些内容？", "汽车保险通常包括交强险、车损险和第三者责任险。"),
    ("人寿保险多少钱一年？", "人寿保险的保费取决于年龄、健康状况和保额。"),
    ("医疗保险可以报销门诊吗？", "部分医疗保险可以报销门诊费用，需要查看合同条款。"),
    ("房屋保险赔偿火灾吗？", "房屋保险一般承保火灾造成的房屋损失。"),
    ("如何取消我的保险？", "您可以联系保险公司客服，提交书面申请取消保单。"),
    ("年金保险是什么？", "年金保险是在约定期间定期给付保险金的保险。"),
    ("残疾保险怎么理赔？", "残疾保险理赔需要提供医疗证明和伤残鉴定报告。"),
    ("旅游保险包括航班延误吗？", "很多旅游保险包含航班延误补偿。"),
]
_HSK = [("我喜欢喝茶。", "I like drinking tea."), ("今天天气很好。", "The weather is nice today."),
        ("他在北京工作。", "He works in Beijing."), ("这本书很有意思。", "This book is very interesting."),
        ("我们明天去上海。", "We are going to Shanghai tomorrow."), ("你会说中文吗？", "Can you speak Chinese?"),
        ("我的猫很可爱。", "My cat is very cute."), ("请问，火车站在哪里？", "Excuse me, where is the train station?")]


def _write(data: Path, spec: dict[str, Any], profile: str = "smoke") -> Path:
    path = data / "tasks" / spec["name"] / f"{profile}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return path


def classification_spec(name: str = "ToySentimentClassification") -> dict[str, Any]:
    train = [{"text": t, "label": "pos"} for t in _POS[:6]] + [{"text": t, "label": "neg"} for t in _NEG[:6]]
    test = [{"text": t, "label": "pos"} for t in _POS[6:]] + [{"text": t, "label": "neg"} for t in _NEG[6:]]
    return {"name": name, "type": "Classification", "languages": ["cmn-Hans"], "main_score": "accuracy",
            "description": "review -> pos/neg", "sources": ["A"], "license": "MIT", "train": train,
            "test": test}


def retrieval_spec(name: str = "ToyInsuranceRetrieval") -> dict[str, Any]:
    queries = [{"id": f"q{i}", "text": q} for i, (q, _) in enumerate(_QA)]
    corpus = [{"id": f"d{i}", "text": a} for i, (_, a) in enumerate(_QA)]
    corpus += [{"id": "d-extra", "text": "宠物保险覆盖猫狗的医疗费用。"}]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(_QA))}
    qrels["q0"]["d-extra"] = 1  # one query with two relevant documents
    return {"name": name, "type": "Retrieval", "languages": ["cmn-Hans"], "main_score": "ndcg_at_10",
            "description": "question -> answer", "sources": ["C"], "license": "GPL-3.0",
            "queries": queries, "corpus": corpus, "qrels": qrels}


def bitext_spec(name: str = "ToyHSKBitextMining") -> dict[str, Any]:
    return {"name": name, "type": "BitextMining", "languages": ["cmn-Hans", "eng-Latn"], "main_score": "f1",
            "description": "zh <-> en", "sources": ["B"], "license": "CC-BY-SA-4.0",
            "pairs": [{"sentence1": z, "sentence2": e} for z, e in _HSK]}


def pair_spec(name: str = "ToyParaphrasePairClassification") -> dict[str, Any]:
    pairs = []
    for i, (q, _a) in enumerate(_QA):
        pairs.append({"sentence1": q, "sentence2": q.replace("？", "呢？"), "label": 1})
        pairs.append({"sentence1": q, "sentence2": _QA[(i + 3) % len(_QA)][0], "label": 0})
    return {"name": name, "type": "PairClassification", "languages": ["cmn-Hans"], "main_score": "max_ap",
            "description": "paraphrase vs not", "sources": ["C"], "license": "GPL-3.0", "pairs": pairs}


def write_toy_tasks(data: Path, profile: str = "smoke") -> Path:
    """Four tasks, one per type, under ``data/tasks``; returns ``data``."""
    for spec in (classification_spec(), retrieval_spec(), bitext_spec(), pair_spec()):
        _write(data, spec, profile)
    return data


def write_task(data: Path, spec: dict[str, Any], profile: str = "smoke") -> Path:
    return _write(data, spec, profile)


def smoke_data(tmp: Path) -> Path:
    """The real smoke profile (``m3e data``'s ensure_built); hand-made tasks if it cannot be built here."""
    import warnings

    from m3e.errors import M3EError

    try:
        from m3e.data.build import ensure_built

        data = Path(ensure_built("smoke"))
        if any((data / "tasks").glob("*/smoke.json")):
            return data
    except (ImportError, M3EError) as exc:
        warnings.warn(f"smoke data could not be built ({exc}); using hand-made tasks", stacklevel=2)
    return write_toy_tasks(tmp)
