"""`posttrain serve token / import / export` on the command line, and their one-line errors."""
from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.records import Annotation, PreferencePair
from posttrain.serve.assign import next_task, submit_label
from posttrain.serve.db import connect, user_for_token
from posttrain.serve.feedback import EchoBackend, record_feedback, send_message, start_conversation


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_import_label_export_round_trip(tmp_path, capsys):
    db = str(tmp_path / "s.db")
    code, out, err = run(capsys, "serve", "token", "--db", db, "--annotator", "ann")
    token = out.strip()
    assert code == 0 and len(token) >= 32 and "shown only now" in err
    code, out, _ = run(capsys, "serve", "token", "--db", db, "--annotator", "boss", "--admin")
    conn = connect(db)
    assert user_for_token(conn, out.strip())["is_admin"] == 1
    items = write(tmp_path / "items.jsonl", [
        {"prompt": "2+2?", "response_a": "4", "response_b": "5", "id": "math"},
        {"prompt": [{"role": "user", "content": "Capital of France?"}], "chosen": "Paris", "rejected": "Lyon",
         "topic": "geo"}])
    code, out, _ = run(capsys, "serve", "import", "--db", db, "--k", "1", items)
    assert code == 0 and out.strip() == f"posttrain serve import: 2 items added to {db} (k=1)"
    code, out, _ = run(capsys, "serve", "import", "--db", db, items)
    assert "0 items added" in out and "2 already present" in out

    uid = user_for_token(conn, token)["id"]
    choices = iter(["A", "tie"])
    while (task := next_task(conn, uid, coin=lambda: 1)) is not None:
        submit_label(conn, uid, task.assignment_id, next(choices), {"honesty": "A"}, "why", 4)
    conv = start_conversation(conn, uid, "B", "echo")
    reply_id, _ = send_message(conn, EchoBackend(), conv, "hi")
    record_feedback(conn, uid, reply_id, thumbs=1, rating=4, text="ok")

    prefs, ties = tmp_path / "prefs.jsonl", tmp_path / "ties.jsonl"
    code, out, _ = run(capsys, "serve", "export", "--db", db, "--kind", "preferences", "--ties-output", str(ties),
                       str(prefs))
    assert code == 0 and "1 preferences rows" in out and "1 ties" in out
    (pair_row,) = [json.loads(line) for line in prefs.read_text().splitlines()]
    pair = PreferencePair.from_dict(pair_row)
    # shown left ("A") on a swapped assignment = the item's response_b
    assert (pair.chosen, pair.rejected, pair_row["item_id"]) == ("5", "4", "math")
    (tie_row,) = [json.loads(line) for line in ties.read_text().splitlines()]
    assert tie_row["topic"] == "geo" and tie_row["original_choice"] == "A"

    annotations = tmp_path / "ann.jsonl"
    run(capsys, "serve", "export", "--db", db, "--kind", "annotations", str(annotations))
    records = [Annotation.from_dict(json.loads(line)) for line in annotations.read_text().splitlines()]
    assert [(r.item_id, r.choice, r.swapped, r.criteria, r.confidence) for r in records][0] == (
        "math", "B", True, {"honesty": "B"}, 4)

    feedback = tmp_path / "feedback.jsonl"
    run(capsys, "serve", "export", "--db", db, "--kind", "feedback", str(feedback))
    (row,) = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert {k: row[k] for k in ("variant", "user", "thumbs", "rating", "text")} == {
        "variant": "B", "user": "ann", "thumbs": 1, "rating": 4, "text": "ok"}


@pytest.mark.parametrize("argv, message", [
    (["serve", "token", "--db", "{db}"], "config field 'annotator': give a name"),
    (["serve", "import", "--db", "{db}", "{bad}"], "{bad}:2: field 'response_b': expected a non-empty string"),
    (["serve", "import", "--db", "{db}", "--k", "0", "{bad}"], "config field 'k': must be"),
    (["serve", "import", "--db", "{db}", "{missing}"], "{missing}: file not found"),
    (["serve", "export", "--db", "{missing}", "{out}"], "{missing}: database not found"),
    (["serve", "export", "--db", "{db}", "--kind", "votes", "{out}"], "config field 'kind': 'votes' is not one of"),
    (["serve", "--variants", "A"], "config field 'variants': expected NAME=MODEL, got 'A'"),
    (["serve", "--port", "0"], "config field 'port': must be"),
    # issue #16: these were an IsADirectoryError / DatabaseError traceback, or created /nonexistent/
    (["serve", "export", "--db", "{db}", "{dir}"], "config field 'output': {dir} is a directory"),
    (["serve", "export", "--db", "{db}", "--ties-output", "{dir}", "{out}"], "config field 'ties_output': {dir} is a"),
    (["serve", "export", "--db", "{notdb}", "{out}"], "{notdb}: cannot use as the serve database: file is not a"),
    (["serve", "token", "--db", "{notdb}", "ann"], "{notdb}: cannot use as the serve database: file is not a"),
    (["serve", "--db", "{notdb}"], "{notdb}: cannot use as the serve database: file is not a database"),
    (["serve", "token", "--db", "{nodir}/x.db", "ann"], "{nodir}/x.db: directory {nodir} does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    paths = {"db": str(tmp_path / "s.db"), "bad": str(tmp_path / "bad.jsonl"),
             "missing": str(tmp_path / "missing.jsonl"), "out": str(tmp_path / "out.jsonl"),
             "dir": str(tmp_path / "a_dir"), "notdb": str(tmp_path / "notes.db"), "nodir": str(tmp_path / "no" / "dir")}
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "notes.db").write_text("these are my notes, not a database\n" * 10)
    run(capsys, "serve", "token", "--db", paths["db"], "someone")  # an existing database for the export cases
    write(tmp_path / "bad.jsonl", [{"prompt": "p", "response_a": "a", "response_b": "b"},
                                   {"prompt": "p", "response_a": "a", "response_b": ""}])
    code, out, err = run(capsys, *[a.format(**paths) for a in argv])
    assert code == 2
    assert err.startswith("posttrain serve") and message.format(**paths) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "no").exists()
    assert list((tmp_path / "a_dir").iterdir()) == []


def test_token_for_an_existing_name_needs_replace(tmp_path, capsys):
    db = str(tmp_path / "s.db")
    first = run(capsys, "serve", "token", "--db", db, "ann")[1].strip()  # the name may be positional
    code, _, err = run(capsys, "serve", "token", "--db", db, "--annotator", "ann")
    assert code == 2 and "already has a token; pass --replace" in err
    code, out, _ = run(capsys, "serve", "token", "--db", db, "--annotator", "ann", "--replace")
    conn = connect(db)
    assert code == 0 and user_for_token(conn, first) is None and user_for_token(conn, out.strip())["name"] == "ann"


def test_exports_feed_posttrain_ab_and_the_agreement_tool(tmp_path, capsys):
    """The feedback log goes to `posttrain ab` as is; annotation rows to `posttrain data agreement`."""
    from posttrain.serve.db import create_user, init_db
    from posttrain.serve.feedback import assign_variant
    from posttrain.serve.items import insert_items, item_from_row

    db = str(tmp_path / "s.db")
    init_db(db)
    conn = connect(db)
    insert_items(conn, [item_from_row({"prompt": f"p{i}", "response_a": f"a{i}", "response_b": f"b{i}"})
                        for i in range(6)], k=2)
    for u in range(24):
        name = f"user{u}"
        create_user(conn, name)
        uid = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()[0]
        variant = assign_variant(name, ["A", "B"])
        reply_id, _ = send_message(conn, EchoBackend(), start_conversation(conn, uid, variant, "echo"), "hi")
        record_feedback(conn, uid, reply_id, thumbs=1 if (u % 3 or variant == "B") else -1, rating=3 + (u % 3))
        if u < 2:  # two annotators label every item
            while (task := next_task(conn, uid)) is not None:
                submit_label(conn, uid, task.assignment_id, "A" if task.item_id != "x" else "B", None, "", 3)
    feedback, annotations = tmp_path / "feedback.jsonl", tmp_path / "annotations.jsonl"
    run(capsys, "serve", "export", "--db", db, "--kind", "feedback", str(feedback))
    run(capsys, "serve", "export", "--db", db, "--kind", "annotations", str(annotations))
    code, out, err = run(capsys, "ab", str(feedback))
    assert code == 0, err
    assert "A" in out and "B" in out
    code, out, err = run(capsys, "data", "agreement", str(annotations))
    assert code == 0, err
    assert "overall" in out


def test_a_busy_port_or_unknown_host_is_one_line_before_any_model_loads(tmp_path, capsys):
    """uvicorn reported it after the models loaded, with its own ERROR line and exit code 3, right
    after posttrain had printed the URL as if it were serving."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run(capsys, "serve", "--db", str(tmp_path / "s.db"), "--port", str(port),
                             "--variants", "A=not-a-model-that-would-load")
    assert code == 2 and out == ""
    assert err == (f"posttrain serve: error: cannot listen on 127.0.0.1:{port}: Address already in use "
                   "(another server is there: choose another --port)\n")
    code, _, err = run(capsys, "serve", "--db", str(tmp_path / "s.db"), "--host", "no-such-host.invalid")
    assert code == 2 and err.startswith("posttrain serve: error: config field 'host': cannot listen on no-such-host")


@pytest.mark.parametrize("name", ["a\tb", "line\nbreak", "x" * 101])
def test_an_annotator_name_with_control_characters_or_too_long_is_refused(tmp_path, capsys, name):
    code, out, err = run(capsys, "serve", "token", "--db", str(tmp_path / "s.db"), "--annotator", name)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "config field 'annotator'" in err and "no control characters" in err
