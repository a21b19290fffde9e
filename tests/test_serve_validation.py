"""Hostile request bodies: every one gets a 4xx naming the field, never a 500 (issue #16).

The named cases each returned 500 with a server traceback before validate.py existed.
The property-based test throws arbitrary JSON (and non-JSON) at every endpoint that
takes a body and asserts the server never fails (TestClient re-raises any server
exception, so a 500 shows up as the exception itself).
"""
from __future__ import annotations

import http.client
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.serve.app import create_app
from posttrain.serve.assign import next_task
from posttrain.serve.db import connect, create_user, init_db
from posttrain.serve.feedback import EchoBackend, send_message, start_conversation
from posttrain.serve.items import insert_items, item_from_row
from posttrain.serve.testing import LiveServer
from posttrain.serve.validate import RequestError, parse_json_body
from posttrain.serve.web import Settings


def make_env(db):
    """A database with items, an annotator with an open assignment and a chat reply, and an admin."""
    init_db(db)
    conn = connect(db)
    insert_items(conn, [item_from_row({"prompt": f"q{i}", "response_a": "a", "response_b": "b", "id": f"q{i}"})
                        for i in range(50)], k=3)
    ann, boss = create_user(conn, "ann"), create_user(conn, "boss", admin=True)
    ann_id = conn.execute("SELECT id FROM users WHERE name = 'ann'").fetchone()[0]
    assignment = next_task(conn, ann_id).assignment_id
    reply_id, _ = send_message(conn, EchoBackend(), start_conversation(conn, ann_id, "A", "echo"), "hi")
    conn.close()
    return {"ann": ann, "boss": boss, "assignment": assignment, "reply": reply_id}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("validation") / "s.db"
    values = make_env(db)
    app = create_app(Settings(db=str(db)))
    return TestClient(app), values


def post(client, path, raw, token):
    return client.post(path, content=raw, headers={"Authorization": f"Bearer {token}",
                                                   "Content-Type": "application/json"})


# (path, raw body with {assignment}/{reply} filled in, who sends it, status, field named in the answer)
HOSTILE = [
    ("/api/labels", '{{"assignment_id": "{assignment}", "choice": "A", "confidence": Infinity}}', "ann", 422,
     "confidence"),
    ("/api/labels", '{{"assignment_id": "{assignment}", "choice": "A", "confidence": 1e400}}', "ann", 422,
     "confidence"),
    ("/api/labels", '{{"assignment_id": "{assignment}", "choice": "A", "confidence": NaN}}', "ann", 422,
     "confidence"),
    ("/api/labels", '{{"assignment_id": "{assignment}", "choice": "A", "confidence": 3, "reasoning": "\\ud800"}}',
     "ann", 422, "reasoning"),
    ("/api/labels", '{{"assignment_id": "{assignment}", "choice": "A", "confidence": 3.5}}', "ann", 422,
     "confidence"),
    ("/api/labels", '{{"assignment_id": ["{assignment}"], "choice": "A", "confidence": 3}}', "ann", 422,
     "assignment_id"),
    ("/api/labels", '{{"assignment_id": "{assignment}", "choice": "A", "confidence": 3, '
                    '"criteria": {{"\\udfff": "A"}}}}', "ann", 422, "criteria.'\\udfff'"),
    ("/api/feedback", '{{"message_id": {reply}, "rating": Infinity}}', "ann", 422, "rating"),
    ("/api/feedback", '{{"message_id": 1e400, "thumbs": 1}}', "ann", 422, "message_id"),
    ("/api/feedback", '{{"message_id": ' + str(2**70) + ', "thumbs": 1}}', "ann", 422, "message_id"),
    ("/api/feedback", '{{"message_id": ' + str(-2**70) + ', "thumbs": 1}}', "ann", 422, "message_id"),
    ("/api/feedback", '{{"message_id": {reply}, "thumbs": 1, "text": "\\ud800"}}', "ann", 422, "text"),
    ("/api/chat", '{{"message": "hi", "conversation_id": ["x"]}}', "ann", 422, "conversation_id"),
    ("/api/chat", '{{"message": "\\ud800"}}', "ann", 422, "message"),
    ("/api/admin/items", '{{"k": ' + str(2**70) + ', "items": []}}', "boss", 422, "k"),
    ("/api/admin/items", '{{"k": 2, "items": [{{"prompt": "p", "response_a": "a", "response_b": "b", '
                         '"score": -Infinity}}]}}', "boss", 422, "items[0].score"),
    ("/api/admin/items", '{{"k": 2, "items": [7]}}', "boss", 422, "items[0]"),
    ("/api/labels", '{{"assignment_id": "{assignment}", "choice": "A", "confidence": "\uff13"}}', "ann", 422,
     "confidence"),  # a fullwidth 3: int() takes it, a form never sends it
    ("/api/feedback", '{{"message_id": {reply}, "thumbs": "\u0661"}}', "ann", 422, "thumbs"),  # Arabic-Indic 1
    ("/api/admin/items", '{{"k": 2, "items": [{{"prompt": "p", "response_a": "a", "response_b": "b", "id": true}}]}}',
     "boss", 422, "items[0].id"),
    ("/api/labels", "[" * 100_000, "ann", 400, None),
    ("/api/labels", '{{"a": ' + "[" * 40 + "]" * 40 + "}}", "ann", 400, None),
    ("/api/labels", "{{not json", "ann", 400, None),
    ("/api/labels", '"just a string"', "ann", 422, None),
    # a key given twice: the last value used to win silently
    ("/api/labels", '{{"assignment_id": "{assignment}", "choice": "A", "choice": "B", "confidence": 3}}', "ann", 400,
     "choice"),
    # a 5,000-digit integer: Python refuses to convert it
    ("/api/feedback", '{{"message_id": ' + "9" * 5000 + ', "thumbs": 1}}', "ann", 400, None),
]


@pytest.mark.parametrize("path, raw, who, status, field", HOSTILE)
def test_hostile_bodies_get_a_4xx_naming_the_field(env, path, raw, who, status, field):
    client, values = env
    response = post(client, path, raw.format(**values).encode(), values[who])
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field
    if field:
        assert body["detail"].startswith(f"field '{field}': ")


def test_bad_query_parameters_name_the_parameter(env):
    client, values = env
    response = client.get("/api/admin/export/preferences?min_labels=1e400",
                          headers={"Authorization": f"Bearer {values['boss']}"})
    assert response.status_code == 422 and response.json()["field"] == "min_labels"
    assert response.json()["detail"].startswith("field 'min_labels': input should be a valid integer")
    response = client.get("/api/admin/export/preferences?min_labels=0",
                          headers={"Authorization": f"Bearer {values['boss']}"})
    assert response.status_code == 422 and response.json()["field"] == "min_labels"


def test_body_bytes_that_are_not_utf8_or_too_large(env):
    client, values = env
    response = post(client, "/api/labels", b'{"reasoning": "\xff"}', values["ann"])
    assert response.status_code == 400 and response.json()["detail"] == "body is not UTF-8 (byte 15)"
    response = post(client, "/api/labels", b" " * (8 * 1024 * 1024 + 1), values["ann"])
    assert response.status_code == 413


def test_parse_json_body_limits():
    assert parse_json_body(b"") is None
    assert parse_json_body(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert parse_json_body(json.dumps({"n": 2**63 - 1}).encode()) == {"n": 2**63 - 1}
    with pytest.raises(RequestError, match="field 'n': integer out of range"):
        parse_json_body(json.dumps({"n": 2**63}).encode())
    assert parse_json_body(b"[" * 32 + b"]" * 32) is not None  # 32 levels: allowed
    with pytest.raises(RequestError, match="nested more than 32 levels"):
        parse_json_body(b"[" * 33 + b"]" * 33)
    with pytest.raises(RequestError, match="field 'a': given twice in one JSON object"):
        parse_json_body(b'{"a": 1, "a": 2}')
    with pytest.raises(RequestError, match=r"body is not valid JSON \(a number too long to read"):
        parse_json_body(b"[" + b"9" * 5000 + b"]")


def test_the_connection_stays_usable_after_each_hostile_request(tmp_path):
    """Over one keep-alive connection to the real server: every hostile body, then a good label."""
    db = tmp_path / "live.db"
    values = make_env(db)
    with LiveServer(db) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        headers = {"Authorization": f"Bearer {values['ann']}", "Content-Type": "application/json"}
        statuses = []
        for path, raw, who, _, _ in HOSTILE:
            conn.request("POST", path, body=raw.format(**values).encode(),
                         headers={**headers, "Authorization": f"Bearer {values[who]}"})
            response = conn.getresponse()
            json.loads(response.read())  # every answer is JSON
            statuses.append(response.status)
        assert statuses == [case[3] for case in HOSTILE]
        good = {"assignment_id": values["assignment"], "choice": "A", "confidence": 3}
        conn.request("POST", "/api/labels", body=json.dumps(good), headers=headers)
        response = conn.getresponse()
        assert response.status == 201 and json.loads(response.read())["duplicate"] is False
        conn.close()
        log = server.log()
    assert "Traceback" not in log and " 500 " not in log


# ---------------------------------------------------------------------------- property-based

SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc80b"])
TEXT = st.one_of(st.text(max_size=30), SURROGATES, st.sampled_from(["A", "B", "tie", "", "1", "1e400", "-0"]))
NUMBERS = st.one_of(st.integers(min_value=-2**80, max_value=2**80), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, 5, -1, 2**63 - 1, 2**63, 1e308, 3.0]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)

# Each endpoint's own field names, so that most bodies get past "expected a JSON object".
FIELDS = {
    "/api/labels": ["assignment_id", "choice", "criteria", "reasoning", "confidence"],
    "/api/feedback": ["message_id", "thumbs", "rating", "text"],
    "/api/chat": ["message", "conversation_id"],
    "/api/admin/items": ["items", "k"],
}


def endpoint_bodies(path):
    field_values = st.fixed_dictionaries({}, optional={name: JSON_VALUES for name in FIELDS[path]})
    return st.one_of(field_values, JSON_VALUES)


def raw_json(value) -> bytes:
    # allow_nan writes Infinity/NaN; ensure_ascii writes lone surrogates as \ud800 escapes
    return json.dumps(value, allow_nan=True).encode()


@pytest.mark.parametrize("path", list(FIELDS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_json_body_makes_any_endpoint_fail(env, path, data):
    client, values = env
    value = data.draw(endpoint_bodies(path))
    if isinstance(value, dict) and data.draw(st.booleans()):  # sometimes the real ids, to reach the database
        value.setdefault("assignment_id", values["assignment"])
        value.setdefault("message_id", values["reply"])
    token = values["boss"] if path.startswith("/api/admin") else values["ann"]
    response = post(client, path, raw_json(value), token)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200), path=st.sampled_from(list(FIELDS)))
def test_no_byte_string_makes_any_endpoint_fail(env, raw, path):
    client, values = env
    token = values["boss"] if path.startswith("/api/admin") else values["ann"]
    assert post(client, path, raw, token).status_code < 500


FORMS = {
    "/annotate": ["assignment_id", "choice", "crit_helpfulness", "reasoning", "confidence"],
    "/chat/feedback": ["conversation_id", "message_id", "thumbs", "rating", "text"],
    "/chat/send": ["conversation_id", "message"],
    "/login": ["token", "next"],
}


@pytest.mark.parametrize("path", list(FORMS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_form_post_makes_any_page_fail(env, path, data):
    client, values = env
    form_text = st.one_of(st.text(max_size=30), st.sampled_from(["1", "99999999999999999999999", "-1", "1e400", ""]))
    fields = data.draw(st.fixed_dictionaries({}, optional={name: form_text for name in FORMS[path]}))
    response = client.post(path, data=fields, cookies={"posttrain_token": values["ann"]}, follow_redirects=False)
    assert response.status_code < 500
