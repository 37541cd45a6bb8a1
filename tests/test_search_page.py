"""The search page (GET /search) in headless Chromium: Debian's chromium (installed by .ci/run), driven by
playwright (dev extra; it never downloads a browser). The test types a query and checks the rendered results and
their highlighted words. M3E_SEARCH_PAGE_SCREENSHOT=PATH also saves the page as docs/search-page.png is made."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

import m3e
from m3e.index import build_index
from m3e.serving import ServeConfig, ServerThread, create_app
from tests.test_index_store import write_jsonl

pytestmark = pytest.mark.slow  # headless Chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "page-key"
DOCS = [
    {
        "id": "claims-guide",
        "text": "车险理赔需要准备保单、驾驶证和事故证明。理赔材料齐全后三个工作日内赔付。",
        "source": "faq",
    },
    {
        "id": "travel-cover",
        "text": "旅游保险可以报销航班延误和行李丢失，理赔时请保留登机牌。",
        "source": "faq",
    },
    {"id": "weather", "text": "今天天气很好，我们去公园散步吧。", "source": "chat"},
    {
        "id": "health-plan",
        "text": "医疗保险 covers hospital stays; 住院理赔需要发票和诊断证明。",
        "source": "policy",
    },
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_st_model_dir: Path):
    root = tmp_path_factory.mktemp("page")
    model = m3e.load(str(tiny_st_model_dir))
    index, _ = build_index(
        write_jsonl(root / "docs.jsonl", DOCS),
        root / "kb",
        model,
        model_source=str(tiny_st_model_dir),
        progress=False,
    )
    index.close()
    app = create_app({"tiny": model}, ServeConfig(api_key=KEY, warmup=False), indexes={"kb": root / "kb"})
    with ServerThread(app) as srv:
        yield srv


def test_the_page_is_package_data_with_a_strict_policy(server: ServerThread) -> None:
    page = httpx.get(server.url + "/search")  # no key: the page holds no data, its calls carry the key
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert 'id="query"' in page.text


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_a_query_renders_results_with_highlighted_words(server: ServerThread, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # A fresh profile per run; Debian's chromium, never a downloaded one.
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1000, "height": 720},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(10_000)
            page.goto(server.url + "/search")
            key = page.locator("#key")
            key.wait_for(state="visible")  # the server answered 401: the page asks for the key
            key.fill(KEY)
            page.locator("#query").fill("车险理赔材料")
            page.locator("#query").press("Enter")
            page.locator("ol#results li").first.wait_for()
            _check_results(page)
            shot = os.environ.get("M3E_SEARCH_PAGE_SCREENSHOT") or str(tmp_path / "search-page.png")
            page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()


def _check_results(page: Any) -> None:
    first = page.locator("ol#results li").first
    assert first.get_attribute("data-id") == "claims-guide"  # the only document with every word
    marks = first.locator(".text mark").all_inner_texts()
    assert {"车险", "理赔", "材料"} <= set(marks)
    assert page.locator("#index").input_value() == "kb"
    assert "result(s)" in page.locator("#status").inner_text()
    # Other documents that share a word are listed too, each with its own highlights.
    ids = page.locator("ol#results li").evaluate_all("items => items.map(li => li.dataset.id)")
    assert "weather" not in ids[:1] and len(ids) >= 2
