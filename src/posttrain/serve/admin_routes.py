"""Admin-only routes: a progress page, item import and exports over HTTP.

They need a token created with `posttrain serve token --admin`. The same
operations exist on the command line (`serve import`, `serve export`), which
work on the database file directly.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..errors import InputError
from .assign import overview
from .export import export_rows
from .items import insert_items, item_from_row
from .validate import RequestError, json_object, whole_number
from .web import User, api_admin, db, json_body, page_user, render

router = APIRouter()
MAX_K = 1000  # labels wanted per item; far more people than any annotation project has


@router.get("/admin")
def admin_page(user: User = Depends(page_user), conn: sqlite3.Connection = Depends(db)) -> Response:
    if not user.is_admin:
        return render("message.html", status=403, user=user, title="Admins only",
                      message="This page needs an admin token (posttrain serve token --admin).")
    return render("admin.html", user=user, stats=overview(conn))


@router.get("/api/admin/stats")
def api_stats(user: User = Depends(api_admin), conn: sqlite3.Connection = Depends(db)) -> Any:
    return overview(conn)


@router.post("/api/admin/items")
def api_import(body: Any = Depends(json_body), user: User = Depends(api_admin),
               conn: sqlite3.Connection = Depends(db)) -> Any:
    """`{"items": [row, ...], "k": 3}` with rows as for `posttrain serve import`."""
    body = json_object(body)
    if not isinstance(body.get("items"), list):
        raise RequestError("items", "expected a list of item rows")
    k = whole_number(body.get("k", 3), "k", 1, MAX_K)
    for index, row in enumerate(body["items"]):
        if not isinstance(row, dict):
            raise RequestError(f"items[{index}]", "expected an object (prompt + response_a/response_b)")
    items = []
    for index, row in enumerate(body["items"]):
        try:
            items.append(item_from_row(row))
        except InputError as exc:  # the same rules as `serve import`, located in the request body
            raise RequestError(f"items[{index}].{exc.field}", exc.message) from None
    added, skipped = insert_items(conn, items, k)
    return {"added": added, "already_present": skipped}


_KINDS = {"preferences": ("preferences", 0), "ties": ("preferences", 1), "annotations": ("annotations", 0),
          "feedback": ("feedback", 0)}


@router.get("/api/admin/export/{kind}")
def api_export(kind: str, request: Request, aggregate: str = "majority", min_labels: int = 1,
               user: User = Depends(api_admin), conn: sqlite3.Connection = Depends(db)) -> Response:
    """JSONL (`application/x-ndjson`): preferences | ties | annotations | feedback."""
    if kind not in _KINDS or aggregate not in ("majority", "each"):
        return JSONResponse({"detail": f"unknown export; kinds: {', '.join(_KINDS)}; "
                                       "aggregate: majority or each"}, status_code=404)
    if min_labels < 1:
        return JSONResponse({"detail": "field 'min_labels': must be at least 1", "field": "min_labels"},
                            status_code=422)
    base, part = _KINDS[kind]
    rows = export_rows(conn, base, aggregate, min_labels)[part]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    # A file name, so that the admin page's links save a .jsonl file (curl prints it as before).
    name = f"{kind}{'-each' if aggregate == 'each' and base == 'preferences' else ''}.jsonl"
    return Response(text, media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
