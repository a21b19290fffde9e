"""Exports from the serve database to the JSONL the rest of posttrain reads.

- `annotation_rows`: one `records.Annotation` per label (for `posttrain quality`
  agreement and bias tools). `choice` and `criteria` are in the item's frame
  (A = the item's response_a); `swapped` says whether response_b was shown on
  the left, so the position the annotator clicked is
  `flip(choice) if swapped else choice` (`extra.shown_choice`).
- `preference_rows`: `records.PreferencePair` rows. `aggregate="majority"`
  gives one pair per item from the majority of its A/B votes (ties in the
  vote, or a "tie" majority, go to the ties list); `aggregate="each"` gives one
  pair per non-tie label.
- `feedback_rows`: the chat feedback log for `posttrain ab`:
  `variant, user, thumbs (1/-1/null), rating (1-5/null), text, timestamp`
  plus `model, conversation_id, message_id, prompt, response`.
"""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from typing import Any, Iterator

from ..records import Annotation, PreferencePair
from .assign import flip

_LABELS = (
    "SELECT l.id, l.assignment_id, l.choice, l.criteria, l.reasoning, l.confidence, l.created_at, "
    "a.swapped, u.name AS annotator, i.item_id, i.prompt, i.response_a, i.response_b, i.extra, i.k, i.seq "
    "FROM labels l JOIN assignments a ON a.id = l.assignment_id JOIN users u ON u.id = l.user_id "
    "JOIN items i ON i.seq = l.item_seq ORDER BY i.seq, l.id")


def annotation_rows(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    for row in conn.execute(_LABELS):
        record = Annotation(
            item_id=row["item_id"], annotator=row["annotator"], prompt=json.loads(row["prompt"]),
            response_a=row["response_a"], response_b=row["response_b"], choice=row["choice"],
            criteria=json.loads(row["criteria"]), reasoning=row["reasoning"], confidence=row["confidence"],
            swapped=bool(row["swapped"]),
            extra={"label_id": row["id"], "assignment_id": row["assignment_id"], "timestamp": row["created_at"],
                   "shown_choice": flip(row["choice"]) if row["swapped"] else row["choice"]})
        yield record.to_dict()


def _pair(prompt: list, a: str, b: str, winner: str, extra: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = (a, b) if winner == "A" else (b, a)
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, extra=extra).to_dict()


def preference_rows(conn: sqlite3.Connection, aggregate: str = "majority",
                    min_labels: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pairs, ties). Items with fewer than `min_labels` labels are left out."""
    by_item: dict[int, list[sqlite3.Row]] = {}
    for row in conn.execute(_LABELS):
        by_item.setdefault(row["seq"], []).append(row)
    pairs: list[dict[str, Any]] = []
    ties: list[dict[str, Any]] = []
    for rows in by_item.values():
        if len(rows) < min_labels:
            continue
        first = rows[0]
        prompt = json.loads(first["prompt"])
        item_extra = json.loads(first["extra"])
        if aggregate == "each":
            for row in rows:
                extra = {**item_extra, "item_id": row["item_id"], "annotator": row["annotator"],
                         "confidence": row["confidence"]}
                if row["choice"] == "tie":
                    ties.append({"prompt": prompt, "response_a": row["response_a"], "response_b": row["response_b"],
                                 **extra})
                else:
                    pairs.append(_pair(prompt, row["response_a"], row["response_b"], row["choice"], extra))
            continue
        votes = Counter(row["choice"] for row in rows)
        counts = {"A": votes["A"], "B": votes["B"], "tie": votes["tie"]}
        extra = {**item_extra, "item_id": first["item_id"], "votes": counts, "n_labels": len(rows),
                 "agreement": round(max(counts.values()) / len(rows), 4)}
        top = max(counts.values())
        winners = [c for c, n in counts.items() if n == top]
        if winners in (["A"], ["B"]):
            pairs.append(_pair(prompt, first["response_a"], first["response_b"], winners[0], extra))
        else:
            ties.append({"prompt": prompt, "response_a": first["response_a"], "response_b": first["response_b"],
                         **extra})
    return pairs, ties


def feedback_rows(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    rows = conn.execute(
        "SELECT f.variant, u.name AS user, f.thumbs, f.rating, f.text, f.timestamp, c.model, c.id AS conversation_id, "
        "f.message_id, m.content AS response, "
        "(SELECT p.content FROM messages p WHERE p.conversation_id = m.conversation_id AND p.id < m.id "
        " AND p.role = 'user' ORDER BY p.id DESC LIMIT 1) AS prompt "
        "FROM feedback f JOIN users u ON u.id = f.user_id JOIN messages m ON m.id = f.message_id "
        "JOIN conversations c ON c.id = m.conversation_id ORDER BY f.timestamp, f.id")
    for row in rows:
        yield {"variant": row["variant"], "user": row["user"], "thumbs": row["thumbs"], "rating": row["rating"],
               "text": row["text"], "timestamp": row["timestamp"], "model": row["model"],
               "conversation_id": row["conversation_id"], "message_id": row["message_id"],
               "prompt": row["prompt"], "response": row["response"]}


EXPORT_KINDS = ("preferences", "annotations", "feedback")


def export_rows(conn: sqlite3.Connection, kind: str, aggregate: str = "majority",
                min_labels: int = 1) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of one export kind; the second list is only non-empty for preference ties."""
    if kind == "preferences":
        return preference_rows(conn, aggregate, min_labels)
    if kind == "annotations":
        return list(annotation_rows(conn)), []
    if kind == "feedback":
        return list(feedback_rows(conn)), []
    raise ValueError(f"unknown export kind {kind!r} (known: {', '.join(EXPORT_KINDS)})")
