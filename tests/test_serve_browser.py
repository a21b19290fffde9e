"""posttrain serve as a person uses it: real headless Chromium (Debian's) driven by Playwright.

The test installs Chromium with apt when /usr/bin/chromium is missing (CI runs as
root on a clean machine) and skips, saying why, only if that install fails.
Screenshots go to $POSTTRAIN_SCREENSHOTS (e.g. docs/images) when set, else to tmp.

    POSTTRAIN_SCREENSHOTS=docs/images .venv/bin/pytest tests/test_serve_browser.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from browser import CHROMIUM_ARGS, ensure_chromium
from posttrain.serve.db import connect, create_user, init_db
from posttrain.serve.export import feedback_rows
from posttrain.serve.items import insert_items, item_from_row
from posttrain.serve.testing import LiveServer

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
MARKDOWN_XSS = ("[click me](javascript:window.__xss=3)\n\n![pic](x onerror=window.__xss=4)\n\n"
                '![pic" onerror="window.__xss=5](https://example.com/a.png)\n\n<svg onload="window.__xss=6"></svg>')

ITEMS = [
    {"id": "reverse", "prompt": "How do I reverse a list in Python without changing the original?",
     "response_a": "Two common ways:\n\n1. **Slicing** makes a reversed copy:\n\n"
                   "```python\nnumbers = [1, 2, 3]\nbackwards = numbers[::-1]\nprint(backwards)  # [3, 2, 1]\n```\n\n"
                   "2. `reversed()` gives an iterator; wrap it in `list()` if you need a list.\n\n"
                   "Avoid `numbers.reverse()` here: it reverses *in place*.",
     "response_b": "Use `list.reverse()`:\n\n- it is fast\n- it needs no extra memory\n\n"
                   "```python\nnumbers.reverse()\n```"},
    {"id": "email", "prompt": [{"role": "system", "content": "You are a helpful writing assistant."},
                               {"role": "user", "content": "Write a two-line note to say I'll be late to the "
                                                           "team meeting."}],
     "response_a": "Hi all, I'm running about 15 minutes late to today's meeting.\nPlease start without me.",
     "response_b": "I will not be attending on time."},
    {"id": "xss", "prompt": XSS, "response_a": XSS, "response_b": MARKDOWN_XSS},
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_browser")
    db = tmp / "serve.db"
    init_db(db)
    conn = connect(db)
    insert_items(conn, [item_from_row(row) for row in ITEMS], k=2)
    tokens = {"ann": create_user(conn, "ann"), "boss": create_user(conn, "boss", admin=True)}
    conn.close()
    with LiveServer(db) as server:
        yield server, db, tokens


@pytest.fixture(scope="module")
def browser():
    executable = ensure_chromium()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    target = os.environ.get("POSTTRAIN_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def login(page, server, token, path="/annotate"):
    page.goto(server.url + path)
    assert page.url.startswith(server.url + "/login")  # no token yet: sent to the login form
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(server.url + path)


def test_annotate_submit_next_and_xss_is_inert(site, browser, shots):
    server, db, tokens = site
    page = browser.new_page(viewport={"width": 1200, "height": 860})
    page.goto(server.url + "/login")
    page.screenshot(path=str(shots / "serve-login.png"))
    page.fill("#token", "' OR '1'='1")
    page.click("#login")
    assert "Unknown token" in page.inner_text("[role=alert]")

    login(page, server, tokens["ann"])
    first = page.get_attribute("#annotate-form", "data-item")
    assert page.inner_text("#done-count") == "0"
    # Markdown is rendered: fenced code in a monospace block, numbered and bulleted lists, inline code
    assert first == "reverse"
    code_font = page.eval_on_selector(".response pre code", "e => getComputedStyle(e).fontFamily")
    text_font = page.eval_on_selector(".response p", "e => getComputedStyle(e).fontFamily")
    assert "monospace" in code_font and "monospace" not in text_font
    assert page.locator(".response pre code").count() == 2 and page.locator(".response ol > li").count() == 2
    assert page.locator(".response ul > li").count() == 2 and page.locator(".response li code").count() >= 1
    page.keyboard.press("2")  # keyboard shortcut from app.js
    assert page.is_checked("#choice-B")
    page.click("#choice-A")
    for name, choice in (("helpfulness", "A"), ("harmlessness", "tie"), ("honesty", "A")):
        page.check(f"#crit-{name}-{choice}")
    page.fill("#reasoning", "A answers at the right level; B is correct but too technical.")
    page.click("#confidence-4")
    page.screenshot(path=str(shots / "serve-annotate.png"), full_page=True)
    with page.expect_navigation():
        page.click("#submit")
    assert page.inner_text("#saved") == "Saved. Here is the next one."
    assert page.inner_text("#done-count") == "1"
    second = page.get_attribute("#annotate-form", "data-item")
    assert second != first  # the next item, never the same one again
    page.click("#submit")  # nothing chosen: the browser's own `required` check stops the post
    assert page.inner_text("#done-count") == "1"
    page.click("#choice-tie")
    for name in ("helpfulness", "harmlessness", "honesty"):
        page.check(f"#crit-{name}-tie")
    page.click("#confidence-2")
    with page.expect_navigation():
        page.click("#submit")
    assert page.inner_text("#done-count") == "2"

    # the third item is full of markup: it must show as text and run nothing
    assert page.get_attribute("#annotate-form", "data-item") == "xss"
    assert page.evaluate("window.__xss") is None
    assert XSS in page.inner_text(".prompt .text")
    assert page.locator(".prompt img").count() == 0
    # ... and so must Markdown's own ways in: script links, images with handlers, raw SVG
    assert page.locator("main img, main svg, a[href^='javascript'], a[href^='JAVASCRIPT']").count() == 0
    assert "[click me](javascript:window.__xss=3)" in page.inner_text("main")
    assert page.evaluate("window.__xss") is None

    conn = connect(db)
    rows = conn.execute("SELECT i.item_id, l.reasoning, l.confidence FROM labels l JOIN items i ON i.seq = l.item_seq "
                        "ORDER BY l.id").fetchall()
    assert [tuple(r) for r in rows] == [
        (first, "A answers at the right level; B is correct but too technical.", 4), (second, "", 2)]

    # the last label: the "Saved" notice sits inside "Nothing left to label", not above it
    page.click("#choice-A")
    for name in ("helpfulness", "harmlessness", "honesty"):
        page.check(f"#crit-{name}-A")
    page.click("#confidence-3")
    with page.expect_navigation():
        page.click("#submit")
    assert page.locator("#all-done #saved").count() == 1
    title_y = page.locator("#all-done h1").bounding_box()["y"]
    assert page.locator("#saved").bounding_box()["y"] > title_y
    page.close()


def test_chat_and_feedback(site, browser, shots):
    server, db, tokens = site
    page = browser.new_page(viewport={"width": 1200, "height": 760})
    login(page, server, tokens["ann"], "/chat")
    page.fill("#message", "Hello! Can you summarise our meeting notes?")
    page.keyboard.press("Enter")  # app.js: Enter sends
    page.wait_for_selector(".message.assistant")
    assert page.inner_text(".message.assistant .text") == "You said: Hello! Can you summarise our meeting notes?"
    feedback = page.locator("form.feedback").first
    feedback.locator("input[name=thumbs][value='1']").check()
    feedback.locator("select[name=rating]").select_option("4")
    feedback.locator("input[name=text]").fill("Clear, but it only repeated me.")
    with page.expect_navigation():
        feedback.locator("button").click()
    assert page.inner_text("#notice") == "Thanks, feedback saved."
    assert feedback.locator("input[name=thumbs][value='1']").is_checked()  # the saved verdict is shown
    page.screenshot(path=str(shots / "serve-chat.png"), full_page=True)

    page.fill("#message", XSS)
    with page.expect_navigation():
        page.click("#send")
    assert page.locator(".message.assistant").count() == 2
    assert page.evaluate("window.__xss") is None
    assert page.locator(".message.assistant .text").nth(1).inner_text() == "You said: " + XSS

    rows = list(feedback_rows(connect(db)))
    assert [(r["user"], r["thumbs"], r["rating"], r["text"]) for r in rows] == [
        ("ann", 1, 4, "Clear, but it only repeated me.")]
    assert rows[0]["variant"] in ("A", "B")
    json.dumps(rows[0])
    page.close()


def test_admin_page(site, browser, shots):
    server, _, tokens = site
    page = browser.new_page(viewport={"width": 1200, "height": 700})
    login(page, server, tokens["boss"], "/admin")
    assert page.inner_text("#stat-items") == "3"
    page.screenshot(path=str(shots / "serve-admin.png"), full_page=True)
    with page.expect_download() as download:  # the export links save files, with the login cookie only
        page.click("#downloads a:text('annotations.jsonl')")
    assert download.value.suggested_filename == "annotations.jsonl"
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert len(rows) == 3 and {row["annotator"] for row in rows} == {"ann"}
    page.click("button.link")  # log out
    page.goto(server.url + "/admin")
    assert page.url.startswith(server.url + "/login")
    page.close()
