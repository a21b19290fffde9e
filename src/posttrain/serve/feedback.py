"""Deployment feedback: chat with a model variant, then rate its replies.

- Variants are `NAME=MODEL` strings (`A=smollm2-135m`, `B=runs/dpo/final`,
  `A=echo` for a model-free stand-in). A user's variant is a pure function of
  the experiment name and the user name (a hash), so it is sticky across
  sessions and server restarts and needs no stored state.
- Model calls sit behind `ChatBackend.reply(messages) -> str`; tests use
  `EchoBackend`, real runs `ModelBackend` (which loads through
  `posttrain.models.load_model` on first use).
- Feedback is one row per rated reply (rating again updates it, so retries and
  second thoughts never create duplicates): thumbs (1 / -1), rating (1-5), text.
"""
from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from typing import Any, Protocol

from ..errors import ConfigError
from ..records import Message
from .db import now_iso, write_transaction
from .validate import SQLITE_MAX_INT, RequestError, whole_number
from .validate import text as checked_text

MAX_MESSAGE_CHARS = 8_000


class FeedbackError(RequestError):
    """Chat input or feedback that cannot be accepted; the message names the field."""

    def __init__(self, message: str, status: int = 422, field: str | None = None):
        super().__init__(field, message, status)


class ChatBackend(Protocol):
    """Anything that turns a conversation into the assistant's next reply."""

    def reply(self, messages: list[Message]) -> str: ...


class EchoBackend:
    """A model-free backend for tests and demos: repeats the last user turn."""

    def __init__(self, prefix: str = "You said: "):
        self.prefix = prefix

    def reply(self, messages: list[Message]) -> str:
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return self.prefix + last


class ModelBackend:
    """A causal LM through `posttrain.models`, loaded lazily, one generation at a time."""

    def __init__(self, model_name: str, max_new_tokens: int = 128, temperature: float = 0.7):
        self.model_name, self.max_new_tokens, self.temperature = model_name, max_new_tokens, temperature
        self._lock = threading.Lock()  # one generate() at a time: the model is not re-entrant and CPU-bound
        self._model = self._tokenizer = None

    def load(self) -> None:
        """Load now (`posttrain serve` does this at start-up, so a bad model name fails fast)."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        if self._model is not None:
            return
        from ..models.loading import load_model, load_tokenizer  # torch: only when a real model is used

        self._tokenizer = load_tokenizer(self.model_name)
        self._model = load_model(self.model_name)
        self._model.eval()

    def reply(self, messages: list[Message]) -> str:
        import torch

        with self._lock:
            self._load()
            tokenizer, model = self._tokenizer, self._model
            encoded = self._fitted(messages)
            ids = {name: tensor.to(model.device) for name, tensor in encoded.items()}
            sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {
                "do_sample": False}
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=self.max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **sampling)
            new_tokens = out[0, ids["input_ids"].shape[1]:]
            return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


    def context_limit(self) -> int | None:
        """Prompt tokens that fit with the reply in the model's window (None: no known window)."""
        window = getattr(self._model.config, "max_position_embeddings", None)
        return max(window - self.max_new_tokens, 1) if isinstance(window, int) and window > 0 else None

    def _fitted(self, messages: list[Message]) -> dict[str, Any]:
        """The chat-formatted prompt, kept within the model's window: a long conversation loses its
        oldest turns (a system message stays), and a single over-long turn keeps its end. (It used
        to be sent whole: past the window a model's replies are garbage, or it fails.)"""
        tokenizer, limit = self._tokenizer, self.context_limit()

        def encode(turns: list[Message]) -> dict[str, Any]:
            return tokenizer.apply_chat_template(turns, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)

        encoded = encode(messages)
        turns = list(messages)
        while limit is not None and encoded["input_ids"].shape[1] > limit:
            first = 1 if turns and turns[0]["role"] == "system" else 0
            if len(turns) - first <= 1:  # one turn left: keep its end
                encoded = {name: tensor[:, -limit:] for name, tensor in encoded.items()}
                break
            del turns[first]
            while len(turns) > first + 1 and turns[first]["role"] != "user":
                del turns[first]  # start with a user turn again
            encoded = encode(turns)
        return encoded


def parse_variants(specs: list[str]) -> dict[str, str]:
    """`["A=model-x", "B=model-y"]` -> {"A": "model-x", "B": "model-y"} (order kept)."""
    variants: dict[str, str] = {}
    for spec in specs:
        name, sep, model = spec.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise ConfigError("variants", f"expected NAME=MODEL, got {spec!r}")
        if name.strip() in variants:
            raise ConfigError("variants", f"variant {name.strip()!r} is given twice")
        variants[name.strip()] = model.strip()
    if not variants:
        raise ConfigError("variants", "give at least one NAME=MODEL")
    return variants


def make_backend(model: str, max_new_tokens: int = 128, temperature: float = 0.7) -> ChatBackend:
    """`echo` (or `echo:PREFIX`) -> EchoBackend; anything else is a model name for `load_model`."""
    if model == "echo" or model.startswith("echo:"):
        return EchoBackend(model[5:] if model.startswith("echo:") else "You said: ")
    return ModelBackend(model, max_new_tokens, temperature)


def assign_variant(user: str, variants: list[str], experiment: str = "default") -> str:
    """Sticky A/B split: sha256("experiment:user") mod the number of variants."""
    digest = hashlib.sha256(f"{experiment}:{user}".encode("utf-8")).digest()
    return variants[int.from_bytes(digest[:8], "big") % len(variants)]


# ---------------------------------------------------------------------------- storage

def conversation(conn: sqlite3.Connection, user_id: int, conversation_id: str | None) -> sqlite3.Row | None:
    """The user's conversation by id, or their latest one when no id is given."""
    if conversation_id:
        return conn.execute("SELECT * FROM conversations WHERE id = ? AND user_id = ?",
                            (conversation_id, user_id)).fetchone()
    return conn.execute("SELECT * FROM conversations WHERE user_id = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
                        (user_id,)).fetchone()


def start_conversation(conn: sqlite3.Connection, user_id: int, variant: str, model: str) -> str:
    conversation_id = secrets.token_hex(12)
    with write_transaction(conn):
        conn.execute("INSERT INTO conversations (id, user_id, variant, model, created_at) VALUES (?, ?, ?, ?, ?)",
                     (conversation_id, user_id, variant, model, now_iso()))
    return conversation_id


def messages_with_feedback(conn: sqlite3.Connection, conversation_id: str) -> list[dict[str, Any]]:
    """Messages in order, each assistant reply with its current feedback (if any)."""
    rows = conn.execute(
        "SELECT m.id, m.role, m.content, f.thumbs, f.rating, f.text AS feedback_text FROM messages m "
        "LEFT JOIN feedback f ON f.message_id = m.id WHERE m.conversation_id = ? ORDER BY m.id",
        (conversation_id,)).fetchall()
    return [dict(row) for row in rows]


def send_message(conn: sqlite3.Connection, backend: ChatBackend, conversation_id: str, text: Any) -> tuple[int, str]:
    """Store the user's turn, ask the backend (outside any transaction), store the reply.

    Returns (reply message id, reply text).
    """
    try:
        text = checked_text(text, "message", MAX_MESSAGE_CHARS, optional=False)
    except RequestError as exc:
        raise FeedbackError(exc.message, exc.status, exc.field) from None
    if not text.strip():
        raise FeedbackError("must be non-empty text", field="message")
    with write_transaction(conn):
        conn.execute("INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?, 'user', ?, ?)",
                     (conversation_id, text, now_iso()))
    history = [{"role": r["role"], "content": r["content"]} for r in conn.execute(
        "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))]
    try:
        reply = backend.reply(history)  # may take seconds: no database lock is held here
    except Exception as exc:  # the user's turn is kept; they can send again
        raise FeedbackError(f"the model could not answer: {exc}", status=502) from exc
    with write_transaction(conn):
        cursor = conn.execute(
            "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?, 'assistant', ?, ?)",
            (conversation_id, reply, now_iso()))
    return int(cursor.lastrowid), reply


def record_feedback(conn: sqlite3.Connection, user_id: int, message_id: Any, thumbs: Any = None,
                    rating: Any = None, text: Any = "") -> int:
    """Upsert the user's verdict on one assistant reply; returns the feedback row id."""
    try:
        thumbs = whole_number(thumbs, "thumbs", -1, 1, optional=True)
        if thumbs == 0:
            raise RequestError("thumbs", "must be 1 (good) or -1 (bad)")
        rating = whole_number(rating, "rating", 1, 5, optional=True)
        text = checked_text(text, "text", MAX_MESSAGE_CHARS)
        message_id = whole_number(message_id, "message_id", 1, SQLITE_MAX_INT)
    except RequestError as exc:
        raise FeedbackError(exc.message, exc.status, exc.field) from None
    if thumbs is None and rating is None and not text.strip():
        raise FeedbackError("give a thumbs up/down, a rating or a comment", field="thumbs")
    with write_transaction(conn):
        target = conn.execute(
            "SELECT c.variant FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE m.id = ? AND m.role = 'assistant' AND c.user_id = ?", (message_id, user_id)).fetchone()
        if target is None:
            raise FeedbackError("no such reply", status=404, field="message_id")
        conn.execute(
            "INSERT INTO feedback (message_id, user_id, variant, thumbs, rating, text, timestamp) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(message_id) DO UPDATE SET "
            "thumbs = excluded.thumbs, rating = excluded.rating, text = excluded.text, timestamp = excluded.timestamp",
            (message_id, user_id, target["variant"], thumbs, rating, text, now_iso()))
        return conn.execute("SELECT id FROM feedback WHERE message_id = ?", (message_id,)).fetchone()[0]
