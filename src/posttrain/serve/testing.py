"""Run `posttrain serve` in a child process for end-to-end tests and demos.

    with LiveServer(db="serve.db") as server:
        httpx.get(server.url + "/healthz")

The server is the real command (`python -m posttrain serve ...`) on a free
localhost port, so tests exercise exactly what a user starts.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A port the OS says is free right now (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, db: str | Path, extra_args: list[str] | None = None, startup_timeout: float = 60.0,
                 log_path: str | Path | None = None):
        self.db, self.extra_args, self.startup_timeout = str(db), list(extra_args or []), startup_timeout
        self.log_path = Path(log_path) if log_path else Path(str(db) + ".server.log")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "LiveServer":
        command = [sys.executable, "-m", "posttrain", "serve", "--db", self.db, "--port", str(self.port),
                   "--log-level", "warning", *self.extra_args]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"posttrain serve exited with {self.process.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"posttrain serve did not answer within {self.startup_timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
