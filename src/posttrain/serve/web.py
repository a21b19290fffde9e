"""What every route shares: settings, the per-request database connection,
authentication, form parsing and HTML rendering.

Authentication: a request carries a token either as `Authorization: Bearer T`
(API clients) or in the `posttrain_token` cookie set by the login form
(HttpOnly, SameSite=Strict, so other sites cannot make the browser send it).
Pages redirect to /login without a valid token; /api routes answer 401.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader

from .assign import DEFAULT_CRITERIA, DEFAULT_LEASE_SECONDS
from .db import ConnectionPool, user_for_token
from .feedback import ChatBackend
from .markup import render_markdown
from .validate import MAX_BODY_BYTES, RequestError, parse_json_body

COOKIE = "posttrain_token"
MAX_FORM_BYTES = 256 * 1024
HERE = Path(__file__).parent

_templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                         trim_blocks=True, lstrip_blocks=True)
_templates.filters["markdown"] = render_markdown  # `{{ text|markdown }}`: rendered and sanitised (markup.py)


@dataclass
class Settings:
    """Everything a running app needs to know (built by `posttrain serve` or by tests)."""

    db: str
    variants: dict[str, str] = field(default_factory=lambda: {"A": "echo", "B": "echo"})
    backends: dict[str, ChatBackend] = field(default_factory=dict)
    experiment: str = "default"
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    criteria: tuple[str, ...] = DEFAULT_CRITERIA
    secure_cookies: bool = False  # set when served over https


@dataclass
class User:
    id: int
    name: str
    is_admin: bool


class LoginRequired(Exception):
    """Raised by page routes; the app turns it into a redirect to /login."""

    def __init__(self, next_url: str = "/"):
        self.next_url = next_url


def settings(request: Request) -> Settings:
    return request.app.state.settings


async def db(request: Request) -> AsyncIterator[sqlite3.Connection]:
    """A pooled connection for the request, returned to the pool when the response is done.

    Async so that FastAPI runs it on the event loop: taking a connection from the pool
    does not block, and a thread hop would cost more than the work.
    """
    pool: ConnectionPool = request.app.state.pool
    conn = pool.acquire()
    try:
        yield conn
    finally:
        pool.release(conn)


def request_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def _user(request: Request, conn: sqlite3.Connection) -> User | None:
    row = user_for_token(conn, request_token(request))
    return User(row["id"], row["name"], bool(row["is_admin"])) if row else None


async def page_user(request: Request, conn: sqlite3.Connection = Depends(db)) -> User:
    """Dependency for HTML pages: the logged-in user, or a redirect to the login form.

    It shares the request's connection with the route (FastAPI caches `db` per request).
    """
    user = _user(request, conn)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return user


async def api_user(request: Request, conn: sqlite3.Connection = Depends(db)) -> User:
    """Dependency for /api routes: the token's user, or 401.

    Async, like `page_user`: one indexed lookup is cheaper than a hop to a worker thread.
    """
    user = _user(request, conn)
    if user is None:
        raise HTTPException(401, "missing or invalid token", headers={"WWW-Authenticate": "Bearer"})
    return user


async def api_admin(user: User = Depends(api_user)) -> User:
    if not user.is_admin:
        raise HTTPException(403, "admin token required")
    return user


async def form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body as {name: last value}.

    Parsed by hand (the forms here are small and flat), which spares the app
    the python-multipart dependency. Cross-site posts are refused by Origin.
    """
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-site form post refused")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise HTTPException(400, "form is not UTF-8") from None
    return {name: values[-1] for name, values in fields.items()}


async def json_body(request: Request) -> Any:
    """The request's JSON body, parsed and checked by `validate.parse_json_body` (see there).

    Read in chunks so that an oversized body is refused without holding all of it.
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(None, f"body too large (more than {MAX_BODY_BYTES} bytes)", status=413)
        chunks.append(chunk)
    return parse_json_body(b"".join(chunks))


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render a template; every `{{ value }}` is HTML-escaped (autoescape is on), except the
    output of the `markdown` filter, which is sanitised HTML."""
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)


def safe_next(url: str | None) -> str:
    """Only same-site paths are allowed as the post-login target (no open redirects)."""
    # Browsers drop tabs/newlines inside URLs ("/\t/evil" becomes "//evil"), so refuse them too.
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url or not url.isprintable():
        return "/"
    return url


def login_url(next_url: str) -> str:
    return "/login?next=" + quote(next_url, safe="")
