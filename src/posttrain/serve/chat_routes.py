"""Deployment feedback pages (/chat) and their JSON twins (/api/chat, /api/feedback).

The user never sees which variant answers (a blind test); the variant is
stored with the conversation and copied onto every feedback row.
"""
from __future__ import annotations

import sqlite3
import threading
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from .feedback import (
    FeedbackError,
    assign_variant,
    conversation,
    make_backend,
    messages_with_feedback,
    record_feedback,
    send_message,
    start_conversation,
)
from .validate import RequestError, json_object
from .web import Settings, User, api_user, db, form, json_body, page_user, render, settings

router = APIRouter()
_backend_lock = threading.Lock()


def _backend(cfg: Settings, variant: str):
    """Backends are built once per variant and reused (a model loads on its first reply)."""
    with _backend_lock:
        if variant not in cfg.backends:
            cfg.backends[variant] = make_backend(cfg.variants[variant])
        return cfg.backends[variant]


def _conversation_for(conn: sqlite3.Connection, cfg: Settings, user: User, conversation_id: str | None,
                      create: bool) -> sqlite3.Row | None:
    row = conversation(conn, user.id, conversation_id)
    if conversation_id and row is None:
        raise HTTPException(404, "no such conversation")
    if row is None and create:
        variant = assign_variant(user.name, list(cfg.variants), cfg.experiment)
        row = conversation(conn, user.id, start_conversation(conn, user.id, variant, cfg.variants[variant]))
    return row


def _chat_page(conn: sqlite3.Connection, user: User, row: sqlite3.Row | None, status: int = 200,
               error: str | None = None, notice: str | None = None) -> Response:
    messages = messages_with_feedback(conn, row["id"]) if row is not None else []
    return render("chat.html", status=status, user=user, conversation=row, messages=messages, error=error,
                  notice=notice)


@router.get("/chat")
def chat_page(request: Request, c: str | None = None, saved: int = 0, user: User = Depends(page_user),
              conn: sqlite3.Connection = Depends(db)) -> Response:
    row = _conversation_for(conn, settings(request), user, c, create=False)
    return _chat_page(conn, user, row, notice="Thanks, feedback saved." if saved else None)


@router.post("/chat/new")
def chat_new(request: Request, fields: dict[str, str] = Depends(form), user: User = Depends(page_user),
             conn: sqlite3.Connection = Depends(db)) -> Response:
    cfg = settings(request)
    variant = assign_variant(user.name, list(cfg.variants), cfg.experiment)
    new_id = start_conversation(conn, user.id, variant, cfg.variants[variant])
    return RedirectResponse(f"/chat?c={new_id}", status_code=303)


@router.post("/chat/send")
def chat_send(request: Request, fields: dict[str, str] = Depends(form), user: User = Depends(page_user),
              conn: sqlite3.Connection = Depends(db)) -> Response:
    cfg = settings(request)
    row = _conversation_for(conn, cfg, user, fields.get("conversation_id") or None, create=True)
    try:
        message_id, _ = send_message(conn, _backend(cfg, row["variant"]), row["id"], fields.get("message", ""))
    except FeedbackError as exc:
        return _chat_page(conn, user, row, status=exc.status, error=str(exc))
    return RedirectResponse(f"/chat?c={row['id']}#m{message_id}", status_code=303)


@router.post("/chat/feedback")
def chat_feedback(request: Request, fields: dict[str, str] = Depends(form), user: User = Depends(page_user),
                  conn: sqlite3.Connection = Depends(db)) -> Response:
    row = _conversation_for(conn, settings(request), user, fields.get("conversation_id") or None, create=False)
    try:
        record_feedback(conn, user.id, fields.get("message_id"), fields.get("thumbs"), fields.get("rating"),
                        fields.get("text", ""))
    except FeedbackError as exc:
        return _chat_page(conn, user, row, status=exc.status, error=str(exc))
    where = f"c={row['id']}&" if row is not None else ""
    return RedirectResponse(f"/chat?{where}saved=1", status_code=303)


@router.post("/api/chat")
def api_chat(request: Request, body: Any = Depends(json_body), user: User = Depends(api_user),
             conn: sqlite3.Connection = Depends(db)) -> Any:
    """`{message, conversation_id?}` -> `{conversation_id, message_id, reply}` (no id: latest or a new one).

    Sync: the model's reply may take seconds, so it runs on a worker thread.
    """
    body = json_object(body)
    conversation_id = body.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise RequestError("conversation_id", "expected text (an id from an earlier reply) or null")
    cfg = settings(request)
    row = _conversation_for(conn, cfg, user, conversation_id or None, create=True)
    message_id, reply = send_message(conn, _backend(cfg, row["variant"]), row["id"], body.get("message"))
    return {"conversation_id": row["id"], "message_id": message_id, "reply": reply}


@router.post("/api/feedback")
async def api_feedback(body: Any = Depends(json_body), user: User = Depends(api_user),
                       conn: sqlite3.Connection = Depends(db)) -> Any:
    """`{message_id, thumbs?, rating?, text?}` -> `{feedback_id}`; sending again updates the same row."""
    body = json_object(body)
    feedback_id = record_feedback(conn, user.id, body.get("message_id"), body.get("thumbs"), body.get("rating"),
                                  body.get("text", ""))
    return {"feedback_id": feedback_id}
