"""posttrain serve over HTTP (in-process TestClient): auth, forms, JSON API, escaping, admin."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from posttrain.serve.app import create_app
from posttrain.serve.db import connect, create_user, init_db
from posttrain.serve.items import insert_items, item_from_row
from posttrain.serve.markup import ALLOWED_TAGS, render_markdown
from posttrain.serve.web import Settings

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


@pytest.fixture
def env(tmp_path):
    db = tmp_path / "s.db"
    init_db(db)
    conn = connect(db)
    rows = [{"prompt": f"Question {i}?", "response_a": f"answer a{i}", "response_b": f"answer b{i}", "id": f"q{i}"}
            for i in range(3)]
    insert_items(conn, [item_from_row(r) for r in rows], k=2)
    tokens = {"ann": create_user(conn, "ann"), "bob": create_user(conn, "bob"),
              "boss": create_user(conn, "boss", admin=True)}
    conn.close()
    app = create_app(Settings(db=str(db), variants={"A": "echo", "B": "echo:B says: "}))
    return db, app, tokens


def client_for(app, token=None):
    client = TestClient(app, follow_redirects=False)
    if token:
        response = client.post("/login", data={"token": token, "next": "/annotate"})
        assert response.status_code == 303 and response.headers["location"] == "/annotate"
    return client


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def assignment_id(html):
    return re.search(r'name="assignment_id" value="([0-9a-f]+)"', html).group(1)


def test_no_token_means_login_redirect_or_401(env):
    _, app, tokens = env
    client = client_for(app)
    for path in ("/", "/annotate", "/chat", "/admin"):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=")
    assert client.post("/annotate", data={"choice": "A"}).status_code == 303
    for method, path in (("get", "/api/next"), ("post", "/api/labels"), ("post", "/api/chat"),
                         ("get", "/api/admin/stats"), ("get", "/api/admin/export/annotations")):
        assert getattr(client, method)(path, headers=bearer("nope")).status_code == 401
    assert client.get("/api/me", headers=bearer(tokens["ann"])).json() == {"user": "ann", "admin": False}
    # annotators are not admins
    assert client.get("/api/admin/stats", headers=bearer(tokens["ann"])).status_code == 403
    assert client.get("/admin", cookies={"posttrain_token": tokens["ann"]}).status_code == 403


@pytest.mark.parametrize("token", ["wrong", "' OR '1'='1", "x'; DROP TABLE users; --"])
def test_bad_tokens_do_not_log_in(env, token):
    db, app, _ = env
    response = client_for(app).post("/login", data={"token": token})
    assert response.status_code == 401 and "Unknown token" in response.text
    assert "posttrain_token" not in response.headers.get("set-cookie", "")
    assert connect(db).execute("SELECT COUNT(*) FROM users").fetchone()[0] == 3


def test_login_only_redirects_within_the_site(env):
    _, app, tokens = env
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "/\t/evil.example"):
        response = client_for(app).post("/login", data={"token": tokens["ann"], "next": target})
        assert response.headers["location"] == "/"


def test_annotate_form_flow_and_next_item(env):
    db, app, tokens = env
    client = client_for(app, tokens["ann"])
    page = client.get("/annotate")
    assert page.status_code == 200 and "0</span> labelled" in page.text
    first = assignment_id(page.text)
    form = {"assignment_id": first, "choice": "B", "crit_helpfulness": "B", "crit_harmlessness": "tie",
            "crit_honesty": "A", "reasoning": "B is more precise", "confidence": "4"}
    done = client.post("/annotate", data=form)
    assert done.status_code == 303 and done.headers["location"] == "/annotate?saved=1"
    page = client.get("/annotate?saved=1")
    assert "Saved. Here is the next one." in page.text and "1</span> labelled" in page.text
    assert assignment_id(page.text) != first
    # posting the same form again (a browser retry) changes nothing
    assert client.post("/annotate", data=form).status_code == 303
    conn = connect(db)
    rows = conn.execute("SELECT choice, criteria, reasoning, confidence, a.swapped FROM labels "
                        "JOIN assignments a ON a.id = labels.assignment_id").fetchall()
    assert len(rows) == 1
    choice, criteria, reasoning, confidence, swapped = rows[0]
    flip = {"A": "B", "B": "A", "tie": "tie"}
    shown = {"helpfulness": "B", "harmlessness": "tie", "honesty": "A"}
    expected = {k: flip[v] for k, v in shown.items()} if swapped else shown
    assert (choice, json.loads(criteria), reasoning, confidence) == (flip["B"] if swapped else "B", expected,
                                                                    "B is more precise", 4)


def test_invalid_form_shows_the_error_and_keeps_the_item(env):
    _, app, tokens = env
    client = client_for(app, tokens["ann"])
    aid = assignment_id(client.get("/annotate").text)
    response = client.post("/annotate", data={"assignment_id": aid, "choice": "A", "confidence": "9",
                                              "reasoning": "kept text"})
    assert response.status_code == 422
    assert "field &#39;confidence&#39;: must be a whole number from 1 to 5" in response.text
    assert assignment_id(response.text) == aid and "kept text" in response.text


def test_annotators_do_not_see_each_others_labels(env):
    _, app, tokens = env
    ann, bob = client_for(app, tokens["ann"]), client_for(app, tokens["bob"])
    page = ann.get("/annotate").text
    ann.post("/annotate", data={"assignment_id": assignment_id(page), "choice": "A", "confidence": "5",
                                "reasoning": "SECRET-REASON-ann"})
    item = re.search(r'data-item="([^"]+)"', page).group(1)
    for _ in range(3):
        page = bob.get("/annotate").text
        assert "SECRET-REASON-ann" not in page
        if f'data-item="{item}"' in page:
            break
        bob.post("/annotate", data={"assignment_id": assignment_id(page), "choice": "A", "confidence": "3"})
    assert f'data-item="{item}"' in page  # bob did reach the item ann labelled


def test_xss_in_items_and_chat_is_escaped(env):
    db, app, tokens = env
    conn = connect(db)
    conn.execute("DELETE FROM items")
    insert_items(conn, [item_from_row({"prompt": XSS, "response_a": XSS, "response_b": "plain", "id": XSS})], k=1)
    client = client_for(app, tokens["ann"])
    page = client.get("/annotate")
    assert "<script>window.__xss" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    client.post("/chat/send", data={"message": XSS})
    chat = client.get("/chat").text
    assert "<script>window.__xss" not in chat and chat.count("&lt;script&gt;window.__xss=1") == 2


def test_json_api_labels_are_idempotent(env):
    db, app, tokens = env
    client = client_for(app)
    task = client.get("/api/next", headers=bearer(tokens["ann"])).json()
    assert set(task) == {"assignment_id", "item_id", "prompt", "response_a", "response_b"}
    body = {"assignment_id": task["assignment_id"], "choice": "tie", "criteria": {"honesty": "A"},
            "reasoning": "same", "confidence": 2}
    first = client.post("/api/labels", json=body, headers=bearer(tokens["ann"]))
    second = client.post("/api/labels", json=body, headers=bearer(tokens["ann"]))
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["label_id"] == second.json()["label_id"] and second.json()["duplicate"] is True
    stolen = client.post("/api/labels", json=body, headers=bearer(tokens["bob"]))
    assert stolen.status_code == 404
    bad = client.post("/api/labels", json={**body, "choice": "maybe"}, headers=bearer(tokens["ann"]))
    assert bad.status_code == 422 and bad.json() == {"detail": "field 'choice': must be one of A, B, tie",
                                                     "field": "choice"}
    assert client.post("/api/labels", content=b"{not json", headers=bearer(tokens["ann"])).status_code == 400
    assert connect(db).execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 1
    # A different label for the same assignment is refused, not acknowledged as stored (it used to get 200
    # "duplicate": true while the first label stayed).
    for change in ({"choice": "A"}, {"confidence": 5}, {"reasoning": "changed my mind"}, {"criteria": {}}):
        changed = client.post("/api/labels", json={**body, **change}, headers=bearer(tokens["ann"]))
        assert changed.status_code == 409 and changed.json()["field"] == "assignment_id", change
        assert "already labelled, differently" in changed.json()["detail"]
    assert [tuple(row) for row in connect(db).execute("SELECT choice, confidence FROM labels")] == [("tie", 2)]
    again = client.post("/api/labels", json=body, headers=bearer(tokens["ann"]))
    assert again.status_code == 200 and again.json()["duplicate"] is True


def test_cross_site_form_posts_are_refused(env):
    _, app, tokens = env
    client = client_for(app, tokens["ann"])
    response = client.post("/chat/send", data={"message": "hi"}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403


def test_chat_forms_feedback_and_sticky_variant(env):
    db, app, tokens = env
    client = client_for(app, tokens["ann"])
    assert client.post("/chat/send", data={"message": "first question"}).status_code == 303
    page = client.get("/chat").text
    reply_id = re.search(r'name="message_id" value="(\d+)"', page).group(1)
    conversation_id = re.search(r'name="conversation_id" value="([0-9a-f]+)"', page).group(1)
    response = client.post("/chat/feedback", data={"conversation_id": conversation_id, "message_id": reply_id,
                                                   "thumbs": "1", "rating": "5", "text": "great"})
    assert response.status_code == 303
    assert "Thanks, feedback saved." in client.get(response.headers["location"]).text
    bad = client.post("/chat/feedback", data={"conversation_id": conversation_id, "message_id": reply_id,
                                              "rating": "7"})
    assert bad.status_code == 422 and "field &#39;rating&#39;: must be a whole number from 1 to 5" in bad.text
    # a new conversation keeps the user's variant
    client.post("/chat/new", data={})
    client.post("/chat/send", data={"message": "second"})
    variants = {row[0] for row in connect(db).execute("SELECT variant FROM conversations")}
    assert len(variants) == 1
    api = client_for(app)
    answer = api.post("/api/chat", json={"message": "via api"}, headers=bearer(tokens["bob"])).json()
    assert answer["reply"].endswith("via api")
    ok = api.post("/api/feedback", json={"message_id": answer["message_id"], "thumbs": -1},
                  headers=bearer(tokens["bob"]))
    assert ok.status_code == 200
    # bob cannot rate ann's reply
    assert api.post("/api/feedback", json={"message_id": int(reply_id), "thumbs": -1},
                    headers=bearer(tokens["bob"])).status_code == 404


def test_admin_import_stats_and_exports(env):
    _, app, tokens = env
    client = client_for(app)
    admin = bearer(tokens["boss"])
    imported = client.post("/api/admin/items", headers=admin, json={"k": 1, "items": [
        {"prompt": "new?", "chosen": "yes", "rejected": "no", "id": "n1"}]})
    assert imported.json() == {"added": 1, "already_present": 0}
    bad = client.post("/api/admin/items", headers=admin, json={"items": [{"prompt": "p", "response_a": "x"}]})
    assert bad.status_code == 422 and bad.json() == {"detail": "field 'items[0].response_b': expected a non-empty string",
                                                     "field": "items[0].response_b"}
    ann = bearer(tokens["ann"])
    for _ in range(4):
        task = client.get("/api/next", headers=ann).json()
        client.post("/api/labels", headers=ann, json={"assignment_id": task["assignment_id"], "choice": "A",
                                                      "confidence": 3})
    client.post("/api/chat", headers=ann, json={"message": "hello"})
    stats = client.get("/api/admin/stats", headers=admin).json()
    assert stats["items"] == 4 and stats["labels"] == 4 and stats["labels_per_user"]["ann"] == 4
    annotations = [json.loads(line) for line in client.get("/api/admin/export/annotations", headers=admin).text.splitlines()]
    assert len(annotations) == 4 and {a["annotator"] for a in annotations} == {"ann"}
    prefs = client.get("/api/admin/export/preferences", headers=admin)
    assert prefs.headers["content-type"].startswith("application/x-ndjson") and len(prefs.text.splitlines()) == 4
    assert client.get("/api/admin/export/feedback", headers=admin).text == ""  # no ratings yet
    assert client.get("/api/admin/export/bogus", headers=admin).status_code == 404
    admin_page = client.get("/admin", cookies={"posttrain_token": tokens["boss"]})
    assert admin_page.status_code == 200 and '<td id="stat-labels">4</td>' in admin_page.text


def test_a_failing_model_is_an_error_message_not_a_crash(env):
    db, _, tokens = env

    class Broken:
        def reply(self, messages):
            raise RuntimeError("CUDA out of memory")

    app = create_app(Settings(db=str(db), variants={"A": "x", "B": "y"}, backends={"A": Broken(), "B": Broken()}))
    client = client_for(app, tokens["ann"])
    response = client.post("/chat/send", data={"message": "hello?"})
    assert response.status_code == 502
    assert "the model could not answer: CUDA out of memory" in response.text
    assert "hello?" in response.text  # the user's turn is kept
    api = client.post("/api/chat", json={"message": "again"}, headers=bearer(tokens["bob"]))
    assert api.status_code == 502 and "CUDA out of memory" in api.json()["detail"]


def test_sql_injection_through_the_forms_is_stored_as_text(env):
    db, app, tokens = env
    evil = "'); DELETE FROM labels; DROP TABLE users; --"
    client = client_for(app, tokens["ann"])
    aid = assignment_id(client.get("/annotate").text)
    client.post("/annotate", data={"assignment_id": aid, "choice": "A", "confidence": "3", "reasoning": evil})
    client.post("/annotate", data={"assignment_id": f"{aid}' OR '1'='1", "choice": "A", "confidence": "3"})
    client.post("/chat/send", data={"message": evil})
    conn = connect(db)
    assert [tuple(r) for r in conn.execute("SELECT reasoning FROM labels")] == [(evil,)]
    assert conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 3
    assert conn.execute("SELECT COUNT(*) FROM messages WHERE content = ?", (evil,)).fetchone()[0] == 1


# ---------------------------------------------------------------------------- Markdown (issue #15)

MARKDOWN = ("Steps:\n\n1. install\n2. run `posttrain sft`\n\n- a point\n- another\n\n"
            "```python\ndef f(x):\n    return x < 2\n```\n\nSee **this** and [the docs](https://example.com/docs).")

# Payloads aimed at Markdown renderers: links and images with script URLs, raw HTML, attribute breakouts.
MARKDOWN_XSS = [
    "[click](javascript:window.__xss=1)",
    "[click](JaVaScRiPt:window.__xss=1)",
    "[click](  javascript:window.__xss=1  )",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX194c3M9MTwvc2NyaXB0Pg==)",
    "[ref]\n\n[ref]: javascript:window.__xss=1",
    "<javascript:window.__xss=1>",
    '![x" onerror="window.__xss=1](https://example.com/a.png)',
    "![x](x onerror=window.__xss=1)",
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=1</script>",
    '<a href="javascript:window.__xss=1">raw link</a>',
    '<svg onload="window.__xss=1"></svg>',
    "<iframe src=\"javascript:window.__xss=1\"></iframe>",
    '[x](https://example.com "title\\" onmouseover=\\"window.__xss=1")',
    "```\n</code></pre><script>window.__xss=1</script>\n```",
    "`<script>window.__xss=1</script>`",
    "<style>body{display:none}</style>",
]


class _TagCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags_of(html):
    parser = _TagCollector()
    parser.feed(html)
    return parser.tags


def test_markdown_renders_code_lists_and_inline_code(env):
    db, app, tokens = env
    conn = connect(db)
    conn.execute("DELETE FROM items")
    insert_items(conn, [item_from_row({"prompt": MARKDOWN, "response_a": MARKDOWN, "response_b": "plain",
                                       "id": "md"})], k=1)
    page = client_for(app, tokens["ann"]).get("/annotate").text
    assert '<pre><code>def f(x):\n    return x &lt; 2\n</code></pre>' in page
    assert "<li>run <code>posttrain sft</code></li>" in page and "<ol>" in page and "<li>a point</li>" in page
    assert "<strong>this</strong>" in page
    assert '<a href="https://example.com/docs" rel="noopener noreferrer">the docs</a>' in page


@pytest.mark.parametrize("payload", MARKDOWN_XSS)
def test_markdown_cannot_inject_script_links_or_markup(payload):
    html = str(render_markdown(payload))
    for tag, attrs in tags_of(html):
        assert tag in ALLOWED_TAGS, (tag, html)
        assert not any(name.startswith("on") or name in ("style", "src") for name in attrs), html
        if "href" in attrs:
            assert attrs["href"].split(":")[0] in ("http", "https", "mailto"), html
    assert not re.search(r"<(script|img|svg|iframe|style)\b", html, re.I), html


def test_markdown_xss_payloads_in_a_page_render_as_text(env):
    db, app, tokens = env
    conn = connect(db)
    conn.execute("DELETE FROM items")
    payload = "\n\n".join(MARKDOWN_XSS)
    insert_items(conn, [item_from_row({"prompt": payload, "response_a": payload, "response_b": "b", "id": "x"})],
                 k=1)
    page = client_for(app, tokens["ann"]).get("/annotate").text
    tags = tags_of(page)
    assert [attrs.get("src") for tag, attrs in tags if tag == "script"] == ["/static/app.js"]
    assert not [tag for tag, _ in tags if tag in ("img", "svg", "iframe", "style")]
    assert not [(tag, attrs) for tag, attrs in tags if any(name.startswith("on") for name in attrs)]
    hrefs = [attrs["href"] for tag, attrs in tags if tag == "a" and "href" in attrs]
    assert hrefs and all(href.startswith(("/", "https://")) for href in hrefs), hrefs
    # shown as text three times (raw, in a fence, in inline code), in the prompt and in response A
    assert page.count("&lt;script&gt;window.__xss=1&lt;/script&gt;") == 6


def test_saved_notice_is_below_nothing_left(env):
    _, app, tokens = env
    client = client_for(app, tokens["ann"])
    while 'name="assignment_id"' in (page := client.get("/annotate").text):
        client.post("/annotate", data={"assignment_id": assignment_id(page), "choice": "A", "crit_helpfulness": "A",
                                       "crit_harmlessness": "A", "crit_honesty": "A", "confidence": "3"})
    page = client.get("/annotate?saved=1").text
    assert page.index("Nothing left to label") < page.index('id="saved"')
    assert page.index('id="all-done"') < page.index('id="saved"') < page.index("</section>", page.index("all-done"))


def test_admin_page_links_download_every_export(env):
    _, app, tokens = env
    client = client_for(app, tokens["boss"])
    page = client.get("/admin").text
    links = re.findall(r'<a href="(/api/admin/export/[^"]+)" download>', page)
    assert links == ["/api/admin/export/preferences", "/api/admin/export/preferences?aggregate=each",
                     "/api/admin/export/ties", "/api/admin/export/annotations", "/api/admin/export/feedback"]
    for link in links:  # the login cookie is enough: no token to paste
        response = client.get(link)
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
        name = link.split("/")[-1].replace("?aggregate=each", "-each")
        assert response.headers["content-disposition"] == f'attachment; filename="{name}.jsonl"'
    assert client_for(app, tokens["ann"]).get(links[0]).status_code == 403


def test_while_serving_checkpoints_run_in_the_background(env):
    _, app, tokens = env
    assert app.state.pool.autocheckpoint is True  # outside the server's lifetime: SQLite's own
    with TestClient(app) as client:  # runs the lifespan, as uvicorn does
        assert client.get("/api/next", headers=bearer(tokens["ann"])).status_code == 200
        assert app.state.pool.autocheckpoint is False
        conn = app.state.pool.acquire()
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        app.state.pool.release(conn)
    assert app.state.pool.autocheckpoint is True
