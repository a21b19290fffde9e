"""Load test: 20 annotator clients x 50 submissions against a live `posttrain serve`.

Each client is a thread with its own HTTP connection pool: ask for the next
task, submit a label, and now and then send the same submission again, either
right after the first (a retry after a lost reply) or at the same moment from
a second connection (a double click). Afterwards every label is counted: all
acknowledged labels are stored, none twice, no item beyond k, nobody on the
same item twice. The run is bounded by a deadline and stops itself.
"""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from posttrain.serve.db import connect, create_user, init_db
from posttrain.serve.export import annotation_rows
from posttrain.serve.items import insert_items, item_from_row
from posttrain.serve.testing import LiveServer

CLIENTS, SUBMISSIONS, ITEMS, K = 20, 50, 300, 5  # capacity 1500 >= 1000, so nobody can starve
DEADLINE_S = 240


def setup_db(path):
    init_db(path)
    conn = connect(path)
    items = [item_from_row({"prompt": f"prompt {i}", "response_a": f"a{i}", "response_b": f"b{i}", "id": f"it{i}"})
             for i in range(ITEMS)]
    insert_items(conn, items, K)
    tokens = {f"annotator{c:02d}": create_user(conn, f"annotator{c:02d}") for c in range(CLIENTS)}
    conn.close()
    return tokens


def run_client(url, name, token, stop_at, results, errors):
    rng = random.Random(name)
    headers = {"Authorization": f"Bearer {token}"}
    acknowledged = []
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client, \
                httpx.Client(base_url=url, headers=headers, timeout=60) as second:
            for n in range(SUBMISSIONS):
                if time.monotonic() > stop_at:
                    errors.append(f"{name}: deadline reached after {n} submissions")
                    return
                task = client.get("/api/next").raise_for_status().json()
                assert "assignment_id" in task, f"{name} ran out of work at submission {n}: {task}"
                body = {"assignment_id": task["assignment_id"], "choice": rng.choice(["A", "B", "tie"]),
                        "criteria": {"helpfulness": rng.choice(["A", "B", "tie"])},
                        "reasoning": f"{name}-{n}", "confidence": rng.randint(1, 5)}
                if n % 10 == 3:  # the same submission twice at once, over two connections
                    with ThreadPoolExecutor(2) as pool:
                        replies = list(pool.map(lambda c: c.post("/api/labels", json=body), (client, second)))
                    assert sorted(r.status_code for r in replies) == [200, 201], [r.text for r in replies]
                    assert replies[0].json()["label_id"] == replies[1].json()["label_id"]
                    label_id = replies[0].json()["label_id"]
                else:
                    reply = client.post("/api/labels", json=body)
                    assert reply.status_code == 201, reply.text
                    label_id = reply.json()["label_id"]
                    if n % 10 == 7:  # a retry, as after a reply that never arrived
                        again = second.post("/api/labels", json=body)
                        assert again.status_code == 200 and again.json() == {"label_id": label_id,
                                                                             "duplicate": True}
                acknowledged.append((label_id, task["item_id"], body["reasoning"]))
    except Exception as exc:  # reported by the test thread, never lost in this one
        errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        results[name] = acknowledged


def test_20_clients_x_50_submissions_none_lost_none_duplicated(tmp_path):
    db = tmp_path / "load.db"
    tokens = setup_db(db)
    results: dict[str, list] = {}
    errors: list[str] = []
    with LiveServer(db) as server:
        stop_at = time.monotonic() + DEADLINE_S
        started = time.perf_counter()
        threads = [threading.Thread(target=run_client, args=(server.url, name, token, stop_at, results, errors),
                                    daemon=True) for name, token in tokens.items()]
        [t.start() for t in threads]
        [t.join(timeout=DEADLINE_S + 30) for t in threads]
        elapsed = time.perf_counter() - started
        assert not any(t.is_alive() for t in threads), "a client did not stop"
        assert not errors, errors[:5]
        exported = httpx.get(server.url + "/healthz").json()
    assert exported == {"ok": True}
    print(f"\nload: {CLIENTS * SUBMISSIONS} labels from {CLIENTS} clients in {elapsed:.1f}s "
          f"({CLIENTS * SUBMISSIONS / elapsed:.0f} labels/s)")

    rows = list(annotation_rows(connect(db)))
    acknowledged = {(name, label_id, item, reasoning) for name, acks in results.items()
                    for label_id, item, reasoning in acks}
    assert len(acknowledged) == CLIENTS * SUBMISSIONS
    stored = {(r["annotator"], r["label_id"], r["item_id"], r["reasoning"]) for r in rows}
    assert len(rows) == CLIENTS * SUBMISSIONS  # none duplicated
    assert stored == acknowledged  # none lost, none invented
    assert Counter(r["annotator"] for r in rows) == {name: SUBMISSIONS for name in tokens}
    assert len({(r["annotator"], r["item_id"]) for r in rows}) == len(rows)  # nobody saw an item twice
    per_item = Counter(r["item_id"] for r in rows)
    print("labels per item:", sorted(Counter(per_item.values()).items()))
    assert max(per_item.values()) <= K
    assert sum(n == K for n in per_item.values()) >= CLIENTS * SUBMISSIONS // K - CLIENTS  # items fill up first


def test_kill_9_under_load_loses_no_acknowledged_label(tmp_path):
    """SIGKILL the server while 10 clients submit: every label it answered 201 for is in the file."""
    import os
    import signal

    db = tmp_path / "kill.db"
    tokens = dict(list(setup_db(db).items())[:10])
    acknowledged: dict[int, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client(name, token, url):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            n = 0
            while not stop.is_set():
                try:
                    task = http.get("/api/next").json()
                    body = {"assignment_id": task["assignment_id"], "choice": "A", "confidence": 3,
                            "reasoning": f"{name}-{n}"}
                    reply = http.post("/api/labels", json=body)
                except httpx.TransportError:  # the server is gone
                    return
                if reply.status_code == 201:
                    with lock:
                        acknowledged[reply.json()["label_id"]] = body["reasoning"]
                n += 1

    with LiveServer(db) as server:
        threads = [threading.Thread(target=client, args=(name, token, server.url), daemon=True)
                   for name, token in tokens.items()]
        [t.start() for t in threads]
        deadline = time.monotonic() + 60
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server.process.pid, signal.SIGKILL)  # no shutdown, no checkpoint, no flush
        server.process.wait(timeout=10)
        stop.set()
        [t.join(timeout=30) for t in threads]
    with lock:
        expected = dict(acknowledged)
    assert len(expected) >= 150, "the clients did not get going"
    conn = connect(db)  # opening the file replays the WAL, as a restarted server would
    stored = {row[0]: row[1] for row in conn.execute("SELECT id, reasoning FROM labels")}
    missing = {label: text for label, text in expected.items() if stored.get(label) != text}
    assert not missing, f"{len(missing)} acknowledged labels lost after kill -9"
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
