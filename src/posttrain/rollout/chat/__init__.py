"""Chat backends: a batch of conversations in, one reply text per conversation out.

    from posttrain.rollout.chat import HttpChatBackend, LocalChatBackend

    backend = LocalChatBackend.from_name("smollm2-135m")
    replies = backend.complete([[{"role": "user", "content": "2+2?"}]], max_tokens=16)

They are generation backends: the judge (posttrain.judge), Constitutional-AI
critique/revise (`posttrain cai`), red-teaming and the judged eval suites all talk
to a model through one of these.

- `backends`: the `ChatBackend` protocol, `BackendStats`, `CallableBackend` (a Python function)
- `http_backend`: `HttpChatBackend`, any OpenAI-compatible `/v1/chat/completions` server
- `local_backend`: `LocalChatBackend`, an in-process transformers model with its chat template
"""
from .backends import BackendStats, CallableBackend, ChatBackend, Message
from .http_backend import HttpChatBackend
from .local_backend import LocalChatBackend

__all__ = ["BackendStats", "CallableBackend", "ChatBackend", "HttpChatBackend", "LocalChatBackend", "Message"]
