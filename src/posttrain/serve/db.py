"""The SQLite store behind `posttrain serve`: schema, connections, transactions, tokens.

One database file holds everything: users (annotators and admins, with hashed
tokens), pairwise items, assignments, labels, chat conversations and feedback.

Concurrency model (why it is safe with many clients):
- WAL journal mode: readers never block the one writer and vice versa.
- Every request opens its own connection (`connect`), so no connection is
  shared between threads.
- Every write runs inside `write_transaction`, which starts with
  `BEGIN IMMEDIATE`: the write lock is taken *before* we read what we are about
  to change, so two requests cannot both see "item 7 needs one more label" and
  both take it.
- Writers of one process queue on a Python lock per database file before
  `BEGIN IMMEDIATE`. SQLite's own wait (`busy_timeout`) polls with sleeps of
  up to 100 ms, which under 30 concurrent clients made the slowest requests
  wait a second; the lock hands over at once. `busy_timeout` still covers
  writers in other processes (`serve import` while the server runs).
- Durability: `synchronous = NORMAL` with WAL. A commit is in the WAL file (the
  OS page cache) before the request is answered, so killing the server, even
  with kill -9, loses nothing acknowledged; only a power cut or OS crash can
  lose the last commits (`synchronous = FULL` would fsync every commit).
- All SQL uses `?` placeholders; no user text is ever formatted into SQL.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..errors import PosttrainError

BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    token_hash  TEXT NOT NULL UNIQUE,
    is_admin    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    seq         INTEGER PRIMARY KEY,          -- import order
    item_id     TEXT NOT NULL UNIQUE,
    prompt      TEXT NOT NULL,                -- JSON message list
    response_a  TEXT NOT NULL,
    response_b  TEXT NOT NULL,
    k           INTEGER NOT NULL,             -- labels wanted for this item
    n_labels    INTEGER NOT NULL DEFAULT 0,   -- labels given so far (kept by submit_label)
    extra       TEXT NOT NULL DEFAULT '{}',   -- JSON: the input row's other fields
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    id          TEXT PRIMARY KEY,             -- random; the idempotency key of a submission
    item_seq    INTEGER NOT NULL REFERENCES items(seq),
    user_id     INTEGER NOT NULL REFERENCES users(id),
    swapped     INTEGER NOT NULL,             -- 1: response_b was shown on the left as "A"
    status      TEXT NOT NULL DEFAULT 'open', -- open | done | released
    created_at  TEXT NOT NULL,
    expires_at  REAL NOT NULL,                -- unix time; an open slot is held until then
    UNIQUE (item_seq, user_id)                -- nobody gets the same item twice
);
CREATE INDEX IF NOT EXISTS assignments_by_item ON assignments(item_seq, status);
CREATE INDEX IF NOT EXISTS assignments_by_user ON assignments(user_id, status);
CREATE TABLE IF NOT EXISTS labels (
    id            INTEGER PRIMARY KEY,
    assignment_id TEXT NOT NULL UNIQUE REFERENCES assignments(id),
    item_seq      INTEGER NOT NULL REFERENCES items(seq),
    user_id       INTEGER NOT NULL REFERENCES users(id),
    choice        TEXT NOT NULL,              -- A | B | tie, relative to the item's response_a/b
    criteria      TEXT NOT NULL DEFAULT '{}', -- JSON {criterion: A|B|tie}, same frame as choice
    reasoning     TEXT NOT NULL DEFAULT '',
    confidence    INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    UNIQUE (item_seq, user_id)
);
CREATE TABLE IF NOT EXISTS conversations (
    id          TEXT PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id),
    variant     TEXT NOT NULL,
    model       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE IF NOT EXISTS feedback (
    id          INTEGER PRIMARY KEY,
    message_id  INTEGER NOT NULL UNIQUE REFERENCES messages(id),  -- one (latest) verdict per reply
    user_id     INTEGER NOT NULL REFERENCES users(id),
    variant     TEXT NOT NULL,
    thumbs      INTEGER,                      -- 1 | -1 | NULL
    rating      INTEGER,                      -- 1..5 | NULL
    text        TEXT NOT NULL DEFAULT '',
    timestamp   TEXT NOT NULL
);
"""

# Created after the `n_labels` migration (a database from an older version lacks the column).
# They let `next_task` look only at items that are started or fresh instead of every item.
INDEXES = """
CREATE INDEX IF NOT EXISTS items_partly_labelled ON items(seq) WHERE n_labels > 0 AND n_labels < k;
CREATE INDEX IF NOT EXISTS items_unlabelled ON items(seq) WHERE n_labels = 0;
CREATE INDEX IF NOT EXISTS assignments_open ON assignments(expires_at) WHERE status = 'open';
"""


def now_iso() -> str:
    """UTC time as ISO 8601 with an explicit offset (parses with `datetime.fromisoformat`)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Connection(sqlite3.Connection):
    """A sqlite3 connection that carries the in-process write lock of its database file."""

    write_lock: threading.Lock


_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def _write_lock_for(path: str | Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _write_locks_guard:
        return _write_locks.setdefault(key, threading.Lock())


def connect(path: str | Path) -> Connection:
    """A new connection in autocommit mode (we issue BEGIN/COMMIT ourselves).

    `check_same_thread=False` lets a pooled connection serve requests on
    different threads; each connection is still used by one request at a time.
    """
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False, factory=Connection)
    conn.write_lock = _write_lock_for(path)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a crash loses at most the last commit
    return conn


def init_db(path: str | Path) -> None:
    """Create the file and tables if needed and switch the file to WAL mode (persistent).

    The file's directory must exist (a mistyped --db should not create directories), and
    an existing file must be a SQLite database: both are a one-line PosttrainError.
    """
    folder = Path(path).absolute().parent
    if Path(path).is_dir():
        raise PosttrainError(f"{path}: is a directory, not a database file")
    if not folder.is_dir():
        raise PosttrainError(f"{path}: directory {folder} does not exist (create it first)")
    try:
        conn = connect(path)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise PosttrainError(f"{path}: could not switch SQLite to WAL mode (got {mode!r})")
            conn.executescript(SCHEMA)
            _add_label_counts(conn)
            conn.executescript(INDEXES)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "unable to open database file", ...
        raise PosttrainError(f"{path}: cannot use as the serve database: {exc}") from None


def _add_label_counts(conn: sqlite3.Connection) -> None:
    """Migrate a database from before `items.n_labels`: add the column and count the labels."""
    with write_transaction(conn):
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(items)")}
        if "n_labels" not in columns:
            conn.execute("ALTER TABLE items ADD COLUMN n_labels INTEGER NOT NULL DEFAULT 0")
            conn.execute("UPDATE items SET n_labels = (SELECT COUNT(*) FROM labels l WHERE l.item_seq = items.seq)")


def open_existing(path: str | Path) -> sqlite3.Connection:
    """Connect to a database that must already exist (CLI commands that only read)."""
    if not Path(path).exists():
        raise PosttrainError(f"{path}: database not found (create it with `posttrain serve token` or `serve import`)")
    init_db(path)  # cheap and idempotent: adds tables a newer version introduced
    return connect(path)


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any exception.

    Writers in this process first queue on the file's lock (see the module docstring).
    """
    lock = getattr(conn, "write_lock", None) or contextlib.nullcontext()
    with lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class ConnectionPool:
    """Connections to one database file, reused across requests.

    Opening a connection (and setting its PRAGMAs) costs about as much as a
    whole label submission, so the app keeps idle ones here instead of opening
    one per request. A connection is used by one request at a time.
    """

    def __init__(self, path: str | Path, max_idle: int = 64):
        self.path, self.max_idle = path, max_idle
        self.autocheckpoint = True  # False while a Checkpointer runs for this file
        self._idle: list[Connection] = []
        self._guard = threading.Lock()

    def acquire(self) -> Connection:
        with self._guard:
            if self._idle:
                return self._idle.pop()
        conn = connect(self.path)
        if not self.autocheckpoint:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    def set_autocheckpoint(self, on: bool) -> None:
        """Switch SQLite's automatic checkpoints for the pool's connections (idle ones are reopened)."""
        self.autocheckpoint = on
        self.close()

    def release(self, conn: Connection) -> None:
        if conn.in_transaction:  # never hand on a half-done transaction
            conn.execute("ROLLBACK")
        with self._guard:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._guard:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Checkpointer:
    """Runs the WAL checkpoints of a database on a background thread instead of inside requests.

    A checkpoint copies committed pages from the WAL into the database file and fsyncs
    both, which takes milliseconds to tens of milliseconds on a busy disk. SQLite does it by
    itself inside the COMMIT that takes the WAL past 1000 pages, so one request in a few
    hundred paid for it, and with the JSON API on the event loop every request waiting
    behind that one paid too. Commits still reach the WAL file before a request is answered,
    so nothing acknowledged is lost when the process dies; only the copy into the main
    file moves off the request path. PASSIVE checkpoints never block readers or writers.

        with Checkpointer("labels.db"):   # while the server runs; pools set autocheckpoint off
            ...
    """

    def __init__(self, path: str | Path, interval_s: float = 0.5):
        self.path, self.interval_s = path, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="posttrain-serve-checkpoint", daemon=True)

    def __enter__(self) -> "Checkpointer":
        self._conn = connect(self.path)  # here, so that a failure stops the server's start-up
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self.checkpoint(self._conn)
            self.checkpoint(self._conn)
        finally:
            self._conn.close()

    @staticmethod
    def checkpoint(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:  # busy or gone: the next round (or SQLite on reopen) catches up
            pass


# ---------------------------------------------------------------------------- tokens

def hash_token(token: str) -> str:
    """SHA-256 of the token. Tokens are 192 random bits, so a fast hash is enough
    (there is nothing to brute-force); we never store the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_user(conn: sqlite3.Connection, name: str, admin: bool = False, replace: bool = False) -> str:
    """Create (or with `replace`, re-key) a user and return the new plain-text token."""
    name = name.strip()
    if not name:
        raise PosttrainError("annotator name must not be empty")
    token = secrets.token_urlsafe(24)
    with write_transaction(conn):
        existing = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
        if existing and not replace:
            raise PosttrainError(f"user '{name}' already has a token; pass --replace to issue a new one "
                                 "(the old one stops working)")
        if existing:
            conn.execute("UPDATE users SET token_hash = ?, is_admin = ? WHERE id = ?",
                         (hash_token(token), int(admin), existing["id"]))
        else:
            conn.execute("INSERT INTO users (name, token_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                         (name, hash_token(token), int(admin), now_iso()))
    return token


def user_for_token(conn: sqlite3.Connection, token: str | None) -> sqlite3.Row | None:
    """The user row a token belongs to, or None."""
    if not token:
        return None
    return conn.execute("SELECT id, name, is_admin FROM users WHERE token_hash = ?",
                        (hash_token(token),)).fetchone()
