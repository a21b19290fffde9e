"""An OpenAI-compatible chat-completions client (vLLM, llama.cpp server, TGI, OpenAI, ...).

One POST per conversation to `{base}/chat/completions`, several in flight at once
(a thread pool of `concurrency` workers over one shared `httpx.Client`).

Failures and what we do about them:
  - timeout, connection error, HTTP 429, HTTP 5xx: transient, so retry up to
    `max_retries` times, sleeping `backoff * 2**attempt` seconds (capped at
    `backoff_max`, honouring a `Retry-After` header), times a random factor in
    [0.5, 1) so that many clients do not retry in lockstep ("jitter").
  - any other 4xx (bad request, bad key, unknown model): retrying cannot help;
    fail at once.
  - a 200 reply that is not chat-completions JSON: a broken server; fail at once.
A request that finally fails returns `None` and is counted in `stats` with its reason.

The API key is read from the environment variable named by `api_key_env` and
sent as `Authorization: Bearer ...`; it is never logged or shown in `repr`.
"""
from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import httpx

from ...errors import ConfigError
from .backends import BackendStats, Message

logger = logging.getLogger("posttrain.rollout.chat")


def chat_completions_url(url: str) -> str:
    """Accept a server root, a `/v1` base, or the full endpoint; return the full endpoint."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError("judge_url", f"expected an http:// or https:// URL, got {url!r}")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None,
                  rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt + 1` (attempt counts from 0).

    Exponential `base * 2**attempt` with multiplicative jitter in [0.5, 1), at least the
    server's `Retry-After`, never more than `cap`.
    """
    delay = base * (2 ** attempt) * (0.5 + 0.5 * rng())
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare from model servers; fall back to our own backoff
        return None


class MalformedReply(Exception):
    """A 2xx response whose body is not a chat completion."""


def reply_text(response: httpx.Response) -> str:
    """`choices[0].message.content` of a chat-completions response, or MalformedReply."""
    try:
        body = response.json()
    except ValueError:
        raise MalformedReply("malformed reply: body is not JSON") from None
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply("malformed reply: no choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise MalformedReply("malformed reply: no message content")
    return content


class HttpChatBackend:
    """`ChatBackend` over HTTP. Use as a context manager (or call `close()`) to free connections."""

    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 3, backoff: float = 1.0, backoff_max: float = 30.0, concurrency: int = 4,
                 extra_body: dict | None = None, sleep: Callable[[float], None] = time.sleep):
        if concurrency < 1:
            raise ConfigError("concurrency", "must be at least 1")
        if max_retries < 0:
            raise ConfigError("max_retries", "must be 0 or more")
        if timeout <= 0:
            raise ConfigError("timeout", "must be a positive number of seconds")
        self.url = chat_completions_url(url)
        self.model, self.name = model, model
        self.max_retries, self.backoff, self.backoff_max = max_retries, backoff, backoff_max
        self.concurrency, self.extra_body, self.sleep = concurrency, dict(extra_body or {}), sleep
        self.api_key_env = api_key_env
        self.stats = BackendStats()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers)

    def __repr__(self) -> str:  # the key lives only inside the client's headers
        return f"HttpChatBackend(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def __enter__(self) -> "HttpChatBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def complete(self, conversations: Sequence[list[Message]], *, max_tokens: int = 512,
                 temperature: float = 0.0) -> list[str | None]:
        conversations = list(conversations)
        if len(conversations) <= 1 or self.concurrency == 1:
            return [self._complete_one(m, max_tokens, temperature) for m in conversations]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(lambda m: self._complete_one(m, max_tokens, temperature), conversations))

    def _complete_one(self, messages: list[Message], max_tokens: int, temperature: float) -> str | None:
        payload = {**self.extra_body, "model": self.model, "messages": messages,
                   "max_tokens": max_tokens, "temperature": temperature}
        self.stats.add(requests=1)
        reason = "no attempt"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TimeoutException:
                reason = "timeout"
            except httpx.TransportError as exc:
                reason = f"connection error ({type(exc).__name__})"
            else:
                code = response.status_code
                if 200 <= code < 300:
                    try:
                        text = reply_text(response)
                    except MalformedReply as exc:
                        return self._fail(str(exc))
                    self.stats.add(completed=1)
                    return text
                reason = f"HTTP {code}"
                if code != 429 and code < 500:
                    hint = f" (is ${self.api_key_env} set?)" if code in (401, 403) else ""
                    return self._fail(reason + hint)
                retry_after = _retry_after_seconds(response)
            if attempt < self.max_retries:
                self.stats.add(retries=1)
                delay = backoff_delay(attempt, self.backoff, self.backoff_max, retry_after)
                logger.info("judge request: %s; retry %d/%d in %.2fs", reason, attempt + 1, self.max_retries, delay)
                self.sleep(delay)
        return self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.stats.add_failure(reason)
        logger.warning("judge request failed: %s", reason)
        return None
