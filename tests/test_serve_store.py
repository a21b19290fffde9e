"""posttrain.serve library level: assignment rules, idempotent labels, exports, feedback."""
from __future__ import annotations

import json
import threading
import time

import pytest

from posttrain.errors import InputError
from posttrain.records import Annotation, PreferencePair
from posttrain.serve.assign import LabelError, next_task, overview, submit_label
from posttrain.serve.db import connect, create_user, init_db, user_for_token
from posttrain.serve.export import annotation_rows, feedback_rows, preference_rows
from posttrain.serve.feedback import (
    EchoBackend,
    FeedbackError,
    assign_variant,
    parse_variants,
    record_feedback,
    send_message,
    start_conversation,
)
from posttrain.serve.items import insert_items, item_from_row, read_items


def make_db(tmp_path, n_items=3, k=2, users=("ann", "bob", "cat")):
    path = tmp_path / "s.db"
    init_db(path)
    conn = connect(path)
    items = [item_from_row({"prompt": f"p{i}", "response_a": f"a{i}", "response_b": f"b{i}", "id": f"i{i}"})
             for i in range(n_items)]
    insert_items(conn, items, k)
    ids = {}
    for name in users:
        create_user(conn, name)
        ids[name] = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()[0]
    return path, conn, ids


def test_wal_mode_and_tokens_are_hashed(tmp_path):
    path, conn, _ = make_db(tmp_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    token = create_user(conn, "dora", admin=True)
    stored = conn.execute("SELECT token_hash FROM users WHERE name = 'dora'").fetchone()[0]
    assert token not in stored and len(stored) == 64
    assert user_for_token(conn, token)["name"] == "dora"
    assert user_for_token(conn, token + "x") is None
    assert user_for_token(conn, "' OR '1'='1") is None


def test_item_rows_both_shapes_and_errors(tmp_path):
    a = item_from_row({"prompt": "hi", "response_a": "x", "response_b": "y", "lang": "en"})
    assert a.prompt == [{"role": "user", "content": "hi"}] and a.extra == {"lang": "en"}
    b = item_from_row({"prompt": [{"role": "user", "content": "hi"}], "chosen": "good", "rejected": "bad", "id": 7})
    assert (b.item_id, b.response_a, b.response_b, b.extra) == ("7", "good", "bad", {"original_choice": "A"})
    # content-hash ids are stable, so re-imports are no-ops
    assert a.item_id == item_from_row({"prompt": "hi", "response_a": "x", "response_b": "y"}).item_id
    with pytest.raises(InputError, match=r"f.jsonl:4: field 'response_b': expected a non-empty string"):
        item_from_row({"prompt": "p", "response_a": "x", "response_b": ""}, "f.jsonl", 4)
    with pytest.raises(InputError, match=r"f.jsonl:1: field 'prompt\[0\]\.content': missing"):
        item_from_row({"prompt": [{"role": "user"}], "chosen": "x", "rejected": "y"}, "f.jsonl", 1)
    path = tmp_path / "dup.jsonl"
    path.write_text('{"prompt":"p","response_a":"a","response_b":"b","id":"x"}\n' * 2)
    with pytest.raises(InputError, match="duplicate item id 'x'"):
        read_items(str(path))


@pytest.mark.parametrize("row, prompt, extra", [
    ({"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5"},
     [{"role": "user", "content": "What is 2+2?"}], {}),  # Anthropic/hh-rlhf
    ({"chosen": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
      "rejected": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"}],
      "score_chosen": 9.0}, [{"role": "user", "content": "What is 2+2?"}], {"score_chosen": 9.0}),  # TRL implicit
    ({"system": "Be brief.", "question": "What is 2+2?", "chosen": "4", "rejected": "5", "id": "q1"},
     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}], {}),  # orca_dpo_pairs
])
def test_public_preference_shapes_import_as_dpo_reads_them(row, prompt, extra):
    """They used to fail with "field 'prompt': missing"."""
    item = item_from_row(row, "f.jsonl", 3)
    assert (item.prompt, item.response_a, item.response_b) == (prompt, "4", "5")
    assert item.extra == {"original_choice": "A", **extra}
    assert item.item_id == ("q1" if "id" in row else item.item_id)
    with pytest.raises(InputError, match=r"f.jsonl:3: field 'rejected': is identical to 'chosen'"):
        item_from_row({**row, "rejected": row["chosen"]}, "f.jsonl", 3)


def test_each_item_gets_k_labels_and_no_one_sees_an_item_twice(tmp_path):
    _, conn, ids = make_db(tmp_path, n_items=3, k=2)
    seen = {name: [] for name in ids}
    for _ in range(4):  # more rounds than there is work
        for name, uid in ids.items():
            task = next_task(conn, uid)
            if task is None:
                continue
            seen[name].append(task.item_id)
            submit_label(conn, uid, task.assignment_id, "A", {"honesty": "tie"}, "r", 3)
    for items in seen.values():
        assert len(items) == len(set(items))  # never the same item twice
    per_item = dict(conn.execute("SELECT i.item_id, COUNT(l.id) FROM items i LEFT JOIN labels l "
                                 "ON l.item_seq = i.seq GROUP BY i.seq").fetchall())
    assert per_item == {"i0": 2, "i1": 2, "i2": 2}
    assert overview(conn)["items_complete"] == 3 and overview(conn)["labels"] == 6


def test_reload_returns_the_same_open_task(tmp_path):
    _, conn, ids = make_db(tmp_path)
    first = next_task(conn, ids["ann"])
    assert next_task(conn, ids["ann"]).assignment_id == first.assignment_id


def test_swapped_display_is_stored_in_the_item_frame(tmp_path):
    _, conn, ids = make_db(tmp_path, n_items=2, k=1)
    task = next_task(conn, ids["ann"], coin=lambda: 1)
    assert task.swapped and (task.left, task.right) == ("b0", "a0")
    submit_label(conn, ids["ann"], task.assignment_id, "A", {"helpfulness": "A", "honesty": "tie"}, "", 5)
    plain = next_task(conn, ids["ann"], coin=lambda: 0)
    assert not plain.swapped and (plain.left, plain.right) == ("a1", "b1")
    submit_label(conn, ids["ann"], plain.assignment_id, "A", {"helpfulness": "B"}, "", 2)
    rows = list(annotation_rows(conn))
    # clicked left ("A") on a swapped item -> the item's response_b
    assert [(r["item_id"], r["choice"], r["swapped"], r["shown_choice"]) for r in rows] == [
        ("i0", "B", True, "A"), ("i1", "A", False, "A")]
    assert rows[0]["criteria"] == {"helpfulness": "B", "honesty": "tie"}
    record = Annotation.from_dict(rows[0])
    assert record.annotator == "ann" and record.prompt == [{"role": "user", "content": "p0"}]
    assert record.confidence == 5 and record.response_a == "a0"


def test_resubmission_is_idempotent_and_foreign_assignments_are_refused(tmp_path):
    _, conn, ids = make_db(tmp_path)
    task = next_task(conn, ids["ann"])
    first = submit_label(conn, ids["ann"], task.assignment_id, "B", None, "first", 4)
    again = submit_label(conn, ids["ann"], task.assignment_id, "B", None, "first", 4)  # a retry
    assert first == (first[0], False) and again == (first[0], True)
    with pytest.raises(LabelError, match="already labelled, differently") as changed:  # not acknowledged as stored
        submit_label(conn, ids["ann"], task.assignment_id, "A", None, "changed my mind", 1)
    assert changed.value.status == 409
    assert tuple(conn.execute("SELECT COUNT(*), MAX(reasoning) FROM labels").fetchone()) == (1, "first")
    with pytest.raises(LabelError, match="no such assignment") as info:
        submit_label(conn, ids["bob"], task.assignment_id, "A", None, "", 3)
    assert info.value.status == 404


@pytest.mark.parametrize("choice, criteria, confidence, message", [
    ("C", None, 3, "field 'choice': must be one of A, B, tie"),
    ("A", {"fun": "A"}, 3, "unknown criterion 'fun'"),
    ("A", {"honesty": "X"}, 3, "field 'criteria.honesty': must be one of"),
    ("A", None, 6, "field 'confidence': must be a whole number from 1 to 5"),
    ("A", None, "high", "field 'confidence': must be a whole number from 1 to 5"),
    ("A", None, 3.5, "field 'confidence': must be a whole number from 1 to 5"),  # was silently truncated to 3
    ("A", None, True, "field 'confidence': must be a whole number from 1 to 5"),
    ("A", None, float("inf"), "field 'confidence': must be a whole number from 1 to 5"),  # was OverflowError
])
def test_bad_labels_are_refused(tmp_path, choice, criteria, confidence, message):
    _, conn, ids = make_db(tmp_path)
    task = next_task(conn, ids["ann"])
    with pytest.raises(LabelError, match=message):
        submit_label(conn, ids["ann"], task.assignment_id, choice, criteria, "", confidence)
    assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0


def test_expired_lease_frees_the_slot_and_a_full_item_is_released(tmp_path):
    _, conn, ids = make_db(tmp_path, n_items=1, k=1)
    stale = next_task(conn, ids["ann"], lease_seconds=-1)  # lease already over
    assert stale is not None
    taken = next_task(conn, ids["bob"])  # the slot is free again
    assert taken.item_id == stale.item_id
    assert next_task(conn, ids["cat"]) is None  # bob's lease is live: no slot
    submit_label(conn, ids["bob"], taken.assignment_id, "A", None, "", 3)
    # ann comes back: her item is full, so her assignment is released and nothing is left
    assert next_task(conn, ids["ann"]) is None
    assert conn.execute("SELECT status FROM assignments WHERE id = ?", (stale.assignment_id,)).fetchone()[0] == "released"


def test_concurrent_assignment_never_exceeds_k(tmp_path):
    """12 threads, each its own connection, race for 4 items x k=2: exactly 8 tasks handed out."""
    path, conn, ids = make_db(tmp_path, n_items=4, k=2, users=tuple(f"u{i}" for i in range(12)))
    got: list = []
    barrier = threading.Barrier(12)

    def worker(uid):
        own = connect(path)
        barrier.wait()
        got.append(next_task(own, uid))
        own.close()

    threads = [threading.Thread(target=worker, args=(uid,)) for uid in ids.values()]
    [t.start() for t in threads]
    [t.join() for t in threads]
    handed = [t for t in got if t is not None]
    assert len(handed) == 8
    counts = {}
    for task in handed:
        counts[task.item_id] = counts.get(task.item_id, 0) + 1
    assert counts == {"i0": 2, "i1": 2, "i2": 2, "i3": 2}


def test_preference_export_majority_each_and_ties(tmp_path):
    _, conn, ids = make_db(tmp_path, n_items=2, k=3)
    votes = {"i0": ["A", "A", "B"], "i1": ["A", "B", "tie"]}
    for name, uid in ids.items():
        for _ in range(2):
            task = next_task(conn, uid, coin=lambda: 0)
            submit_label(conn, uid, task.assignment_id, votes[task.item_id].pop(), None, "", 3)
    pairs, ties = preference_rows(conn)
    assert len(pairs) == 1 and len(ties) == 1
    pair = PreferencePair.from_dict(pairs[0])
    assert (pair.chosen, pair.rejected) == ("a0", "b0")
    assert pairs[0]["votes"] == {"A": 2, "B": 1, "tie": 0} and pairs[0]["agreement"] == pytest.approx(0.6667)
    assert ties[0]["item_id"] == "i1" and ties[0]["votes"] == {"A": 1, "B": 1, "tie": 1}
    each, each_ties = preference_rows(conn, aggregate="each")
    assert sorted((r["item_id"], r["chosen"]) for r in each) == [("i0", "a0"), ("i0", "a0"), ("i0", "b0"),
                                                                 ("i1", "a1"), ("i1", "b1")]
    assert len(each_ties) == 1
    assert preference_rows(conn, min_labels=4) == ([], [])


def test_variants_are_sticky_and_split(tmp_path):
    assert parse_variants(["A=echo", "B=tiny-random"]) == {"A": "echo", "B": "tiny-random"}
    names = ["A", "B"]
    assert all(assign_variant(f"user{i}", names) == assign_variant(f"user{i}", names) for i in range(50))
    share = sum(assign_variant(f"user{i}", names) == "A" for i in range(400)) / 400
    assert 0.4 < share < 0.6  # a hash split is close to even
    assert any(assign_variant(f"user{i}", names, "exp2") != assign_variant(f"user{i}", names) for i in range(20))


def test_feedback_is_one_row_per_reply_and_exports_for_ab(tmp_path):
    _, conn, ids = make_db(tmp_path)
    conv = start_conversation(conn, ids["ann"], "B", "echo")
    message_id, reply = send_message(conn, EchoBackend(), conv, "hello")
    assert reply == "You said: hello"
    record_feedback(conn, ids["ann"], message_id, thumbs=-1, rating=2, text="meh")
    record_feedback(conn, ids["ann"], message_id, thumbs="1", rating="4", text="better on reflection")
    with pytest.raises(FeedbackError, match="no such reply"):
        record_feedback(conn, ids["bob"], message_id, thumbs=1)  # not bob's conversation
    with pytest.raises(FeedbackError, match="field 'rating': must be a whole number from 1 to 5"):
        record_feedback(conn, ids["ann"], message_id, rating=9)
    with pytest.raises(FeedbackError, match="field 'message_id': must be a whole number"):
        record_feedback(conn, ids["ann"], 2**70, rating=3)  # was OverflowError from SQLite
    with pytest.raises(FeedbackError, match="field 'thumbs': must be 1"):
        record_feedback(conn, ids["ann"], message_id, thumbs=0)
    with pytest.raises(FeedbackError, match="give a thumbs"):
        record_feedback(conn, ids["ann"], message_id)
    rows = list(feedback_rows(conn))
    assert len(rows) == 1
    row = rows[0]
    assert {k: row[k] for k in ("variant", "user", "thumbs", "rating", "text", "prompt", "response", "model")} == {
        "variant": "B", "user": "ann", "thumbs": 1, "rating": 4, "text": "better on reflection",
        "prompt": "hello", "response": "You said: hello", "model": "echo"}
    from datetime import datetime
    assert datetime.fromisoformat(row["timestamp"]).tzinfo is not None
    json.dumps(row)


def test_sql_injection_text_is_stored_verbatim(tmp_path):
    _, conn, ids = make_db(tmp_path)
    evil = "x'); DROP TABLE labels; --"
    create_user(conn, evil)
    task = next_task(conn, ids["ann"])
    submit_label(conn, ids["ann"], task.assignment_id, "A", None, evil, 3)
    assert conn.execute("SELECT reasoning FROM labels").fetchone()[0] == evil
    assert conn.execute("SELECT COUNT(*) FROM users WHERE name = ?", (evil,)).fetchone()[0] == 1
    with pytest.raises(LabelError):
        submit_label(conn, ids["ann"], "' OR 1=1 --", "A", None, "", 3)


def test_model_backend_replies_with_tiny_random():
    from posttrain.serve.feedback import ModelBackend, make_backend

    backend = make_backend("tiny-random", max_new_tokens=6, temperature=0)
    assert isinstance(backend, ModelBackend)
    history = [{"role": "user", "content": "Hi there"}]
    first = backend.reply(history)
    assert isinstance(first, str) and backend.reply(history) == first  # greedy: deterministic
    assert len(first.encode("utf-8", errors="replace")) <= 6 * 4  # at most 6 byte-tokens were generated


# The order the assignment rules ask for, computed the slow way: every item ranked by
# (labels + live leases) descending, then import order (what next_task did before it used indexes).
_BRUTE_FORCE_PICK = (
    "SELECT i.seq FROM items i WHERE NOT EXISTS (SELECT 1 FROM assignments m WHERE m.item_seq = i.seq "
    "AND m.user_id = :user) AND (SELECT COUNT(*) FROM assignments t WHERE t.item_seq = i.seq AND (t.status = 'done' "
    "OR (t.status = 'open' AND t.expires_at > :now))) < i.k ORDER BY (SELECT COUNT(*) FROM assignments t "
    "WHERE t.item_seq = i.seq AND (t.status = 'done' OR (t.status = 'open' AND t.expires_at > :now))) DESC, "
    "i.seq LIMIT 1")


def test_indexed_pick_matches_ranking_every_item(tmp_path, monkeypatch):
    """400 random steps (take, label, abandon, let leases lapse): the fast pick equals the brute-force one."""
    import random

    from posttrain.serve import assign

    rng = random.Random(7)
    users = tuple(f"u{n}" for n in range(6))
    _, conn, ids = make_db(tmp_path, n_items=25, k=3, users=users)
    clock = [1_000_000.0]
    monkeypatch.setattr(assign.time, "time", lambda: clock[0])
    compared = 0
    for _ in range(400):
        user = ids[rng.choice(users)]
        has_open = conn.execute("SELECT 1 FROM assignments WHERE user_id = ? AND status = 'open'", (user,)).fetchone()
        if not has_open:
            expected = conn.execute(_BRUTE_FORCE_PICK, {"user": user, "now": clock[0]}).fetchone()
            assert assign._pick_item(conn, user, clock[0]) == (expected[0] if expected else None)
            compared += 1
        task = next_task(conn, user, lease_seconds=60)
        if task is not None and rng.random() < 0.7:
            submit_label(conn, user, task.assignment_id, rng.choice(["A", "B", "tie"]), None, "", 3)
        clock[0] += rng.choice([1, 1, 1, 90])  # now and then every lease runs out
    assert compared > 100
    counted = conn.execute("SELECT COUNT(*) FROM items i WHERE n_labels != "
                           "(SELECT COUNT(*) FROM labels l WHERE l.item_seq = i.seq)").fetchone()[0]
    assert counted == 0


def test_a_database_from_before_label_counts_is_migrated(tmp_path):
    path, conn, ids = make_db(tmp_path, n_items=3, k=2)
    for name in ("ann", "bob"):
        task = next_task(conn, ids[name])
        submit_label(conn, ids[name], task.assignment_id, "A", None, "", 3)
    # make it look like a database written by the previous version
    for index in ("items_partly_labelled", "items_unlabelled"):
        conn.execute(f"DROP INDEX {index}")
    conn.execute("ALTER TABLE items DROP COLUMN n_labels")
    conn.close()
    init_db(path)
    conn = connect(path)
    assert [tuple(r) for r in conn.execute("SELECT item_id, n_labels FROM items ORDER BY seq")] == [
        ("i0", 2), ("i1", 0), ("i2", 0)]
    assert overview(conn)["items_complete"] == 1


def test_background_checkpointer_copies_the_wal_into_the_database(tmp_path):
    from posttrain.serve.db import Checkpointer, ConnectionPool

    path, conn, _ = make_db(tmp_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pool = ConnectionPool(path)
    pool.set_autocheckpoint(False)
    writer = pool.acquire()
    assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    size_before = path.stat().st_size
    for n in range(300):  # far past SQLite's own 1000-page trigger, which is now off
        create_user(writer, f"user{n}-" + "x" * 2000)
    assert path.stat().st_size == size_before  # everything is still only in the WAL
    with Checkpointer(path, interval_s=0.05):
        time.sleep(0.5)
    assert path.stat().st_size > size_before + 300 * 2000
    pool.release(writer)
    pool.close()


def test_item_pick_reads_indexes_not_every_item(tmp_path):
    """The picks must not scan the items table (that made GET /api/next grow with the item count)."""
    from posttrain.serve.assign import _PICK_FRESH, _PICK_STARTED

    _, conn, ids = make_db(tmp_path)
    plans = {name: " | ".join(row["detail"] for row in conn.execute(
        "EXPLAIN QUERY PLAN " + sql, {"now": 0.0, "user": ids["ann"]})) for name, sql in
        (("started", _PICK_STARTED), ("fresh", _PICK_FRESH))}
    assert "SCAN items USING INDEX items_partly_labelled" in plans["started"], plans
    assert "assignments_open" in plans["started"], plans
    assert "SCAN i USING INDEX items_unlabelled" in plans["fresh"], plans
    assert not any(part.strip() in ("SCAN i", "SCAN items") for plan in plans.values() for part in plan.split("|"))
