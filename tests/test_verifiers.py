"""Built-in verifiers: answer extraction, numeric equivalence, exact/regex, JSON schema, code, sorting."""
from __future__ import annotations

from fractions import Fraction

import pytest

from posttrain.errors import PosttrainError
from posttrain.rollout.verifiers import (
    Score,
    answer_format_reward,
    answer_line,
    code_reward,
    exact_reward,
    extract_boxed,
    extract_code,
    extract_final_answer,
    extract_json,
    extract_number_list,
    json_schema_reward,
    math_reward,
    numbers_equal,
    parse_number,
    regex_reward,
    sort_reward,
)

# ------------------------------------------------------------------------------ math

@pytest.mark.parametrize("text, expected", [
    ("The total is 12 apples, so \\boxed{42}.", "42"),
    ("\\boxed{\\frac{3}{4}} and later 7", "\\frac{3}{4}"),
    ("nested \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("First 3, then 4. Answer: 17 (because 8 + 9)", "17"),
    ("The answer is -5.", "-5"),
    ("She paid $1,234.50 in total", "1,234.50"),
    ("Step 1: 2+2=4\nStep 2: 4*3=12", "12"),
    ("#### 72", "72"),
    ("half is 1/2", "1/2"),
    ("value \\frac{5}{8}", "\\frac{5}{8}"),
    ("no digits here", None),
    ("unfinished \\boxed{12", "12"),  # unbalanced box: fall back to the last number
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_extract_boxed_balances_braces():
    assert extract_boxed("x \\boxed{\\frac{a}{b}} y \\boxed{2}") == "2"
    assert extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("\\fbox{7}") == "7"
    assert extract_boxed("\\boxed{open") is None and extract_boxed("none") is None


@pytest.mark.parametrize("text, value", [
    ("42", Fraction(42)), ("-5", Fraction(-5)), ("\u22123", Fraction(-3)), ("1,234", Fraction(1234)),
    ("1,234.5", Fraction(2469, 2)), ("0.75", Fraction(3, 4)), (".5", Fraction(1, 2)), ("3/4", Fraction(3, 4)),
    ("\\frac{3}{4}", Fraction(3, 4)), ("-\\dfrac{1}{3}", Fraction(-1, 3)), ("$12$", Fraction(12)),
    ("1e3", Fraction(1000)), ("50%", Fraction(1, 2)), ("7.", Fraction(7)), ("abc", None), ("1/0", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_numbers_equal_is_exact_for_integers_and_tolerant_for_decimals():
    assert numbers_equal(Fraction(1, 2), Fraction("0.5"))
    assert numbers_equal(Fraction("0.3333333"), Fraction(1, 3))  # relative error 1e-7
    assert not numbers_equal(Fraction("0.333"), Fraction(1, 3))
    assert not numbers_equal(Fraction(1000000), Fraction(1000001))  # integers never use the tolerance


@pytest.mark.parametrize("response, answer, score", [
    ("The result is \\boxed{\\frac{3}{4}}", "0.75", 1.0),
    ("Answer: 1,234", 1234, 1.0),
    ("So 3 - 8 gives -5. Answer: -5", -5, 1.0),
    ("Answer: 0.5", "1/2", 1.0),
    ("I think it is 7", 8, 0.0),
    ("Reasoning... #### 72", "Natalia sold 48 clips... #### 72", 1.0),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{2}", 1.0),
    ("Answer: 2.5", 2.5, 1.0),
])
def test_lenient_math_reward(response, answer, score):
    assert math_reward(lenient=True)("q", response, answer=answer) == score


def test_lenient_math_reward_reasons_and_missing_answer():
    reward = math_reward(lenient=True)
    assert reward("q", "I think 7", answer=8).reason == "expected 8, got 7"
    assert reward("q", "no idea", answer=3).reason == "no answer found"
    assert reward("q", "Answer: 3", answer=3).reason is None
    assert reward("q", "21 + 9 = 30\nAnswer: N", answer=30) == 1.0  # the loophole GRPO found (issue 19)
    with pytest.raises(PosttrainError, match="the 'math' reward needs a 'answer' field"):
        reward("q", "3")


# What the shipped prompts ask: "End your reply with a line 'Answer: N' where N is the result."
@pytest.mark.parametrize("response, score, reason", [
    ("Answer: 30", 1.0, None),
    ("21 + 9 = 30\nAnswer: 30", 1.0, None),
    ("21 + 9 = 30\n\nAnswer: 30  \n\n", 1.0, None),              # blank lines and spaces around it
    ("Answer: 30.", 1.0, None),                                     # a final period is still the number
    ("Answer: 31", 0.0, "expected 30, got 31"),
    ("21 + 9 = 30\nAnswer: N", 0.0, "the answer line has no number: 'N'"),
    ("Answer: <number>", 0.0, "the answer line has no number: '<number>'"),
    ("Answer: 30 apples", 0.0, "the answer line has no number: '30 apples'"),
    ("Answer: 30\nHope this helps!", 0.0, "text after the answer line: 'Hope this helps!'"),
    ("Answer: 29\nAnswer: 30", 0.0, "2 answer lines (exactly one is asked for)"),
    ("Final answer: 29\nAnswer: 30", 0.0, "2 answer lines (exactly one is asked for)"),
    ("The answer is 30.\nAnswer: 30", 1.0, None),                 # prose before the line is fine
    ("**Answer:** 30", 0.0, "answer line not as asked ('Answer: ...'): '**Answer:** 30'"),
    ("answer: 30", 0.0, "answer line not as asked ('Answer: ...'): 'answer: 30'"),
    ("Answer:", 0.0, "empty answer line"),
    ("21 + 9 = 30", 0.0, "no 'Answer: ...' line"),                  # the last-number fallback is gone
    ("The result is \\boxed{30}", 0.0, "no 'Answer: ...' line"),
    ("", 0.0, "empty response"),
])
def test_strict_math_reward_reads_only_the_final_answer_line(response, score, reason):
    got = math_reward()("q", response, answer=30)
    assert (float(got), got.reason) == (score, reason)


def test_strict_math_reward_numbers_and_partial_credit():
    assert math_reward()("q", "Answer: 0.5", answer="1/2") == 1.0
    assert math_reward()("q", "Answer: -5", answer=-5) == 1.0
    shaped = math_reward(format_credit=0.1)
    assert shaped("q", "Answer: 31", answer=30) == 0.1       # well-formed, wrong number: partial credit
    assert shaped("q", "Answer: N", answer=30) == 0.0        # malformed: nothing
    assert shaped("q", "Answer: 30", answer=30) == 1.0
    with pytest.raises(PosttrainError, match=r"format_credit must be in \[0, 1\), got 1.5"):
        math_reward(format_credit=1.5)


def test_answer_line():
    assert answer_line("x\nAnswer: 1, 2") == ("1, 2", None)
    assert answer_line("Final answer: 3") == (None, "answer line not as asked ('Answer: ...'): 'Final answer: 3'")
    assert answer_line("Answer the question: 3") == (None, "no 'Answer: ...' line")  # not an answer line


def test_score_is_a_float_with_a_reason():
    score = Score(0.0, "why")
    assert isinstance(score, float) and score == 0.0 and score.reason == "why"
    assert type(score + 1) is float and repr(score) == "Score(0.0, 'why')"


# ------------------------------------------------------------------- exact, regex, format

def test_exact_reward_normalises_by_default():
    reward = exact_reward()
    assert reward("q", "  Paris \n", answer="paris") == 1.0
    assert reward("q", "New   York", answer="new york") == 1.0
    assert reward("q", "Rome", answer=["Paris", "Rome"]) == 1.0
    assert reward("q", "Paris!", answer="paris") == 0.0
    assert exact_reward(strip_punctuation=True)("q", "Paris!", answer="paris") == 1.0
    assert exact_reward(ignore_case=False)("q", "Paris", answer="paris") == 0.0


def test_regex_reward_from_record_or_fixed_pattern():
    assert regex_reward()("q", "order #12345 shipped", pattern=r"#\d{5}\b") == 1.0
    assert regex_reward()("q", "order #12 shipped", pattern=r"#\d{5}\b").reason == r"no match for /#\d{5}\b/"
    assert regex_reward(r"yes|no", fullmatch=True)("q", " yes ") == 1.0
    assert regex_reward(r"yes|no", fullmatch=True)("q", "yes, sure") == 0.0
    with pytest.raises(PosttrainError, match="invalid pattern"):
        regex_reward("(")("q", "x")


def test_lenient_answer_format_reward():
    reward = answer_format_reward(lenient=True)
    assert reward("q", "Let me think.\nAnswer: 12") == 1.0
    assert reward("q", "**Answer:** 12") == 1.0
    assert reward("q", "Answer: N") == 1.0
    assert reward("q", "The answer is 12") == 0.0


@pytest.mark.parametrize("response, score", [
    ("Let me think.\nAnswer: 12", 1.0), ("Answer: 1, 3, 5", 1.0), ("Answer: -2.5", 1.0),
    ("Answer: N", 0.0), ("Answer: <number>", 0.0), ("**Answer:** 12", 0.0), ("The answer is 12", 0.0),
    ("Answer: 12\nDone.", 0.0), ("Answer: 12\nAnswer: 13", 0.0), ("Answer: twelve", 0.0),
])
def test_strict_answer_format_reward(response, score):
    assert answer_format_reward()("q", response) == score


# ---------------------------------------------------------------------------- sorting

@pytest.mark.parametrize("text, numbers", [
    ("Sorted: 9, 1\nAnswer: 1, 3, 5", [1, 3, 5]),
    ("The sorted list is [2, 7, 9].", [2, 7, 9]),
    ("Here you go:\n0 4 11", [0, 4, 11]),
    ("Answer: -2, 0.5, 3", [Fraction(-2), Fraction(1, 2), Fraction(3)]),
    ("Sorted:\n1. 9\n2. 4\n3. 3\n4. 19", [9, 4, 3, 19]),  # numbered items, not their numbering
    ("- 2\n- 5\n- 11.", [2, 5, 11]),
    ("nothing", None),
])
def test_extract_number_list(text, numbers):
    assert extract_number_list(text) == numbers


def test_sort_reward():
    for reward in (sort_reward(), sort_reward(lenient=True)):
        assert reward("q", "Answer: 1, 3, 5", answer=[1, 3, 5]) == 1.0
        assert reward("q", "Answer: 1, 5, 3", answer=[1, 3, 5]).reason == "expected [1, 3, 5], got [1, 5, 3]"
        assert reward("q", "Answer: 1, 3", answer=[1, 3, 5]) == 0.0
        assert reward("q", "Answer: 1, 3, 5", answer="1, 3, 5") == 1.0
    strict, lenient = sort_reward(), sort_reward(lenient=True)
    assert lenient("q", "The sorted list is [1, 3, 5].", answer=[1, 3, 5]) == 1.0
    assert strict("q", "The sorted list is [1, 3, 5].", answer=[1, 3, 5]).reason == "no 'Answer: ...' line"
    assert strict("q", "Answer: 1, 3, 5\nDone!", answer=[1, 3, 5]).reason == "text after the answer line: 'Done!'"
    assert strict("q", "Answer: [1, 3, 5]", answer=[1, 3, 5]).reason == \
        "the answer line is not a list of numbers: '[1, 3, 5]'"


# ------------------------------------------------------------------------------- JSON

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
          "required": ["name"]}


def test_extract_json_prefers_a_fenced_block_then_the_first_value():
    assert extract_json('Sure!\n```json\n{"name": "a"}\n```\nand {"other": 1}') == ({"name": "a"}, None)
    assert extract_json('Result: {"name": "b", "age": 3} -- done') == ({"name": "b", "age": 3}, None)
    assert extract_json("array [1, 2] first") == ([1, 2], None)
    assert extract_json("{broken") == (None, "no JSON object found")


def test_json_schema_reward():
    reward = json_schema_reward()
    assert reward("q", '{"name": "Ada", "age": 36}', schema=SCHEMA) == 1.0
    assert reward("q", '{"age": 3}', schema=SCHEMA).reason == "schema: 'name' is a required property"
    assert reward("q", '{"name": "x", "age": -1}', schema=SCHEMA).reason == "schema: age: -1 is less than the minimum of 0"
    assert reward("q", "no json", schema=SCHEMA).reason == "no JSON object found"
    assert reward("q", '{"name": "x"}', schema='{"type": "object"}') == 1.0  # schema as a JSON string
    assert json_schema_reward(SCHEMA)("q", '{"name": "fixed"}') == 1.0
    with pytest.raises(PosttrainError, match="the schema is invalid"):
        reward("q", "{}", schema={"type": "no-such-type"})


# ------------------------------------------------------------------------------- code

def test_extract_code():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nUse it:\n```python\nf()\n```") == \
        "def f():\n    return 1"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("```python\ndef f():\n    return 2") == "def f():\n    return 2"  # unclosed fence
    assert extract_code("def g():\n    return 3\n") == "def g():\n    return 3"
    assert extract_code("```bash\nls\n```\n```py\ny = 2\n```") == "y = 2"


def test_code_reward_fraction_and_all_or_nothing():
    response = "```python\ndef add(a, b):\n    return a + b if a else 0\n```"
    tests = ["assert add(1, 2) == 3", "assert add(0, 5) == 5"]
    half = code_reward()("q", response, tests=tests)
    assert half == 0.5 and half.reason.startswith("1 of 2 tests failed")
    assert code_reward(all_or_nothing=True)("q", response, tests=tests) == 0.0
    batch = code_reward().batch(["q", "q"], [response, "def add(a, b):\n    return a + b"], [{"tests": tests}] * 2)
    assert batch == [0.5, 1.0]
    with pytest.raises(PosttrainError, match="needs a 'tests' field"):
        code_reward()("q", response)
