"""Pairwise annotation: handing out items and recording labels.

Rules (all enforced inside one `BEGIN IMMEDIATE` transaction per call, so they
hold under any number of concurrent requests):

- An item wants `k` labels. Its taken slots are its finished labels plus the
  open assignments whose lease has not run out; it is handed out only while
  taken < k.
- A person never gets the same item twice (`UNIQUE(item, user)` on assignments).
- A person with an unfinished assignment gets that one back (a reload does not
  burn items), unless the item filled up meanwhile.
- Items already started come first (fill items to k before opening new ones),
  then import order.
- The display order is a coin flip per assignment, stored as `swapped`
  (1 = the item's response_b is shown on the left as "A"). Labels are stored in
  the item's own frame: a click on the left response of a swapped assignment is
  stored as "B".
- A submission names its assignment id; sending it again returns the first
  label and changes nothing (idempotent retries).
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..records import Message
from .db import now_iso, write_transaction
from .validate import RequestError, text, whole_number

CHOICES = ("A", "B", "tie")
DEFAULT_CRITERIA = ("helpfulness", "harmlessness", "honesty")
DEFAULT_LEASE_SECONDS = 30 * 60
MAX_REASONING_CHARS = 10_000


class LabelError(RequestError):
    """A submission that cannot be accepted; the message (naming the field) is shown to the annotator."""

    def __init__(self, message: str, status: int = 422, field: str | None = None):
        super().__init__(field, message, status)


@dataclass
class Task:
    """One assignment as the annotator sees it: `left` is shown as A, `right` as B."""

    assignment_id: str
    item_id: str
    prompt: list[Message]
    left: str
    right: str
    swapped: bool

    def to_json(self) -> dict[str, Any]:
        return {"assignment_id": self.assignment_id, "item_id": self.item_id, "prompt": self.prompt,
                "response_a": self.left, "response_b": self.right}


def flip(choice: str) -> str:
    """A <-> B, tie stays: converts between the shown frame and the item frame."""
    return {"A": "B", "B": "A"}.get(choice, choice)


def _task(conn: sqlite3.Connection, assignment_id: str) -> Task:
    row = conn.execute(
        "SELECT a.id, a.swapped, i.item_id, i.prompt, i.response_a, i.response_b "
        "FROM assignments a JOIN items i ON i.seq = a.item_seq WHERE a.id = ?", (assignment_id,)).fetchone()
    left, right = (row["response_b"], row["response_a"]) if row["swapped"] else (row["response_a"], row["response_b"])
    return Task(row["id"], row["item_id"], json.loads(row["prompt"]), left, right, bool(row["swapped"]))


# Live leases on an item: open assignments whose lease has not run out.
_LEASES = ("(SELECT COUNT(*) FROM assignments t WHERE t.item_seq = i.seq "
           "AND t.status = 'open' AND t.expires_at > :now)")

# Items already started (labelled, or leased right now) and not full: the ones to fill first.
# Both halves of the IN set are read from small partial indexes, never by scanning all items.
_PICK_STARTED = (
    f"SELECT seq, taken FROM (SELECT i.seq, i.k, i.n_labels + {_LEASES} AS taken FROM items i "
    "WHERE i.seq IN (SELECT item_seq FROM assignments WHERE status = 'open' AND expires_at > :now "
    "                UNION SELECT seq FROM items WHERE n_labels > 0 AND n_labels < k) "
    "AND NOT EXISTS (SELECT 1 FROM assignments m WHERE m.item_seq = i.seq AND m.user_id = :user)) "
    "WHERE taken < k ORDER BY taken DESC, seq LIMIT 1")

# Otherwise the first fresh item in import order: no labels, no live lease, never given to this user.
_PICK_FRESH = (
    "SELECT i.seq FROM items i WHERE i.n_labels = 0 AND NOT EXISTS (SELECT 1 FROM assignments t "
    "WHERE t.item_seq = i.seq AND (t.user_id = :user OR (t.status = 'open' AND t.expires_at > :now))) "
    "ORDER BY i.seq LIMIT 1")


def _pick_item(conn: sqlite3.Connection, user_id: int, now: float) -> int | None:
    """The item to hand out next: most labels-or-leases first (fill items to k), then import order.

    Same order as ranking every item by (taken desc, seq), in time that does not grow
    with the number of untouched or finished items.
    """
    params = {"now": now, "user": user_id}
    row = conn.execute(_PICK_STARTED, params).fetchone() or conn.execute(_PICK_FRESH, params).fetchone()
    return None if row is None else row["seq"]


def next_task(conn: sqlite3.Connection, user_id: int, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              coin: Callable[[], int] = lambda: secrets.randbelow(2)) -> Task | None:
    """The annotator's current task, or a newly assigned one, or None when nothing is left."""
    now = time.time()
    with write_transaction(conn):
        open_rows = conn.execute(
            "SELECT a.id, i.k, i.n_labels FROM assignments a JOIN items i ON i.seq = a.item_seq "
            "WHERE a.user_id = ? AND a.status = 'open' ORDER BY a.created_at, a.id", (user_id,)).fetchall()
        for row in open_rows:
            if row["n_labels"] >= row["k"]:  # filled by others while this lease had lapsed
                conn.execute("UPDATE assignments SET status = 'released' WHERE id = ?", (row["id"],))
                continue
            conn.execute("UPDATE assignments SET expires_at = ? WHERE id = ?", (now + lease_seconds, row["id"]))
            return _task(conn, row["id"])
        seq = _pick_item(conn, user_id, now)
        if seq is None:
            return None
        assignment_id = secrets.token_hex(16)
        conn.execute(
            "INSERT INTO assignments (id, item_seq, user_id, swapped, status, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, 'open', ?, ?)",
            (assignment_id, seq, user_id, int(coin()), now_iso(), now + lease_seconds))
        return _task(conn, assignment_id)


def validate_label(choice: Any, criteria: Any, reasoning: Any, confidence: Any,
                   criteria_names: tuple[str, ...] = DEFAULT_CRITERIA) -> tuple[str, dict[str, str], str, int]:
    """Check a submission (in the shown frame) and return it normalised, or raise LabelError."""
    if choice not in CHOICES:
        raise LabelError(f"must be one of {', '.join(CHOICES)}", field="choice")
    criteria = criteria or {}
    if not isinstance(criteria, dict):
        raise LabelError("must be a mapping of criterion to A, B or tie", field="criteria")
    for name, value in criteria.items():
        if name not in criteria_names:
            raise LabelError(f"unknown criterion {name!r} (known: {', '.join(criteria_names)})", field="criteria")
        if value not in CHOICES:
            raise LabelError(f"must be one of {', '.join(CHOICES)}", field=f"criteria.{name}")
    try:
        reasoning = text(reasoning, "reasoning", MAX_REASONING_CHARS)
        confidence = whole_number(confidence, "confidence", 1, 5)
    except RequestError as exc:
        raise LabelError(exc.message, exc.status, exc.field) from None
    return choice, dict(criteria), reasoning, confidence


def submit_label(conn: sqlite3.Connection, user_id: int, assignment_id: str, choice: Any, criteria: Any = None,
                 reasoning: Any = "", confidence: Any = None,
                 criteria_names: tuple[str, ...] = DEFAULT_CRITERIA) -> tuple[int, bool]:
    """Record a label given in the shown frame. Returns (label id, was_duplicate)."""
    choice, criteria, reasoning, confidence = validate_label(choice, criteria, reasoning, confidence, criteria_names)
    if not isinstance(assignment_id, str) or not assignment_id:
        raise LabelError("expected the assignment id from /api/next (text)", field="assignment_id")
    with write_transaction(conn):
        assignment = conn.execute("SELECT id, item_seq, swapped FROM assignments WHERE id = ? AND user_id = ?",
                                  (assignment_id, user_id)).fetchone()
        if assignment is None:  # unknown, or someone else's: do not reveal which
            raise LabelError("no such assignment for this annotator", status=404, field="assignment_id")
        if assignment["swapped"]:
            choice = flip(choice)
            criteria = {name: flip(value) for name, value in criteria.items()}
        existing = conn.execute("SELECT id, choice, criteria, reasoning, confidence FROM labels "
                                "WHERE assignment_id = ?", (assignment["id"],)).fetchone()
        if existing is not None:
            # A retry of the same label is acknowledged again; a *different* label for an assignment
            # already labelled is refused, not acknowledged as if it had been stored.
            same = (existing["choice"], json.loads(existing["criteria"]), existing["reasoning"],
                    existing["confidence"]) == (choice, criteria, reasoning, confidence)
            if not same:
                raise LabelError("this assignment is already labelled, differently; a label cannot be changed "
                                 "(ask an admin to relabel the item)", status=409, field="assignment_id")
            return existing["id"], True
        cursor = conn.execute(
            "INSERT INTO labels (assignment_id, item_seq, user_id, choice, criteria, reasoning, confidence, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (assignment["id"], assignment["item_seq"], user_id, choice, json.dumps(criteria), reasoning,
             confidence, now_iso()))
        conn.execute("UPDATE assignments SET status = 'done' WHERE id = ?", (assignment["id"],))
        conn.execute("UPDATE items SET n_labels = n_labels + 1 WHERE seq = ?", (assignment["item_seq"],))
        return int(cursor.lastrowid), False


def user_progress(conn: sqlite3.Connection, user_id: int) -> int:
    """How many labels this annotator has given."""
    return conn.execute("SELECT COUNT(*) FROM labels WHERE user_id = ?", (user_id,)).fetchone()[0]


def overview(conn: sqlite3.Connection) -> dict[str, Any]:
    """Counts for the admin page: items, complete items, labels, labels per annotator."""
    items, complete = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(n_labels >= k), 0) FROM items").fetchone()
    per_user = conn.execute(
        "SELECT u.name, COUNT(l.id) AS n FROM users u LEFT JOIN labels l ON l.user_id = u.id "
        "GROUP BY u.id ORDER BY u.name").fetchall()
    labels = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    feedback = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    return {"items": items, "items_complete": complete, "labels": labels, "feedback": feedback,
            "labels_per_user": {row["name"]: row["n"] for row in per_user}}
