"""Pairwise annotation pages (/annotate) and their JSON twins (/api/next, /api/labels)."""
from __future__ import annotations

import sqlite3
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from .assign import CHOICES, LabelError, Task, next_task, submit_label, user_progress
from .validate import json_object
from .web import User, api_user, db, form, json_body, page_user, render, settings

router = APIRouter()


def _page(request: Request, conn: sqlite3.Connection, user: User, task: Task | None, status: int = 200,
          error: str | None = None, saved: bool = False, values: dict[str, str] | None = None) -> Response:
    return render("annotate.html", status=status, user=user, task=task, error=error, saved=saved,
                  done=user_progress(conn, user.id), criteria=settings(request).criteria, choices=CHOICES,
                  values=values or {})


@router.get("/annotate")
def annotate_page(request: Request, saved: int = 0, user: User = Depends(page_user),
                  conn: sqlite3.Connection = Depends(db)) -> Response:
    task = next_task(conn, user.id, settings(request).lease_seconds)
    return _page(request, conn, user, task, saved=bool(saved))


@router.post("/annotate")
def annotate_submit(request: Request, fields: dict[str, str] = Depends(form), user: User = Depends(page_user),
                    conn: sqlite3.Connection = Depends(db)) -> Response:
    names = settings(request).criteria
    criteria = {name: fields[f"crit_{name}"] for name in names if fields.get(f"crit_{name}")}
    try:
        submit_label(conn, user.id, fields.get("assignment_id", ""), fields.get("choice"), criteria,
                     fields.get("reasoning", ""), fields.get("confidence"), names)
    except LabelError as exc:
        # Show the same task again with the message and what was typed.
        task = next_task(conn, user.id, settings(request).lease_seconds)
        return _page(request, conn, user, task, status=exc.status, error=str(exc), values=fields)
    return RedirectResponse("/annotate?saved=1", status_code=303)


# The JSON API routes are async: their SQLite work takes well under a millisecond, so they
# run it on the event loop instead of handing each request to a worker thread (the hand-off
# and the threads' contention for the GIL cost more than the work; see docs/serve.md, "Load").

@router.get("/api/next")
async def api_next(request: Request, user: User = Depends(api_user), conn: sqlite3.Connection = Depends(db)) -> Any:
    """The caller's current task (`response_a` is shown-left); `{"done": true}` when none is left."""
    task = next_task(conn, user.id, settings(request).lease_seconds)
    return {"done": True} if task is None else task.to_json()


@router.post("/api/labels")
async def api_label(request: Request, body: Any = Depends(json_body), user: User = Depends(api_user),
                    conn: sqlite3.Connection = Depends(db)) -> Any:
    """Submit `{assignment_id, choice, criteria, reasoning, confidence}` (choice in the shown frame).

    201 with `{"label_id": N, "duplicate": false}` the first time; 200 with
    `"duplicate": true` and the same id when the same label is sent again (a retry); 409 when a
    different label is sent for an assignment already labelled.
    Bad fields raise LabelError, which the app answers as 4xx naming the field.
    """
    body = json_object(body)
    label_id, duplicate = submit_label(conn, user.id, body.get("assignment_id"), body.get("choice"),
                                       body.get("criteria"), body.get("reasoning", ""), body.get("confidence"),
                                       settings(request).criteria)
    return JSONResponse({"label_id": label_id, "duplicate": duplicate}, status_code=200 if duplicate else 201)
