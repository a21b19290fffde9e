"""HttpChatBackend against a real local OpenAI-compatible server (tests/openai_stub.py)."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from openai_stub import Reply
from posttrain.errors import ConfigError
from posttrain.rollout.chat.http_backend import HttpChatBackend, backoff_delay, chat_completions_url

HI = [{"role": "user", "content": "hi"}]


def backend(stub, **kwargs):
    """A backend that records its retry sleeps instead of sleeping."""
    sleeps: list[float] = []
    options = dict(timeout=2.0, max_retries=2, backoff=0.01, backoff_max=1.0, concurrency=1, sleep=sleeps.append)
    options.update(kwargs)
    client = HttpChatBackend(stub.url, "judge-model", **options)
    client.sleeps = sleeps
    return client


def test_normal_completion_sends_openai_payload(openai_stub):
    openai_stub.script("[[A]]", "Winner: B")
    with backend(openai_stub) as client:
        replies = client.complete([HI, [{"role": "system", "content": "s"}, *HI]], max_tokens=7, temperature=0.0)
    assert replies == ["[[A]]", "Winner: B"]
    first = openai_stub.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["json"] == {"model": "judge-model", "messages": HI, "max_tokens": 7, "temperature": 0.0}
    assert client.stats.as_dict() == {"requests": 2, "completed": 2, "failed": 0, "retries": 0, "failure_reasons": {}}


def test_api_key_from_env_var_as_bearer_and_never_shown(openai_stub, monkeypatch, caplog):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-secret-123")
    openai_stub.script("[[A]]", Reply(status=401))
    caplog.set_level(logging.DEBUG)
    with backend(openai_stub, api_key_env="MY_JUDGE_KEY") as client:
        assert client.complete([HI, HI]) == ["[[A]]", None]
    assert openai_stub.requests[0]["headers"]["authorization"] == "Bearer sk-test-secret-123"
    assert client.stats.failure_reasons == {"HTTP 401 (is $MY_JUDGE_KEY set?)": 1}
    assert client.stats.retries == 0  # a 4xx other than 429 is not retried
    assert "sk-test-secret-123" not in caplog.text and "sk-test-secret-123" not in repr(client)


def test_no_key_no_authorization_header(openai_stub, monkeypatch):
    monkeypatch.delenv("UNSET_KEY_VAR", raising=False)
    with backend(openai_stub, api_key_env="UNSET_KEY_VAR") as client:
        client.complete([HI])
    assert "authorization" not in openai_stub.requests[0]["headers"]


def test_server_slower_than_timeout_retries_then_fails(openai_stub):
    openai_stub.handler = lambda request: Reply("[[A]]", delay=0.6)
    with backend(openai_stub, timeout=0.15, max_retries=1) as client:
        assert client.complete([HI]) == [None]
    assert len(openai_stub.requests) == 2  # the first try and one retry
    assert client.stats.as_dict() == {"requests": 1, "completed": 0, "failed": 1, "retries": 1,
                                      "failure_reasons": {"timeout": 1}}


def test_500_then_success_retries(openai_stub):
    openai_stub.script(Reply(status=500), Reply(status=503), "[[B]]")
    with backend(openai_stub, max_retries=3) as client:
        assert client.complete([HI]) == ["[[B]]"]
    assert len(openai_stub.requests) == 3
    assert client.stats.retries == 2 and client.stats.failed == 0
    # exponential backoff with jitter in [0.5, 1): 0.01 * 2**k * [0.5, 1)
    assert len(client.sleeps) == 2
    for k, delay in enumerate(client.sleeps):
        assert 0.005 * 2 ** k <= delay < 0.01 * 2 ** k


def test_429_backs_off_honouring_retry_after(openai_stub):
    openai_stub.script(Reply(status=429, headers={"Retry-After": "0.25"}), Reply(status=429), "[[A]]")
    with backend(openai_stub, max_retries=2, backoff=0.001) as client:
        assert client.complete([HI]) == ["[[A]]"]
    assert client.sleeps[0] == pytest.approx(0.25)  # the server's Retry-After beats our tiny backoff
    assert client.sleeps[1] < 0.01


def test_retries_exhausted_on_5xx_counts_failure(openai_stub):
    openai_stub.handler = lambda request: Reply(status=502)
    with backend(openai_stub, max_retries=2) as client:
        assert client.complete([HI]) == [None]
    assert len(openai_stub.requests) == 3
    assert client.stats.failure_reasons == {"HTTP 502": 1}


@pytest.mark.parametrize("reply, reason", [
    (Reply(body=b"<html>Bad Gateway</html>"), "malformed reply: body is not JSON"),
    (Reply(body={"id": "x", "object": "chat.completion"}), "malformed reply: no choices"),
    (Reply(body={"choices": []}), "malformed reply: no choices"),
    (Reply(body={"choices": [{"message": {"role": "assistant", "content": None}}]}), "malformed reply: no message content"),
])
def test_malformed_replies_fail_without_retry(openai_stub, reply, reason):
    openai_stub.script(reply)
    with backend(openai_stub) as client:
        assert client.complete([HI]) == [None]
    assert len(openai_stub.requests) == 1
    assert client.stats.failure_reasons == {reason: 1}


def test_connection_refused_is_a_counted_failure():
    from openai_stub import OpenAIStub

    stub = OpenAIStub()  # bound to a port, never started, then closed: nothing listens there
    url = stub.url
    stub._server.server_close()
    with HttpChatBackend(url, "m", timeout=1, max_retries=1, backoff=0.001, sleep=lambda s: None) as client:
        assert client.complete([HI]) == [None]
    [reason] = client.stats.failure_reasons
    assert reason.startswith("connection error")


def test_concurrency_limit_is_respected(openai_stub):
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def slow(request):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return request["json"]["messages"][0]["content"]

    openai_stub.handler = slow
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    with backend(openai_stub, concurrency=2) as client:
        replies = client.complete(conversations)
    assert replies == [f"q{i}" for i in range(6)]  # order kept despite parallel requests
    assert state["max"] == 2


def test_url_forms_and_bad_options():
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://h/api/v1/chat/completions") == "https://h/api/v1/chat/completions"
    with pytest.raises(ConfigError, match="judge_url"):
        chat_completions_url("localhost:8000")
    with pytest.raises(ConfigError, match="concurrency"):
        HttpChatBackend("http://h", "m", concurrency=0)


def test_backoff_delay_math():
    assert backoff_delay(0, 1.0, 30, rng=lambda: 0.0) == 0.5
    assert backoff_delay(3, 1.0, 30, rng=lambda: 1.0) == 8.0
    assert backoff_delay(10, 1.0, 30, rng=lambda: 0.5) == 30  # capped
    assert backoff_delay(0, 0.01, 30, retry_after=2.0, rng=lambda: 0.0) == 2.0
    assert backoff_delay(0, 0.01, 1.5, retry_after=60.0) == 1.5  # Retry-After is capped too
