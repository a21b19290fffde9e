"""More public dataset shapes load unchanged: stanfordnlp/SHP (and SHP-2), lmsys/chatbot_arena_conversations,
PKU-Alignment/PKU-SafeRLHF, openbmb/UltraFeedback (raw) in dpo, argilla/ultrafeedback-binarized-preferences-cleaned,
and the SFT sets alpaca-cleaned, OpenOrca, no_robots, ultrachat_200k, oasst_top1. The rows are written by hand
with each dataset's column names and value types (from the dataset cards); nothing is downloaded."""
from __future__ import annotations

import csv

import pytest

from data_files import data_check, write_jsonl
from posttrain.cli import main
from posttrain.data import load_records
from posttrain.data.formats import NoPreference, parse_row
from posttrain.errors import InputError
from posttrain.records import PreferencePair

# stanfordnlp/SHP: a Reddit post and two top-level comments; labels 1 = human_ref_A preferred.
SHP = [
    {"post_id": "himc90", "domain": "askculinary_train", "upvote_ratio": 0.99,
     "history": "How do I keep rice from sticking to the pot?", "c_root_id_A": "fuqlz9y", "c_root_id_B": "fuqk3kk",
     "created_at_utc_A": 1590020041, "created_at_utc_B": 1590019207, "score_A": 52, "score_B": 10,
     "human_ref_A": "Rinse it until the water runs clear, then don't stir it.", "human_ref_B": "Buy a rice cooker.",
     "labels": 1, "seconds_difference": 834.0, "score_ratio": 5.2},
    # SHP-2 has the same columns; its StackExchange rows come from other domains.
    {"post_id": "q1234", "domain": "cooking.stackexchange", "upvote_ratio": 1.0,
     "history": "Why does my bread come out dense?", "c_root_id_A": "a1", "c_root_id_B": "a2",
     "created_at_utc_A": 1600000000, "created_at_utc_B": 1600000500, "score_A": 3, "score_B": 14,
     "human_ref_A": "Too much flour.", "human_ref_B": "Let the dough prove longer; under-proved dough is dense.",
     "labels": 0, "seconds_difference": 500.0, "score_ratio": 4.67},
]

# lmsys/chatbot_arena_conversations: two conversations sharing the user turn(s), and the vote.
USER = {"content": "What is the difference between OpenCL and CUDA?", "role": "user"}


def arena_row(winner, reply_a="OpenCL is an open standard.", reply_b="CUDA only runs on NVIDIA GPUs.", **more):
    return {"question_id": "58210e39b3fd4441a2bd4a518bb44c2d", "model_a": "chatglm-6b", "model_b": "koala-13b",
            "winner": winner, "judge": "arena_user_973",
            "conversation_a": [USER, {"content": reply_a, "role": "assistant"}],
            "conversation_b": [USER, {"content": reply_b, "role": "assistant"}],
            "turn": 1, "anony": True, "language": "English", "tstamp": 1682351591.1322,
            "openai_moderation": {"categories": {"harassment": False}, "flagged": False}, "toxic_chat_tag": {}, **more}


TWO_TURNS = arena_row("model_a", conversation_a=[USER, {"content": "A.", "role": "assistant"},
                                                 {"content": "Which is faster?", "role": "user"},
                                                 {"content": "It depends.", "role": "assistant"}],
                      conversation_b=[USER, {"content": "B.", "role": "assistant"},
                                      {"content": "Which is faster?", "role": "user"},
                                      {"content": "CUDA, usually.", "role": "assistant"}], turn=2)
ARENA = [arena_row("model_b"), arena_row("model_a", "Both are GPU APIs.", "No idea."), arena_row("tie"),
         arena_row("tie (bothbad)"), TWO_TURNS]

# PKU-Alignment/PKU-SafeRLHF: two responses, a helpfulness label and a safety label (they may disagree).
PKU = [
    {"prompt": "How can I get back at a coworker who insulted me?",
     "response_0": "Tell HR and keep a record of what was said.", "response_1": "Slash their tyres.",
     "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca-7B",
     "is_response_0_safe": True, "is_response_1_safe": False,
     "response_0_harm_category": {"Violence": False}, "response_1_harm_category": {"Violence": True},
     "response_0_severity_level": 0, "response_1_severity_level": 2,
     "better_response_id": 0, "safer_response_id": 0, "response_0_sha256": "ab12", "response_1_sha256": "cd34"},
    {"prompt": "How do I pick a lock?", "response_0": "I can't help with that.",
     "response_1": "Insert a tension wrench, then rake the pins until they set.",
     "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca2-7B",
     "is_response_0_safe": True, "is_response_1_safe": False,
     "response_0_harm_category": {"Violence": False}, "response_1_harm_category": {"Violence": False},
     "response_0_severity_level": 0, "response_1_severity_level": 1,
     "better_response_id": 1, "safer_response_id": 0, "response_0_sha256": "ef56", "response_1_sha256": "gh78"},
]

# openbmb/UltraFeedback as published: one completion per model, each with GPT-4's overall_score.
UF_RAW = {"source": "evol_instruct", "instruction": "Name a prime number above 10.",
          "models": ["gpt-4", "alpaca-7b", "falcon-40b-instruct"],
          "completions": [
              {"model": "gpt-4", "response": "11 is a prime number above 10.", "overall_score": 8.5,
               "fine-grained_score": 4.75, "principle": "helpfulness", "custom_system_prompt": "Be helpful.",
               "critique": "Correct.", "annotations": {"helpfulness": {"Rating": "5", "Rationale": "Correct."}}},
              {"model": "alpaca-7b", "response": "9.", "overall_score": 2.0, "fine-grained_score": 1.25,
               "principle": "honesty", "custom_system_prompt": "", "critique": "9 is not prime.", "annotations": {}},
              {"model": "falcon-40b-instruct", "response": "13", "overall_score": 7.0, "fine-grained_score": 4.0,
               "principle": "truthfulness", "custom_system_prompt": "", "critique": "Fine.", "annotations": {}}],
          "correct_answers": ["11", "13"], "incorrect_answers": ["9"]}

# argilla/ultrafeedback-binarized-preferences-cleaned: prompt text, chosen/rejected conversations, ratings.
ARGILLA = {"source": "evol_instruct", "prompt": "Name a prime number above 10.",
           "chosen": [{"content": "Name a prime number above 10.", "role": "user"},
                      {"content": "11 is a prime number above 10.", "role": "assistant"}],
           "chosen-rating": 5.0, "chosen-model": "gpt-4",
           "rejected": [{"content": "Name a prime number above 10.", "role": "user"}, {"content": "9.", "role": "assistant"}],
           "rejected-rating": 1.0, "rejected-model": "alpaca-7b"}


# --- SHP -----------------------------------------------------------------------------------------


def test_shp_rows_are_pairs_ordered_by_labels(tmp_path):
    first, second = load_records(write_jsonl(tmp_path / "shp.jsonl", SHP), kind="preference")
    assert first.prompt == [{"role": "user", "content": SHP[0]["history"]}]
    assert (first.chosen, first.rejected) == (SHP[0]["human_ref_A"], SHP[0]["human_ref_B"])  # labels 1: A
    assert (second.chosen, second.rejected) == (SHP[1]["human_ref_B"], SHP[1]["human_ref_A"])  # labels 0: B
    assert first.extra["score_A"] == 52 and first.extra["domain"] == "askculinary_train" and first.extra["labels"] == 1
    assert "history" not in first.extra and "human_ref_A" not in first.extra


def test_shp_domain_folder_as_downloaded(tmp_path):
    folder = tmp_path / "SHP" / "askculinary"  # train.json etc.: one JSON object per line
    folder.mkdir(parents=True)
    write_jsonl(folder / "train.json", SHP)
    write_jsonl(folder / "test.json", SHP[::-1])
    train = [SHP[0]["human_ref_A"], SHP[1]["human_ref_B"]]
    assert [p.chosen for p in load_records(folder, kind="preference")] == train
    assert [p.chosen for p in load_records(f"{folder}:test", kind="preference")] == train[::-1]


# --- chatbot arena ---------------------------------------------------------------------------------


def test_arena_rows_take_the_shared_user_turn_as_prompt_and_the_winner_as_chosen(tmp_path):
    shape, pair = parse_row(ARENA[0], "arena.jsonl:1", "preference")
    assert shape == "arena" and pair.prompt == [{"role": "user", "content": USER["content"]}]
    assert (pair.chosen, pair.rejected) == ("CUDA only runs on NVIDIA GPUs.", "OpenCL is an open standard.")
    assert pair.extra["model_b"] == "koala-13b" and pair.extra["language"] == "English"
    _, pair = parse_row(ARENA[1], "arena.jsonl:2", "preference")
    assert (pair.chosen, pair.rejected) == ("Both are GPU APIs.", "No idea.")


def test_arena_ties_and_multi_turn_votes_are_skipped_and_counted_by_data_check(tmp_path, capsys):
    path = write_jsonl(tmp_path / "arena.jsonl", ARENA)
    code, out, err = data_check(capsys, path)
    assert code == 0, err
    assert out.splitlines()[:3] == [f"{path}: 2 rows, all valid",
                                    "  3 rows skipped as holding no preference pair (tie 2, multi-turn 1)",
                                    "  shapes: arena 2"]
    # Elsewhere (load_records, serve import, judge) a tie is a one-line error that says why.
    with pytest.raises(NoPreference, match=rf"^{path}:3: field 'winner': is 'tie': the vote prefers neither "
                                           r"conversation \(dpo, rm, kto and data check skip such rows"):
        load_records(path, kind="preference")
    ties = write_jsonl(tmp_path / "ties.jsonl", ARENA[2:4])
    code, _, err = data_check(capsys, ties)
    assert code == 2 and err == (f"posttrain data check: error: {ties}: no row left to check: 2 rows skipped as "
                                 "holding no preference pair (tie 2)\n")


# --- PKU-SafeRLHF ----------------------------------------------------------------------------------


def test_pku_saferlhf_reads_better_response_id_and_safer_through_columns(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pku.jsonl", PKU)
    better = load_records(path, kind="preference")
    assert [p.chosen for p in better] == [PKU[0]["response_0"], PKU[1]["response_1"]]
    assert better[1].prompt == [{"role": "user", "content": "How do I pick a lock?"}]
    assert better[1].extra["is_response_1_safe"] is False and "response_0" not in better[1].extra
    safer = load_records(path, kind="preference", columns={"better_response_id": "safer_response_id"})
    assert [p.chosen for p in safer] == [PKU[0]["response_0"], PKU[1]["response_0"]]
    code, out, err = data_check(capsys, path, "--columns", "better_response_id=safer_response_id")
    assert code == 0 and "shapes: pku_saferlhf 2" in out, err


def test_csv_copies_of_shp_and_pku_read_their_labels(tmp_path):
    """A CSV copy (pandas' to_csv, or csv.DictWriter) writes the 0/1 labels as text."""
    for name, rows in (("shp", SHP), ("pku", PKU)):
        path = tmp_path / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        from_csv = load_records(path, kind="preference")
        from_jsonl = load_records(write_jsonl(tmp_path / f"{name}.jsonl", rows), kind="preference")
        assert [(p.chosen, p.rejected) for p in from_csv] == [(p.chosen, p.rejected) for p in from_jsonl]
    safer = load_records(tmp_path / "pku.csv", kind="preference", columns={"better_response_id": "safer_response_id"})
    assert [p.chosen for p in safer] == [PKU[0]["response_0"], PKU[1]["response_0"]]


# --- one-line errors on malformed rows -------------------------------------------------------------


@pytest.mark.parametrize("good, bad, message", [
    (SHP[0], {**SHP[0], "labels": 2}, "field 'labels': expected 0 or 1, got 2"),
    (SHP[0], {k: v for k, v in SHP[0].items() if k != "labels"},
     "field 'labels': missing (if the file names it otherwise: --columns labels=COLUMN)"),
    (SHP[0], {**SHP[0], "human_ref_B": None}, "field 'human_ref_B': missing (if the file names it otherwise: "
                                              "--columns human_ref_B=COLUMN)"),
    (SHP[0], {**SHP[0], "human_ref_B": SHP[0]["human_ref_A"] + " "},
     "field 'human_ref_B': is identical to 'human_ref_A' apart from leading/trailing whitespace"),
    (ARENA[0], arena_row("model_c"),
     "field 'winner': expected one of 'model_a', 'model_b', 'tie', 'tie (bothbad)', got 'model_c'"),
    (ARENA[0], {**ARENA[0], "conversation_b": "CUDA."}, "field 'conversation_b': expected a list of messages, got text"),
    (ARENA[0], arena_row("model_a", reply_b=""), "field 'conversation_b[1].content': is empty"),
    (ARENA[0], arena_row("model_a", reply_b="OpenCL is an open standard."),
     "field 'conversation_b': is identical to 'conversation_a'"),
    (PKU[0], {**PKU[0], "better_response_id": "0"}, "field 'better_response_id': expected 0 or 1, got '0'"),
    (PKU[0], {**PKU[0], "response_1": 3}, "field 'response_1': expected text, got a number"),
    (UF_RAW, {**UF_RAW, "completions": [{**UF_RAW["completions"][0], "overall_score": "N/A"}, UF_RAW["completions"][1]]},
     "field 'completions[0].overall_score': expected a finite number, got 'N/A'"),
], ids=["shp label", "shp no label", "shp reply", "shp same replies", "arena winner", "arena conversation",
        "arena empty reply", "arena same replies", "pku label", "pku response", "ultrafeedback score"])
def test_a_malformed_row_is_one_line_naming_file_line_and_field(tmp_path, capsys, good, bad, message):
    path = write_jsonl(tmp_path / "d.jsonl", [good, bad])
    code, _, err = data_check(capsys, path)
    assert code == 2 and err == f"posttrain data check: error: {path}:2: {message}\n"


# --- UltraFeedback (raw) in dpo, argilla's cleaned binarized set ---------------------------------------


def test_dpo_reads_a_ranked_row_as_its_best_response_against_its_worst(tmp_path):
    from posttrain.data import get_template
    from posttrain.models import load_tokenizer
    from posttrain.train.preference_data import load_pairs

    tokenizer = load_tokenizer("tiny-random")
    template = get_template("basic", tokenizer)
    path = write_jsonl(tmp_path / "mixed.jsonl", [UF_RAW, ARGILLA, *ARENA, SHP[0], PKU[0]])
    examples, report = load_pairs(str(path), tokenizer, template, max_length=None, length_policy="error")
    assert (report.rows, report.examples, dict(report.skipped)) == (9, 6, {"tie": 2, "multi-turn": 1})
    assert report.summary().splitlines()[0].endswith(
        "0 dropped as invalid, 3 rows skipped as holding no preference pair (tie 2, multi-turn 1)")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    best, worst = encode("11 is a prime number above 10.")[:3], encode("9.")[:1]
    assert examples[0].chosen_ids[:3] == best and examples[0].rejected_ids[:1] == worst  # 8.5 over 2.0, not 7.0


def test_argilla_cleaned_binarized_rows_load_like_h4s(tmp_path):
    (pair,) = load_records(write_jsonl(tmp_path / "argilla.jsonl", [ARGILLA]), kind="preference")
    assert pair == PreferencePair([{"role": "user", "content": "Name a prime number above 10."}],
                                  "11 is a prime number above 10.", "9.",
                                  extra={k: ARGILLA[k] for k in ("source", "chosen-rating", "chosen-model",
                                                                 "rejected-rating", "rejected-model")})


def test_dpo_and_rm_train_on_the_new_shapes_unchanged(tmp_path, capsys):
    data = write_jsonl(tmp_path / "mixed.jsonl", [*SHP, *ARENA, *PKU, UF_RAW, ARGILLA])
    for command in ("dpo", "rm"):
        code = main([command, "--model", "tiny-random", "--data", str(data), "--max-steps", "1", "--batch-size", "2",
                     "--output-dir", str(tmp_path / command), "--no-progress"])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "3 rows skipped as holding no preference pair (tie 2, multi-turn 1)" in out.out + out.err


# --- SFT sets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("row, shape, messages", [
    ({"output": "The capital of France is Paris.", "input": "", "instruction": "What is the capital of France?"},
     "alpaca", [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."}]),
    ({"id": "flan.2020", "system_prompt": "You are a helpful assistant.", "question": "Is 7 prime?",
      "response": "Yes."},
     "question_answer", [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "Is 7 prime?"}, {"role": "assistant", "content": "Yes."}]),
    ({"prompt": "Write a haiku.", "prompt_id": "9a8b", "category": "Generation",
      "messages": [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": "Write a haiku."},
                   {"role": "assistant", "content": "Old pond / a frog jumps / splash"}]},
     "messages", [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": "Write a haiku."},
                  {"role": "assistant", "content": "Old pond / a frog jumps / splash"}]),
    ({"prompt": "Hi", "prompt_id": "7c6d",
      "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye!"}]},
     "messages", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye!"}]),
], ids=["yahma/alpaca-cleaned", "Open-Orca/OpenOrca", "HuggingFaceH4/no_robots", "HuggingFaceH4/ultrachat_200k"])
def test_public_sft_sets_load_unchanged(tmp_path, row, shape, messages):
    path = write_jsonl(tmp_path / "sft.jsonl", [row])
    assert parse_row(row, "sft.jsonl:1", ("sft", "text"))[0] == shape
    assert load_records(path, kind=("sft", "text"))[0].messages == messages


def test_oasst_top1_chatml_text_is_plain_text(tmp_path):
    row = {"text": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"}
    assert parse_row(row, "oasst.jsonl:1", ("sft", "text"))[0] == "text"


def test_a_malformed_sft_row_is_one_line(tmp_path):
    bad = {"id": "x", "system_prompt": "", "question": "Is 7 prime?", "response": ["Yes."]}
    with pytest.raises(InputError, match=r"^d.jsonl:4: field 'response': expected text, got a list$"):
        parse_row(bad, "d.jsonl:4", "sft")
