"""A real OpenAI-compatible chat-completions server for tests (stdlib http.server in a thread).

It listens on 127.0.0.1 on a free port and answers `POST /v1/chat/completions`
with scripted replies, so client code runs over real sockets: timeouts, status
codes, headers and broken bodies behave as they would against vLLM or OpenAI.

    from openai_stub import OpenAIStub, Reply

    with OpenAIStub(handler=lambda request: "[[A]]") as stub:   # or the `openai_stub` fixture
        stub.script(Reply(status=500), "[[B]]")   # the next two requests: a 500, then "[[B]]"
        ... HttpChatBackend(stub.url, "judge") ...
        stub.requests[0]["headers"]["authorization"]; stub.requests[0]["json"]["messages"]

Scripted replies are used first, in order; after that `handler(request) -> Reply | str`
answers (default: "[[A]]"). `request` is {"path", "headers" (lower-case keys), "json"}.
`OpenAIStub(handler=backend_handler(backend))` serves a real (local) model instead.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    """What the server sends. `content` becomes a normal completion unless `body` is given.

    Reply("[[A]]")                         a 200 chat completion saying "[[A]]"
    Reply(status=500)                      an error status with an OpenAI-style error body
    Reply(status=429, headers={"Retry-After": "0.05"})
    Reply(body=b"not json")                a raw body (bytes/str), or a dict sent as JSON
    Reply("[[A]]", delay=1.0)              sleep first (to trip a client timeout)
    """

    content: str | None = None
    status: int = 200
    body: bytes | str | dict | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def completion_body(content: str, model: str = "stub") -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def backend_handler(backend: Any) -> Callable[[dict], str]:
    """A handler that answers with `backend.complete` (e.g. a LocalChatBackend on tiny-random).

    Requests arrive on several server threads; a lock runs one generation at a time.
    """
    lock = threading.Lock()

    def handle(request: dict) -> str:
        body = request["json"]
        with lock:
            [reply] = backend.complete([body["messages"]], max_tokens=int(body.get("max_tokens") or 16),
                                       temperature=float(body.get("temperature") or 0.0))
        return reply or ""

    return handle


class OpenAIStub:
    def __init__(self, handler: Callable[[dict], Reply | str] | None = None):
        self.handler = handler or (lambda request: "[[A]]")
        self.requests: list[dict] = []
        self._script: deque[Reply | str] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._server.daemon_threads = True  # a handler sleeping past a client timeout must not block shutdown
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The `/v1` base URL (clients append `/chat/completions`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply | str) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def start(self) -> "OpenAIStub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "OpenAIStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_reply(self, request: dict) -> Reply:
        with self._lock:
            self.requests.append(request)
            scripted = self._script.popleft() if self._script else None
        reply = scripted if scripted is not None else self.handler(request)
        return Reply(reply) if isinstance(reply, str) else reply

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    payload = json.loads(raw or b"null")
                except json.JSONDecodeError:
                    payload = None
                request = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                           "json": payload}
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(Reply(status=404, body={"error": {"message": f"no route {self.path}"}}))
                self._send(stub._next_reply(request), model=(payload or {}).get("model", "stub"))

            def _send(self, reply: Reply, model: str = "stub") -> None:
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.body is not None:
                    body = reply.body
                elif reply.status >= 400:
                    body = {"error": {"message": f"stub error {reply.status}", "type": "stub"}}
                else:
                    body = completion_body(reply.content or "", model)
                data = json.dumps(body).encode() if isinstance(body, dict) else (
                    body.encode() if isinstance(body, str) else body)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                    pass

        return Handler
