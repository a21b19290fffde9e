"""Shape detection and normalisation into records, and the located errors for bad rows."""
from __future__ import annotations

import json

import pytest

from posttrain.data.formats import detect_shape, load_records, parse_row
from posttrain.errors import InputError
from posttrain.records import Conversation, PreferencePair, Prompt, Ranked, Unpaired

U = {"role": "user", "content": "Q?"}
A = {"role": "assistant", "content": "Yes."}
B = {"role": "assistant", "content": "No."}


def parse(row, kind=None):
    return parse_row(row, "data.jsonl:7", kind)


# --- shapes ---------------------------------------------------------------------------------


def test_messages():
    shape, record = parse({"messages": [U, A], "id": 3})
    assert shape == "messages"
    assert record == Conversation([U, A], extra={"id": 3})
    assert record.source == "data.jsonl:7"


def test_sharegpt_maps_speakers_to_roles():
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Q?"},
                             {"from": "gpt", "value": "Yes."}]}
    shape, record = parse(row)
    assert shape == "sharegpt"
    assert record.messages == [{"role": "system", "content": "Be brief."}, U, A]


def test_prompt_completion_text_and_conversational():
    assert parse({"prompt": "Q?", "completion": "Yes."}) == ("prompt_completion", Conversation([U, A]))
    assert parse({"prompt": [U], "completion": [A]})[1] == Conversation([U, A])
    with_system = parse({"prompt": "Q?", "completion": "Yes.", "system": "S"})[1]
    assert with_system.messages == [{"role": "system", "content": "S"}, U, A]


def test_alpaca_keeps_instruction_and_input_in_extra():
    shape, record = parse({"instruction": "Add.", "input": "2 and 3", "output": "5", "id": 1})
    assert shape == "alpaca"
    assert record.messages == [{"role": "user", "content": "Add.\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert record.extra == {"instruction": "Add.", "input": "2 and 3", "id": 1}
    no_input = parse({"instruction": "Say hi.", "output": "hi"})[1]
    assert no_input.messages[0]["content"] == "Say hi." and no_input.extra["input"] == ""


def test_preference_text_with_margin():
    shape, record = parse({"prompt": "Q?", "chosen": "Yes.", "rejected": "No.", "margin": 2})
    assert shape == "preference"
    assert record == PreferencePair([U], "Yes.", "No.", 2.0)


def test_preference_explicit_conversational():
    record = parse({"prompt": [U], "chosen": [A], "rejected": [B]})[1]
    assert record == PreferencePair([U], "Yes.", "No.")


def test_preference_implicit_prompt_is_the_shared_prefix():
    system = {"role": "system", "content": "S"}
    record = parse({"chosen": [system, U, A], "rejected": [system, U, B]})[1]
    assert record == PreferencePair([system, U], "Yes.", "No.")


def test_ranked_with_ranking_and_with_scores():
    shape, record = parse({"prompt": "Q?", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]})
    assert shape == "ranked" and record == Ranked([U], ["a", "b", "c"], [2, 0, 1])
    record = parse({"prompt": "Q?", "responses": ["a", "b", "c"], "scores": [1, 3, 2]})[1]
    assert record.scores == [1.0, 3.0, 2.0] and record.order() == [1, 2, 0]


def test_unpaired():
    shape, record = parse({"prompt": "Q?", "completion": "Yes.", "label": True})
    assert shape == "unpaired" and record == Unpaired([U], "Yes.", True)
    assert parse({"prompt": "Q?", "completion": "Yes.", "label": 0})[1].label is False


def test_prompt_only_rows_and_prompt_kind_from_any_shape():
    shape, record = parse({"prompt": "Q?", "answer": "42"})
    assert shape == "prompt" and record == Prompt([U], extra={"answer": "42"})
    shape, record = parse({"messages": [U, A]}, kind="prompt")
    assert shape == "messages" and record.prompt == [U]


def test_detect_shape_names():
    assert detect_shape({"chosen": "a", "rejected": "b"}) == "preference"
    assert detect_shape({"x": 1}) is None


def test_load_records_kind_and_limit(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) for i in range(5)) + "\n")
    records = load_records(path, kind="sft", limit=3)
    assert [r.messages[0]["content"] for r in records] == ["q0", "q1", "q2"]
    assert records[2].source == f"{path}:3"


# --- bad rows: one line, FILE:LINE: field 'x': what is wrong ----------------------------------


@pytest.mark.parametrize("row,kind,message", [
    # missing field
    ({"prompt": "Q?", "chosen": "Yes."}, None, "data.jsonl:7: field 'rejected': missing (if the file names it otherwise: --columns rejected=COLUMN)"),
    ({"instruction": "Add."}, None, "data.jsonl:7: field 'output': missing (if the file names it otherwise: --columns output=COLUMN)"),
    ({"prompt": "Q?", "completion": "A", "label": None}, None, "data.jsonl:7: field 'label': missing"),
    ({"messages": [{"content": "Q?"}, A]}, None, "data.jsonl:7: field 'messages[0].role': missing"),
    # empty field
    ({"prompt": "  ", "completion": "A"}, None, "data.jsonl:7: field 'prompt': is empty"),
    ({"messages": []}, None, "data.jsonl:7: field 'messages': is empty"),
    ({"messages": [U, {"role": "assistant", "content": ""}]}, None, "data.jsonl:7: field 'messages[1].content': is empty"),
    # wrong type
    ({"prompt": 5, "completion": "A"}, None, "data.jsonl:7: field 'prompt': expected text or a list of messages, got a number"),
    ({"messages": "hi"}, None, "data.jsonl:7: field 'messages': expected a list of messages, got text"),
    ({"prompt": "Q", "completion": "A", "label": "yes"}, None, "data.jsonl:7: field 'label': expected true or false, got 'yes'"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "big"}, None,
     "data.jsonl:7: field 'margin': expected a finite number, got 'big'"),
    ({"prompt": "Q", "responses": ["a", "b"], "ranking": [0, 0]}, None,
     "data.jsonl:7: field 'ranking': expected a permutation of 0..1, got [0, 0]"),
    ({"prompt": "Q", "responses": ["a", "b"], "scores": [1.0]}, None,
     "data.jsonl:7: field 'scores': expected 2 scores (one per response), got 1"),
    # invalid role, no assistant turn
    ({"messages": [{"role": "bot", "content": "x"}]}, None,
     "data.jsonl:7: field 'messages[0].role': invalid role 'bot' (expected one of: system, user, assistant, tool)"),
    ({"messages": [U]}, None, "data.jsonl:7: field 'messages': no assistant turn to learn from"),
    # chosen == rejected
    ({"prompt": "Q", "chosen": "same", "rejected": "same"}, None, "data.jsonl:7: field 'rejected': is identical to 'chosen'"),
    ({"chosen": [U, A], "rejected": [{"role": "user", "content": "other"}, B]}, None,
     "data.jsonl:7: field 'prompt': missing, and chosen/rejected share no leading messages to use as the prompt"),
])
def test_bad_rows(row, kind, message):
    with pytest.raises(InputError) as info:
        parse(row, kind)
    assert str(info.value) == message


def test_unknown_shape_lists_the_known_shapes():
    with pytest.raises(InputError) as info:
        parse({"body": "hello", "id": 1})
    message = str(info.value)
    assert message.startswith("data.jsonl:7: unknown shape (fields: body, id); known shapes: preference (")
    for shape in ("messages", "sharegpt", "alpaca", "dolly", "prompt_completion", "question_answer", "text", "ranked",
                  "unpaired", "prompt"):
        assert f"{shape} (" in message
    assert message.endswith("or map your columns onto one with --columns FIELD=COLUMN (e.g. --columns prompt=question)")


def test_wrong_kind_names_what_is_needed():
    with pytest.raises(InputError) as info:
        parse({"prompt": "Q", "chosen": "a", "rejected": "b"}, kind="sft")
    assert str(info.value).startswith("data.jsonl:7: row has the preference shape (preference data), but sft data"
                                      " is needed: messages (messages); sharegpt (conversations)")


def test_load_records_stops_at_the_first_bad_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [U, A]}) + "\n" + json.dumps({"messages": [U]}) + "\n")
    with pytest.raises(InputError, match=rf"^{path}:2: field 'messages': no assistant turn"):
        load_records(path)
