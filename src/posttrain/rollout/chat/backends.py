"""The chat backend interface that judges, CAI and red-teaming talk to.

A backend turns a batch of conversations (each a list of `{"role", "content"}`
messages) into one reply text per conversation:

    replies = backend.complete([messages_1, messages_2, ...], max_tokens=256, temperature=0.0)

A reply is `None` when the backend could not produce one (an HTTP request that
failed after its retries); `backend.stats` counts requests, retries and failures
with their reasons, so a run can report them instead of hiding them.

Implementations:
  - `HttpChatBackend` (rollout/chat/http_backend.py): any OpenAI-compatible `/v1/chat/completions` server.
  - `LocalChatBackend` (rollout/chat/local_backend.py): a Hugging Face causal LM with its chat template.
  - `CallableBackend` (here): wraps a Python function; for tests and quick experiments.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

Message = dict[str, str]


@dataclass
class BackendStats:
    """Thread-safe counters: conversations asked, answered, failed; retries; failure reasons."""

    requests: int = 0
    completed: int = 0
    failed: int = 0
    retries: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, requests: int = 0, completed: int = 0, retries: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.completed += completed
            self.retries += retries

    def add_failure(self, reason: str) -> None:
        with self._lock:
            self.failed += 1
            self.failure_reasons[reason] += 1

    def as_dict(self) -> dict:
        with self._lock:
            return {"requests": self.requests, "completed": self.completed, "failed": self.failed,
                    "retries": self.retries, "failure_reasons": dict(self.failure_reasons)}


@runtime_checkable
class ChatBackend(Protocol):
    """Anything with a `name`, `stats` and a batched `complete`."""

    name: str
    stats: BackendStats

    def complete(self, conversations: Sequence[list[Message]], *, max_tokens: int = 512,
                 temperature: float = 0.0) -> list[str | None]:
        """One reply per conversation, in order; None where no reply could be obtained."""
        ...


class CallableBackend:
    """A backend made from `fn(messages) -> str` (raise an exception to simulate a failure).

    Handy in tests of anything that takes a `ChatBackend`:

        backend = CallableBackend(lambda messages: "[[A]]")
    """

    def __init__(self, fn: Callable[[list[Message]], str], name: str = "callable"):
        self.fn, self.name, self.stats = fn, name, BackendStats()

    def complete(self, conversations: Sequence[list[Message]], *, max_tokens: int = 512,
                 temperature: float = 0.0) -> list[str | None]:
        replies: list[str | None] = []
        for messages in conversations:
            self.stats.add(requests=1)
            try:
                replies.append(str(self.fn(messages)))
                self.stats.add(completed=1)
            except Exception as exc:  # a failing function stands for a failed request
                self.stats.add_failure(type(exc).__name__)
                replies.append(None)
        return replies
