"""Command-line entry points: `posttrain serve`, `serve token`, `serve import`, `serve export`."""
from __future__ import annotations

import errno
import socket
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ..config import help_field, parse_config
from ..data.options import DataArgs, read_kwargs
from ..errors import ConfigError, PosttrainError
from ..jsonl import write_jsonl
from .db import connect, create_user, init_db, open_existing
from .export import EXPORT_KINDS, export_rows
from .feedback import ModelBackend, make_backend, parse_variants
from .items import insert_items, read_items

DEFAULT_DB = "serve.db"


@dataclass
class ServeConfig:
    db: str = help_field(DEFAULT_DB, "SQLite database file (created if missing)")
    host: str = help_field("127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    port: int = help_field(8000, "port to listen on")
    variants: list[str] = help_field(["A=echo", "B=echo"], "chat variants as NAME=MODEL (a model name, a "
                                     "directory, or `echo` for a model-free stand-in)")
    experiment: str = help_field("default", "experiment name; salts the sticky user -> variant hash")
    lease_minutes: float = help_field(30.0, "how long an unfinished assignment holds its item's slot")
    max_new_tokens: int = help_field(128, "reply length limit for model variants", aliases=["max_tokens"])
    temperature: float = help_field(0.7, "sampling temperature for model variants (0 = greedy)")
    secure_cookies: bool = help_field(False, "mark the login cookie Secure (when served behind https)")
    log_level: str = help_field("info", "uvicorn log level", choices=["critical", "error", "warning", "info", "debug"])


def check_listen(host: str, port: int) -> None:
    """PosttrainError when the server could not listen on host:port (the address is taken, or the
    host is not an address of this machine). uvicorn would report it only after the models load,
    with its own log line and exit code 3."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError("host", f"cannot listen on {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            hint = " (another server is there: choose another --port)" if exc.errno == errno.EADDRINUSE else ""
            raise PosttrainError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None


def serve_main(argv: list[str]) -> int:
    cfg = parse_config(ServeConfig, argv, prog="posttrain serve",
                       description="Run the annotation and feedback web app.")
    if not 0 < cfg.port < 65536:
        raise ConfigError("port", f"must be between 1 and 65535, got {cfg.port}")
    if cfg.lease_minutes <= 0:
        raise ConfigError("lease_minutes", "must be positive")
    variants = parse_variants(cfg.variants)
    check_listen(cfg.host, cfg.port)  # before any model loads: a busy port or a bad host is one line
    import uvicorn

    from .app import create_app
    from .web import Settings

    backends = {name: make_backend(model, cfg.max_new_tokens, cfg.temperature) for name, model in variants.items()}
    for name, backend in backends.items():
        if isinstance(backend, ModelBackend):
            print(f"posttrain serve: loading variant {name} ({variants[name]})", file=sys.stderr, flush=True)
            backend.load()  # fail now, with the loader's one-line message, rather than on the first chat
    app = create_app(Settings(db=cfg.db, variants=variants, backends=backends, experiment=cfg.experiment,
                              lease_seconds=cfg.lease_minutes * 60, secure_cookies=cfg.secure_cookies))
    print(f"posttrain serve: http://{cfg.host}:{cfg.port}/  (database {cfg.db}; "
          f"variants {', '.join(f'{k}={v}' for k, v in variants.items())})", file=sys.stderr, flush=True)
    # One worker process: SQLite is the shared state, and model variants live in this process.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, workers=1)
    return 0


@dataclass
class TokenConfig:
    annotator: str | None = help_field(None, "the person's name (shown in exports as `annotator` / `user`)")
    db: str = help_field(DEFAULT_DB, "SQLite database file (created if missing)")
    admin: bool = help_field(False, "the token may also import items and export over HTTP (/api/admin)")
    replace: bool = help_field(False, "issue a new token for an existing name (the old one stops working)")


def token_main(argv: list[str]) -> int:
    cfg = parse_config(TokenConfig, argv, prog="posttrain serve token", positional="annotator",
                       description="Create a login token for an annotator (printed once; only its hash is stored).")
    if not cfg.annotator or not cfg.annotator.strip():
        raise ConfigError("annotator", "give a name: posttrain serve token --db DB --annotator NAME")
    if len(cfg.annotator.strip()) > 100 or any(unicodedata.category(c) in ("Cc", "Cs") for c in cfg.annotator):
        # the name appears in exports, the admin page and every agreement table
        raise ConfigError("annotator", f"{cfg.annotator!r}: use at most 100 characters and no control characters")
    init_db(cfg.db)
    conn = connect(cfg.db)
    try:
        token = create_user(conn, cfg.annotator, admin=cfg.admin, replace=cfg.replace)
    finally:
        conn.close()
    role = "admin" if cfg.admin else "annotator"
    print(f"posttrain serve token: {role} '{cfg.annotator.strip()}' created in {cfg.db}; "
          "the token is shown only now:", file=sys.stderr)
    print(token)
    return 0


@dataclass
class ImportConfig(DataArgs):
    input: str | None = help_field(None, "data file (JSONL, CSV, Parquet, dataset directory) of prompt + response_a/response_b or prompt + chosen/rejected")
    db: str = help_field(DEFAULT_DB, "SQLite database file (created if missing)")
    k: int = help_field(3, "labels wanted per item (how many different annotators see it)")


def import_main(argv: list[str]) -> int:
    cfg = parse_config(ImportConfig, argv, prog="posttrain serve import", positional="input",
                       description="Load pairwise items to annotate.")
    if not cfg.input:
        raise ConfigError("input", "give a JSONL file: posttrain serve import --db DB FILE.jsonl")
    if cfg.k < 1:
        raise ConfigError("k", f"must be at least 1, got {cfg.k}")
    items = read_items(cfg.input, **read_kwargs(cfg))  # all rows validated before anything is stored
    init_db(cfg.db)
    conn = connect(cfg.db)
    try:
        added, skipped = insert_items(conn, items, cfg.k)
    finally:
        conn.close()
    print(f"posttrain serve import: {added} items added to {cfg.db} (k={cfg.k})"
          + (f", {skipped} already present" if skipped else ""))
    return 0


@dataclass
class ExportConfig:
    output: str | None = help_field(None, "JSONL file to write")
    db: str = help_field(DEFAULT_DB, "SQLite database file")
    kind: str = help_field("preferences", "what to export: preference pairs, one annotation row per label, "
                           "or the chat feedback log for `posttrain ab`", choices=list(EXPORT_KINDS))
    aggregate: str = help_field("majority", "preferences: one pair per item by majority vote, or one per label",
                                choices=["majority", "each"])
    min_labels: int = help_field(1, "preferences: leave out items with fewer labels than this")
    ties_output: str | None = help_field(None, "preferences: also write the tied items here (else they are skipped)")


def _check_output(field: str, path: str) -> None:
    """Refuse an output that cannot be a file before any work is done."""
    if Path(path).is_dir():
        raise ConfigError(field, f"{path} is a directory; give a file name such as {Path(path) / 'labels.jsonl'}")


def export_main(argv: list[str]) -> int:
    cfg = parse_config(ExportConfig, argv, prog="posttrain serve export", positional="output",
                       description="Write labels or feedback from the database as JSONL.")
    if not cfg.output:
        raise ConfigError("output", "give a file to write: posttrain serve export --db DB --kind KIND OUT.jsonl")
    if cfg.min_labels < 1:
        raise ConfigError("min_labels", f"must be at least 1, got {cfg.min_labels}")
    _check_output("output", cfg.output)
    if cfg.ties_output:
        _check_output("ties_output", cfg.ties_output)
    conn = open_existing(cfg.db)
    try:
        rows, ties = export_rows(conn, cfg.kind, cfg.aggregate, cfg.min_labels)
    finally:
        conn.close()
    count = write_jsonl(cfg.output, rows)
    message = f"posttrain serve export: {count} {cfg.kind} rows -> {cfg.output}"
    if cfg.kind == "preferences":
        if cfg.ties_output:
            message += f"; {write_jsonl(cfg.ties_output, ties)} ties -> {cfg.ties_output}"
        elif ties:
            message += f"; {len(ties)} ties skipped (--ties-output FILE keeps them)"
    print(message)
    return 0
