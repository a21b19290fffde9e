"""`posttrain score` and `RewardScorer`: scores equal a lone forward of the chat-formatted
text, whatever the layout or batch size; row kinds; the reward-function interface; bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posttrain.cli import main as cli_main
from posttrain.models import ScalarHeadModel, load_model, load_tokenizer
from posttrain.rollout.score import RewardScorer


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> Path:
    """An (untrained, but deterministic) reward model saved the way `posttrain rm` saves one."""
    folder = tmp_path_factory.mktemp("score") / "rm"
    model = ScalarHeadModel.from_causal_lm(load_model("tiny-random", seed=1), seed=7)
    with torch.no_grad():
        model.head.bias.fill_(0.5)
    model.save_pretrained(folder)
    load_tokenizer("tiny-random").save_pretrained(folder)
    (folder / "reward_model.json").write_text(json.dumps({"template": "auto", "max_length": 96}))
    return folder


def reference_score(rm_dir: Path, messages: list[dict], response: str) -> float:
    """The reward computed independently: chat template text, one sequence, value at its last token."""
    model = ScalarHeadModel.from_pretrained(rm_dir).eval()
    tokenizer = load_tokenizer(str(rm_dir))
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + response + "<|im_end|>"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return float(model(ids, torch.ones_like(ids))[0, -1])


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


INPUT_ROWS = [
    {"id": 1, "prompt": "What is 2+2?", "response": "4"},
    {"id": 2, "prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "5"},
    {"id": 3, "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
     "responses": ["red", "a long answer about the colour blue", "green", ""]},
    {"id": 4, "prompt": "Say hi.", "completion": "hi", "label": True},
]


def expected_scores(rm_dir: Path) -> list[dict]:
    ref = lambda prompt, response: reference_score(rm_dir, user(prompt) if isinstance(prompt, str) else prompt, response)  # noqa: E731
    return [{"score": ref("What is 2+2?", "4")},
            {"chosen_score": ref("What is 2+2?", "It is 4."), "rejected_score": ref("What is 2+2?", "5")},
            {"scores": [ref(INPUT_ROWS[2]["prompt"], r) for r in INPUT_ROWS[2]["responses"]]},
            {"score": ref("Say hi.", "hi")}]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_command_round_trip(rm_dir, tmp_path, capsys):
    source = write_rows(tmp_path / "in.jsonl", INPUT_ROWS)
    out = tmp_path / "out.jsonl"
    assert cli_main(["score", "--model", str(rm_dir), "--input", str(source), "--output", str(out),
                     "--batch-size", "3", "--no-progress"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in written] == [1, 2, 3, 4]
    for row, original, expected in zip(written, INPUT_ROWS, expected_scores(rm_dir)):
        assert {k: row[k] for k in original} == original  # every input field kept as it was
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, abs=1e-5)
    printed = capsys.readouterr().out
    assert "scored 8 responses in 4 rows" in printed and "responses/s" in printed


def test_layouts_and_batch_sizes_give_the_same_scores_and_share_the_prompt(rm_dir):
    prompts = ["What is 2+2?"] * 4 + ["Say hi."] * 2
    responses = ["4", "four", "5", "It is 4, of course.", "hi", "hello there"]
    shared = RewardScorer(str(rm_dir), device="cpu", batch_size=8)
    assert shared.layout == "shared_prompt"
    calls = []
    hook = shared.model.model.model.embed_tokens.register_forward_hook(lambda m, a, o: calls.append(tuple(a[0].shape)))
    scores = shared.score(prompts, responses)
    hook.remove()
    assert len(calls) == 1 and calls[0][0] == 2  # one forward, one row per distinct prompt
    for batch_size, layout in ((1, "padded"), (3, "shared_prompt"), (5, "padded")):
        other = RewardScorer(str(rm_dir), device="cpu", batch_size=batch_size, layout=layout).score(prompts, responses)
        assert other == pytest.approx(scores, abs=1e-5)
    assert scores[0] == pytest.approx(reference_score(rm_dir, user("What is 2+2?"), "4"), abs=1e-5)


def test_scorer_is_a_reward_function_and_a_judge_scorer(rm_dir):
    from posttrain.judge.reward_judge import RewardJudge
    from posttrain.rollout.rewards import call_reward, score_batch

    scorer = RewardScorer(str(rm_dir), device="cpu")
    rows = [{"prompt": "Say hi.", "response": "hi", "answer": "x"}, {"prompt": "Say hi.", "response": "bye"}]
    batch = score_batch({"rm": scorer}, rows)
    direct = scorer.score(["Say hi.", "Say hi."], ["hi", "bye"])
    assert batch.scores["rm"] == pytest.approx(direct, abs=1e-6)
    assert call_reward(scorer, "Say hi.", "hi", {"answer": "x"}) == pytest.approx(direct[0], abs=1e-6)
    judge = RewardJudge(score_batch=scorer.score)
    assert judge.scores([user("Say hi.")] * 2, ["hi", "bye"]) == pytest.approx(direct, abs=1e-6)


def test_sequence_classification_model_scores_with_the_padded_layout(tmp_path):
    from transformers import LlamaForSequenceClassification

    from posttrain.models.tiny import tiny_config

    torch.manual_seed(0)
    classifier = LlamaForSequenceClassification(tiny_config(num_labels=1))
    classifier.config.pad_token_id = 3
    classifier.save_pretrained(tmp_path / "clf")
    load_tokenizer("tiny-random").save_pretrained(tmp_path / "clf")
    scorer = RewardScorer(str(tmp_path / "clf"), device="cpu")
    assert scorer.layout == "padded"
    tokenizer = load_tokenizer("tiny-random")
    text = tokenizer.apply_chat_template(user("Hi"), tokenize=False, add_generation_prompt=True) + "yo<|im_end|>"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = float(classifier(input_ids=ids).logits[0, 0])
    assert scorer.score(["Hi", "Hi"], ["yo", "a much longer reply"])[0] == pytest.approx(expected, abs=1e-5)


BAD = [
    ({"prompt": "p", "text": "x"}, None, "nothing to score"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1, 2]}, None, "field 'scores': already present"),
    ({"prompt": "p", "responses": []}, None, "field 'responses': expected a non-empty list"),
    ({"prompt": "p", "chosen": "a", "rejected": 3}, None, "field 'rejected': expected text"),
    ({"response": "x"}, None, "no prompt found"),
    ({"prompt": "p", "response": "long " * 50}, ["--length-policy", "error"], "field 'response': example is"),
]


@pytest.mark.parametrize("bad,flags,message", BAD)
def test_bad_input_is_one_line_exit_2_and_leaves_the_output_alone(rm_dir, tmp_path, capsys, bad, flags, message):
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "p", "response": "fine"}, bad])
    out = tmp_path / "out.jsonl"
    out.write_text("previous contents\n")
    code = cli_main(["score", "--model", str(rm_dir), "--input", str(source), "--output", str(out), "--no-progress",
                     *(flags or [])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"posttrain score: error: {source}:2: ") and message in err
    assert out.read_text() == "previous contents\n"


def test_overwrite_rescoring_and_missing_model(rm_dir, tmp_path, capsys):
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "p", "response": "fine", "score": 0.0}])
    out = tmp_path / "out.jsonl"
    assert cli_main(["score", "--model", str(rm_dir), "--input", str(source), "--output", str(out), "--no-progress"]) == 2
    assert cli_main(["score", "--model", str(rm_dir), "--input", str(source), "--output", str(out), "--no-progress",
                     "--overwrite"]) == 0
    assert json.loads(out.read_text())["score"] != 0.0
    capsys.readouterr()
    assert cli_main(["score", "--model", str(tmp_path / "nope"), "--input", str(source), "--output", str(out),
                     "--overwrite", "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
