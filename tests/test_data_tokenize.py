"""Templates, assistant-only labels on every turn, prompt/response ids and the max-length policy.

The tiny-random tokenizer is byte-level: token id = 4 + byte value, with
<|im_start|> = 1 and <|im_end|> = 2 (eos), so expected ids are easy to write down.
"""
from __future__ import annotations

import copy

import pytest

from posttrain.data.templates import BasicTemplate, get_template
from posttrain.data.tokenize import (
    IGNORE_INDEX,
    LengthStats,
    apply_length_policy,
    encode,
    tokenize_conversation,
    tokenize_conversations,
    tokenize_prompt_response,
)
from posttrain.errors import ConfigError, InputError
from posttrain.models import build_tiny_tokenizer
from posttrain.records import Conversation

SYSTEM = {"role": "system", "content": "S"}
CHAT = [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def b(text: str) -> list[int]:
    """Byte ids of plain text in the tiny tokenizer."""
    return [4 + x for x in text.encode()]


# --- templates ------------------------------------------------------------------------------


def test_chat_template_segments_put_the_newline_after_eos_into_the_context(tok):
    pieces = get_template("chat", tok).segments(CHAT)
    assert pieces == [
        ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("Yo<|im_end|>", True),
        ("\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n", False),
        ("A2<|im_end|>", True),
    ]


@pytest.mark.parametrize("name,expected", [
    ("basic", "S\n\nHi\nYo<|im_end|>\nQ2\nA2<|im_end|>"),
    ("conversational", "System: S\nUser: Hi\nAssistant: Yo<|im_end|>\nUser: Q2\nAssistant: A2<|im_end|>"),
    ("with_input", "S\n\nInstruction: Hi\nResponse: Yo<|im_end|>\nInstruction: Q2\nResponse: A2<|im_end|>"),
    ("alpaca", "S\n\n### Instruction:\nHi\n\n### Response:\nYo<|im_end|>\n\n### Instruction:\nQ2\n\n### Response:\nA2<|im_end|>"),
])
def test_builtin_templates_render_whole_conversations(tok, name, expected):
    template = get_template(name, tok)
    pieces = template.segments(CHAT)
    assert "".join(text for text, _ in pieces) == expected
    assert [text for text, trained in pieces if trained] == ["Yo<|im_end|>", "A2<|im_end|>"]


def test_alpaca_and_with_input_place_the_rows_instruction_and_input(tok):
    messages = [{"role": "user", "content": "Add.\n\n2 and 3"}]
    extra = {"instruction": "Add.", "input": "2 and 3"}
    alpaca = get_template("alpaca", tok).prompt(messages, extra)
    assert alpaca.startswith("The following is a task for you to carry out, together with material to work from.")
    assert alpaca.endswith("### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n")
    assert get_template("with_input", tok).prompt(messages, extra) == "Instruction: Add.\nInput: 2 and 3\nResponse: "
    no_input = get_template("alpaca", tok).prompt([{"role": "user", "content": "Hi"}])
    assert no_input == ("The following is a task for you to carry out. Read it, then write a reply that does what it "
                        "asks.\n\n### Instruction:\nHi\n\n### Response:\n")


def test_get_template_auto_and_errors(tok):
    assert get_template("auto", tok).name == "chat"
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    assert get_template("auto", plain).name == "basic"
    with pytest.raises(ConfigError, match=r"^config field 'template': 'chat' needs a tokenizer with a chat template"):
        get_template("chat", plain)
    with pytest.raises(ConfigError, match=r"^config field 'template': 'fancy' is not one of auto, chat, basic"):
        get_template("fancy", tok)


# --- labels ---------------------------------------------------------------------------------


def test_every_assistant_turn_is_trained_and_nothing_else(tok):
    example = tokenize_conversation(Conversation(CHAT), tok, get_template("chat", tok))
    context1 = [1] + b("system\nS") + [2] + b("\n") + [1] + b("user\nHi") + [2] + b("\n") + [1] + b("assistant\n")
    answer1 = b("Yo") + [2]
    context2 = b("\n") + [1] + b("user\nQ2") + [2] + b("\n") + [1] + b("assistant\n")
    answer2 = b("A2") + [2]
    assert example.input_ids == context1 + answer1 + context2 + answer2
    assert example.labels == ([IGNORE_INDEX] * len(context1) + answer1 + [IGNORE_INDEX] * len(context2) + answer2)


def test_training_tokens_match_the_generation_prompt_of_each_turn(tok):
    template = get_template("chat", tok)
    example = tokenize_conversation(Conversation(CHAT), tok, template)
    starts = [i for i in range(len(example.labels))
              if example.labels[i] != IGNORE_INDEX and (i == 0 or example.labels[i - 1] == IGNORE_INDEX)]
    for start, turn in zip(starts, (2, 4)):
        assert example.input_ids[:start] != []
        assert encode(tok, template.prompt(CHAT[:turn])) == example.input_ids[:start]


def test_prompt_response_ids_end_with_eos(tok):
    template = get_template("chat", tok)
    prompt_ids, response_ids = tokenize_prompt_response(CHAT[:2], "Yo", tok, template)
    assert prompt_ids == encode(tok, template.prompt(CHAT[:2]))
    assert response_ids == b("Yo") + [2]
    # A template without an end marker still gets the eos id appended.
    bare = BasicTemplate(None)
    assert tokenize_prompt_response(CHAT[:2], "Yo", tok, bare)[1] == b("Yo") + [2]


# --- max-length policy ----------------------------------------------------------------------


def conversation(prompt: str, answer: str) -> Conversation:
    return Conversation([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                        source="data.jsonl:7")


def test_error_policy_names_line_and_length(tok):
    template = BasicTemplate(None)  # "prompt\n" + "answer": lengths are byte counts
    with pytest.raises(InputError) as info:
        tokenize_conversation(conversation("abcdefghi", "xyz"), tok, template, max_length=8, policy="error")
    assert str(info.value) == ("data.jsonl:7: field 'messages': example is 13 tokens, longer than max_length 8 "
                               "(use the 'truncate' or 'drop' length policy, or raise max_length)")


def test_drop_policy_returns_none_and_counts(tok):
    stats = LengthStats()
    template = BasicTemplate(None)
    assert tokenize_conversation(conversation("abcdefghi", "xyz"), tok, template, 8, "drop", stats) is None
    assert tokenize_conversation(conversation("ab", "xy"), tok, template, 8, "drop", stats) is not None
    assert (stats.seen, stats.dropped, stats.truncated, stats.kept, stats.longest) == (2, 1, 0, 1, 13)


def test_truncate_keeps_the_end_of_the_prompt_and_the_start_of_the_response(tok):
    template = BasicTemplate(None)
    stats = LengthStats()
    # prompt "abcdefghi\n" (10 tokens), response "xyz" (3): keep the last 5 prompt tokens.
    example = tokenize_conversation(conversation("abcdefghi", "xyz"), tok, template, 8, "truncate", stats)
    assert example.input_ids == b("fghi\nxyz") and len(example) == 8
    assert example.labels == [IGNORE_INDEX] * 5 + b("xyz")
    # A long response keeps max_length // 2 tokens at least: prompt cut to 4, response to 4.
    example = tokenize_conversation(conversation("abcdefghi", "uvwxyz"), tok, template, 8, "truncate", stats)
    assert example.input_ids == b("ghi\nuvwx")
    assert example.labels[-4:] == b("uvwx") and example.labels[:4] == [IGNORE_INDEX] * 4
    assert stats.truncated == 2


def test_truncate_pairs_cuts_the_prompt_once_for_all_responses():
    fitted = apply_length_policy(list(range(10)), [[100, 101, 102], [200] * 6], 8, "truncate")
    assert fitted == (list(range(6, 10)), [[100, 101, 102], [200] * 4])
    assert apply_length_policy([1, 2], [[3]], 8, "truncate") == ([1, 2], [[3]])


def test_tokenize_conversations_summary(tok):
    examples, stats = tokenize_conversations([conversation("a", "b"), conversation("a" * 50, "b")], tok,
                                             BasicTemplate(None), max_length=20, policy="drop")
    assert len(examples) == 1
    assert stats.summary() == "2 examples, longest 52 tokens; 0 truncated, 1 dropped"
