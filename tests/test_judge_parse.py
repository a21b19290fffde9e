"""Verdict parsing and judge templates."""
from __future__ import annotations

import pytest

from posttrain.errors import ConfigError
from posttrain.judge.parse import parse_pairwise, parse_score
from posttrain.judge.templates import load_template, parse_template, shipped_templates


@pytest.mark.parametrize("text, expected", [
    ("Both are fine but A cites a source. [[A]]", "A"),
    ("Answer with [[A]], [[B]] or [[C]].\nMy verdict: [[B]]", "B"),  # an echoed instruction; the last counts
    ("[[C]]", "tie"),
    ("[[tie]]", "tie"),
    ("Winner: B", "B"),
    ("**Final verdict:** tie", "tie"),
    ("The better response is A.", "A"),
    ("Verdict: Assistant B", "B"),
    ("tie", "tie"),
    ("Tie.", "tie"),
    ("After thinking, it is a tie.", "tie"),
    ('{"winner": "A", "reason": "shorter"}', "A"),
    ('Reasoning first.\n```json\n{"verdict": "Assistant B"}\n```', "B"),
    ('{"winner": "tie"}', "tie"),
    ("B is more accurate.\n\nB", "B"),
    ("Answer A", "A"),
    ("I think Answer A is better than Answer B.", "A"),
    ("Response (B) is clearly preferable here.", "B"),
])
def test_pairwise_formats(text, expected):
    assert parse_pairwise(text) == expected


@pytest.mark.parametrize("text", [
    "", None, "lorem ipsum dolor", "Both answers have merit.", '{"winner": "maybe"}', "[[D]]",
    "A is better",  # no label word before the letter: too weak to read as a verdict
])
def test_pairwise_unparseable(text):
    assert parse_pairwise(text) is None


def test_json_beats_brackets_and_last_bracket_wins():
    assert parse_pairwise('[[A]] on reflection {"winner": "B"}') == "B"
    assert parse_pairwise("[[A]] ... no, [[B]]") == "B"


@pytest.mark.parametrize("text, expected", [
    ("Score: 7/10", 7.0),
    ("Rating: 7 out of 10", 7.0),
    ("Good answer. [[8]]", 8.0),
    ("[[6/10]]", 6.0),
    ('{"score": 9, "why": "ok"}', 9.0),
    ('{"rating": "4"}', 4.0),
    ("I give it a score of 3.", 3.0),
    ("Overall 6/10", 6.0),
    ("Reasoning...\n5", 5.0),
    ("**Score:** 7.5", 7.5),
])
def test_score_formats(text, expected):
    assert parse_score(text, 1, 10) == expected


@pytest.mark.parametrize("text", [
    "Score: 11",          # outside [1, 10]
    "Score: 4/5",         # another scale: not rescaled
    "Score: 0",
    "no number here",
    "Scoring guide: [[N]]",
    '{"score": true}',
])
def test_score_unparseable(text):
    assert parse_score(text, 1, 10) is None


def test_score_range_from_template():
    assert parse_score("Score: 0", 0, 5) == 0.0
    assert parse_score("Score: 5/5", 0, 5) == 5.0
    assert parse_score("Score: 7", 0, 5) is None


def test_shipped_templates_load_and_render():
    assert {"pairwise", "pointwise", "educational_value"} <= set(shipped_templates())
    pair = load_template(None, "pairwise")
    messages = pair.render_pairwise("What is 2+2?", "four", "five {not a placeholder}")
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    text = messages[-1]["content"]
    assert "What is 2+2?" in text and text.index("four") < text.index("five {not a placeholder}")
    assert pair.rubric and pair.rubric in text
    assert "custom rubric" in pair.render_pairwise("q", "a", "b", rubric="custom rubric")[-1]["content"]
    point = load_template("pointwise", "pointwise")
    assert (point.min_score, point.max_score) == (1, 10)
    assert "from 1 to 10" in point.render_pointwise("q", "an answer")[-1]["content"]


def test_template_from_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text('mode: pairwise\nuser: |\n  Q: {question}\n  1) {answer_a}\n  2) {answer_b}\n  JSON {{"winner": ...}}\n')
    template = load_template(str(path), "pairwise")
    assert template.system is None
    [message] = template.render_pairwise("q?", "x", "y")
    assert message["content"] == 'Q: q?\n1) x\n2) y\nJSON {"winner": ...}'


@pytest.mark.parametrize("yaml_text, message", [
    ("mode: pairwise\nuser: '{question} {answer_a} {answer_b} {answer_c}'",
     "unknown placeholder {answer_c} in 'user'"),
    ("mode: pairwise\nsystem: 'be fair {tone}'\nuser: '{answer_a} {answer_b}'", "unknown placeholder {tone} in 'system'"),
    ("mode: pairwise\nuser: '{question} {answer_a}'", "never shows {answer_b}"),
    ("mode: pairwise\nuser: '{answer_a} {answer_b'", "bad placeholder syntax"),
    ("mode: pointwise\nuser: '{answer}'", "is a pointwise template, but --mode is pairwise"),
    ("mode: pairwise\nprompt: '{answer_a} {answer_b}'", "unknown key 'prompt'"),
    ("mode: pairwise\nuser: ''", "'user' (the prompt text) is missing or empty"),
    ("mode: pairwise\nuser: [unclosed", "invalid YAML at line"),
])
def test_bad_templates_are_one_line_config_errors(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_template(str(path), "pairwise")
    assert message in str(info.value)
    assert "\n" not in str(info.value) and str(info.value).startswith("config field 'template':")


def test_unknown_template_name_lists_shipped_ones():
    with pytest.raises(ConfigError, match="unknown template 'nope'.*pairwise"):
        load_template("nope", "pairwise")
    with pytest.raises(ConfigError, match="min_score"):
        parse_template({"mode": "pointwise", "user": "{answer}", "min_score": 5, "max_score": 5}, "t")
