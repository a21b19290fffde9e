"""The FastAPI application: `create_app(Settings(db=...))`.

Pages (HTML, cookie login):  /login  /logout  /annotate  /chat  /admin
JSON API (Bearer token):     /api/me  /api/next  /api/labels  /api/chat  /api/feedback
                             /api/admin/stats  /api/admin/items  /api/admin/export/{kind}
Health check (no token):     /healthz

Every response carries a Content-Security-Policy that allows only this
server's own script and style files, so even a rendering bug could not run
injected inline script; all model and user text is escaped by the templates.
"""
from __future__ import annotations

import contextlib
import sqlite3
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.datastructures import MutableHeaders

from . import admin_routes, annotate_routes, chat_routes
from .db import Checkpointer, ConnectionPool, init_db, user_for_token
from .validate import RequestError
from .web import COOKIE, HERE, LoginRequired, Settings, User, api_user, form, login_url, page_user, render, safe_next

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC = {"app.css": "text/css", "app.js": "text/javascript"}


class SecurityHeaders:
    """Plain ASGI middleware adding SECURITY_HEADERS to every response (cheaper than
    `@app.middleware("http")`, which wraps each response in extra streams and tasks)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings) -> FastAPI:
    init_db(settings.db)
    pool = ConnectionPool(settings.db)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """While the server runs, WAL checkpoints happen on a background thread (db.Checkpointer)."""
        with Checkpointer(settings.db):
            pool.set_autocheckpoint(False)
            try:
                yield
            finally:
                pool.set_autocheckpoint(True)
        pool.close()

    app = FastAPI(title="posttrain serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.settings = settings
    app.state.pool = pool

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(login_url(exc.next_url), status_code=303)

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError) -> Response:
        """Any bad body or field, from any route: 4xx with `{"detail", "field"}` (validate.py)."""
        return JSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        """A query or path parameter of the wrong type (`?min_labels=abc`): the same answer shape."""
        first = exc.errors()[0] if exc.errors() else {}
        field = str(first.get("loc", ["", "request"])[-1])
        return JSONResponse(RequestError(field, str(first.get("msg", "invalid value")).lower()).to_json(),
                            status_code=422)

    @app.exception_handler(sqlite3.OperationalError)
    async def database_busy(request: Request, exc: sqlite3.OperationalError) -> Response:
        """Another process held the write lock past the busy timeout (a huge `serve import`)."""
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise exc
        return JSONResponse({"detail": "the database is busy; try again"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response("not found", status_code=404)
        return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                        headers={"Cache-Control": "max-age=300"})

    @app.get("/login")
    def login_page(next: str = "/") -> Response:
        return render("login.html", next=safe_next(next), user=None)

    @app.post("/login")
    def login(fields: dict[str, str] = Depends(form)) -> Response:
        token = fields.get("token", "").strip()
        conn = app.state.pool.acquire()
        try:
            user = user_for_token(conn, token)
        finally:
            app.state.pool.release(conn)
        if user is None:
            return render("login.html", status=401, next=safe_next(fields.get("next")), user=None,
                          error="Unknown token. Ask the admin for yours (posttrain serve token).")
        response = RedirectResponse(safe_next(fields.get("next")), status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=settings.secure_cookies,
                            max_age=30 * 24 * 3600)
        return response

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/")
    def home(user: User = Depends(page_user)) -> Response:
        return render("home.html", user=user)

    @app.get("/api/me")
    def me(user: User = Depends(api_user)) -> dict:
        return {"user": user.name, "admin": user.is_admin}

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": getattr(exc, "detail", "not found")}, status_code=404)
        return render("message.html", status=404, user=None, title="Not found",
                      message=str(getattr(exc, "detail", "There is nothing here.")))

    app.include_router(annotate_routes.router)
    app.include_router(chat_routes.router)
    app.include_router(admin_routes.router)
    return app
