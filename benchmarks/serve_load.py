"""Load on `posttrain serve`: N annotator clients label items as fast as they can.

    .venv/bin/python benchmarks/serve_load.py                     # 30 clients, 1,200 labels
    .venv/bin/python benchmarks/serve_load.py --clients 30 --labels 1200 --items 500 --k 3 --reps 3
    .venv/bin/python benchmarks/serve_load.py --py-spy /tmp/serve.svg   # where the server's time goes
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/serve_load.py   # the same load on other code

Each client holds one keep-alive HTTP connection and runs a closed loop: GET /api/next,
then POST /api/labels, with no pause. All clients share one asyncio thread speaking minimal
HTTP/1.1, so the load generator takes little CPU and, on a shared machine, no more of the
scheduler's attention than the one-thread server it measures (30 client threads would). The server is the real `posttrain serve` command in a
child process (it inherits PYTHONPATH, so an old checkout can be measured the same way).

Printed per repetition: labels per second over the whole run, p50 / p90 / p99 / max of the
two requests' latencies, the server's CPU time per label (user + system, from /proc: it
depends far less on what else the machine runs than the wall-clock figures do), and the
machine's load average before and after (the machine may be shared). After each run every acknowledged label is looked up in the database:
a lost or duplicated label fails the run. Nothing here is a test; no test times anything.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from posttrain.serve.db import connect, create_user, init_db
from posttrain.serve.items import insert_items, item_from_row
from posttrain.serve.testing import LiveServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--labels", type=int, default=1200, help="labels in all (split evenly over the clients)")
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--k", type=int, default=3, help="labels wanted per item")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--py-spy", default=None, metavar="FILE", help="record the server with py-spy: a flame graph (.svg) or collapsed stacks (other names)")
    parser.add_argument("--json", default=None, metavar="FILE", help="append one JSON line per repetition")
    return parser.parse_args(argv)


def setup_db(path: Path, clients: int, items: int, k: int) -> dict[str, str]:
    init_db(path)
    conn = connect(path)
    rows = [{"prompt": f"Question {i}: explain topic {i} briefly.", "response_a": f"Answer A to {i}. " * 20,
             "response_b": f"Answer B to {i}. " * 20, "id": f"it{i}"} for i in range(items)]
    insert_items(conn, [item_from_row(row) for row in rows], k)
    tokens = {f"client{c:02d}": create_user(conn, f"client{c:02d}") for c in range(clients)}
    conn.close()
    return tokens


class Client:
    """One annotator: `count` rounds of GET /api/next + POST /api/labels on one keep-alive connection."""

    def __init__(self, port: int, name: str, token: str, count: int):
        self.port, self.name, self.token, self.count = port, name, token, count
        self.next_ms: list[float] = []
        self.post_ms: list[float] = []
        self.acknowledged: list[int] = []
        self.error: str | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes, float]:
        """A minimal HTTP/1.1 exchange (the server always answers with Content-Length)."""
        started = time.perf_counter()
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        status_line, *header_lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
        length = int(next(v for k, v in headers.items() if k.lower() == "content-length"))
        data = await self.reader.readexactly(length)
        return int(status_line.split()[1]), data, (time.perf_counter() - started) * 1000

    async def run(self, start_gate: asyncio.Event) -> None:
        await start_gate.wait()
        try:
            for n in range(self.count):
                status, data, ms = await self.request("GET", "/api/next")
                self.next_ms.append(ms)
                task = json.loads(data)
                if status != 200 or "assignment_id" not in task:
                    raise RuntimeError(f"GET /api/next -> {status} {data[:200]!r}")
                body = json.dumps({"assignment_id": task["assignment_id"], "choice": "AB"[n % 2],
                                   "criteria": {"helpfulness": "A"}, "reasoning": f"{self.name}-{n}",
                                   "confidence": 1 + n % 5}).encode()
                status, data, ms = await self.request("POST", "/api/labels", body)
                self.post_ms.append(ms)
                if status != 201:
                    raise RuntimeError(f"POST /api/labels -> {status} {data[:200]!r}")
                self.acknowledged.append(json.loads(data)["label_id"])
        except Exception as exc:  # reported by main
            self.error = f"{self.name}: {type(exc).__name__}: {exc}"
        finally:
            self.writer.close()


async def drive(clients: list[Client], on_start) -> float:
    """Connect every client (outside the timed window), start them together, return the seconds taken."""
    for client in clients:
        await client.connect()
    gate = asyncio.Event()
    tasks = [asyncio.create_task(client.run(gate)) for client in clients]
    on_start()
    started = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(percentile(values, q), 1) for q in (50, 90, 99)} | {"max": round(max(values), 1)}


def run_once(args: argparse.Namespace, workdir: Path) -> dict:
    db = workdir / "load.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    tokens = setup_db(db, args.clients, args.items, args.k)
    per_client = args.labels // args.clients
    with LiveServer(db) as server:
        clients = [Client(server.port, name, token, per_client) for name, token in tokens.items()]
        spy = None
        if args.py_spy:
            spy_format = "flamegraph" if args.py_spy.endswith(".svg") else "raw"  # raw: collapsed stacks
            spy = subprocess.Popen(["py-spy", "record", "-o", args.py_spy, "-p", str(server.process.pid),
                                    "--rate", "200", "--nonblocking", "--format", spy_format],
                                   stdout=subprocess.DEVNULL)
            time.sleep(1.0)
        before: dict[str, object] = {}
        elapsed = asyncio.run(drive(clients, lambda: before.update(
            load=os.getloadavg(), cpu=cpu_seconds(server.process.pid), client_cpu=cpu_seconds(os.getpid()))))
        server_cpu = cpu_seconds(server.process.pid) - before["cpu"]
        client_cpu = cpu_seconds(os.getpid()) - before["client_cpu"]
        load_before, load_after = before["load"], os.getloadavg()
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
            spy.wait(timeout=60)
    errors = [c.error for c in clients if c.error]
    if errors:
        raise SystemExit("serve_load: " + "; ".join(errors[:3]))
    acknowledged = sorted(label for c in clients for label in c.acknowledged)
    conn = connect(db)
    stored = sorted(row[0] for row in conn.execute("SELECT id FROM labels"))
    conn.close()
    if stored != acknowledged:
        raise SystemExit(f"serve_load: {len(acknowledged)} labels acknowledged but {len(stored)} stored "
                         f"({len(set(acknowledged) - set(stored))} missing)")
    return {"clients": args.clients, "labels": len(acknowledged), "seconds": round(elapsed, 2),
            "labels_per_s": round(len(acknowledged) / elapsed, 1),
            "server_cpu_ms_per_label": round(server_cpu * 1000 / len(acknowledged), 2),
            "client_cpu_ms_per_label": round(client_cpu * 1000 / len(acknowledged), 2),
            "get_next_ms": summary([ms for c in clients for ms in c.next_ms]),
            "post_labels_ms": summary([ms for c in clients for ms in c.post_ms]),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
            "code": str(Path(sys.modules["posttrain"].__file__).parent)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.py_spy and not shutil.which("py-spy"):
        raise SystemExit("serve_load: --py-spy needs `pip install py-spy`")
    workdir = Path(tempfile.mkdtemp(prefix="serve_load_"))
    try:
        for rep in range(args.reps):
            result = run_once(args, workdir)
            print(json.dumps(result), flush=True)
            if args.json:
                with open(args.json, "a") as out:
                    out.write(json.dumps(result) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
