"""`posttrain eval` end to end on tiny-random: every suite in one run (the judge is the stub server),
perplexity checked against a direct cross-entropy computation, replay through --outputs, pass@k sampling."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from posttrain.cli import main as cli

SMALL = ["--limit", "3", "--max-new-tokens", "6", "--batch-size", "2"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture
def inputs(tmp_path):
    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt": f"Say {w}.", "reference": f"{w} indeed"}
                                                 for w in ("yes", "no", "maybe")])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [
        {"id": "t1", "text": "The cat sat on the mat."},
        {"id": "t2", "text": "Numbers: 1 2 3 4 5 6 7."},
        {"id": "c1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello you."}]},
    ])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"p{i}", "prompt": f"Tell me about {t}."}
                                                       for i, t in enumerate(("cats", "rain", "tea"))])
    return {"references": refs, "heldout": heldout, "prompts": prompts}


def direct_text_nll(text: str) -> tuple[float, int]:
    """-sum log p(token_t | tokens_<t) over all tokens after the first, straight from the logits."""
    from posttrain.models import load_model, load_tokenizer

    model, tokenizer = load_model("tiny-random"), load_tokenizer("tiny-random")
    ids = torch.tensor([tokenizer(text, add_special_tokens=True)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    return float(F.cross_entropy(logits, ids[0, 1:], reduction="sum")), ids.shape[1] - 1


def test_all_suites_end_to_end_on_tiny_random(tmp_path, inputs, openai_stub, capsys):
    openai_stub.handler = lambda request: "[[A]]"  # a judge that always picks the first answer shown
    out = tmp_path / "run"
    argv = ["eval", "--model", "tiny-random", "--suite", "task", "reference", "perplexity", "safety", "winrate",
            "--references", inputs["references"], "--heldout", inputs["heldout"], "--prompts", inputs["prompts"],
            "--baseline-model", "tiny-random", "--judge-url", openai_stub.url, "--judge-model", "stub",
            "--output-dir", str(out), *SMALL]
    assert cli(argv) == 0
    captured = capsys.readouterr()
    assert "tokens/s" in captured.err and "generate task: 3/3 prompts" in captured.err
    assert "task/arithmetic/accuracy" in captured.out  # the terminal table

    doc = json.load(open(out / "results.json"))
    metrics = doc["metrics"]
    assert {"task/arithmetic/accuracy", "reference/bleu", "reference/chrf", "reference/rouge1", "reference/rouge2",
            "reference/rougeL", "perplexity", "safety/harmful/refusal_rate", "winrate/win_rate",
            "winrate/lc_win_rate"} <= set(metrics)
    # random weights: arithmetic is out of reach, and perplexity sits near the vocabulary size (260)
    assert metrics["task/arithmetic/accuracy"]["value"] == 0.0 and metrics["task/arithmetic/accuracy"]["n"] == 3
    assert 100 < metrics["perplexity"]["value"] < 1000
    # the baseline is the same greedy model, so both orders say "A" for different answers' positions: all ties
    assert metrics["winrate/win_rate"]["value"] == 0.5 and metrics["winrate/win_rate"]["n"] == 3
    assert len(openai_stub.requests) == 6
    for suite in ("task", "reference", "safety", "winrate"):
        rows = read_jsonl(out / f"generations_{suite}.jsonl")
        assert len(rows) == 3 and all(r["finish_reason"] in ("eos", "length", "stop") for r in rows)
        assert all(r["tokens"] <= 6 for r in rows)
    assert doc["meta"]["generation"]["task"]["tokens_per_s"] > 0
    assert (out / "eval_config.yaml").exists()

    # perplexity: text rows score every token after the first; the chat row only the assistant's tokens
    items = {row["id"]: row for row in read_jsonl(out / "perplexity_items.jsonl")}
    for key, text in (("t1", "The cat sat on the mat."), ("t2", "Numbers: 1 2 3 4 5 6 7.")):
        nll, tokens = direct_text_nll(text)
        assert items[key]["tokens"] == tokens and items[key]["nll"] == pytest.approx(nll, rel=1e-5)
    from posttrain.data import get_template, tokenize_conversation
    from posttrain.models import load_tokenizer
    from posttrain.records import Conversation

    tokenizer = load_tokenizer("tiny-random")
    chat = Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello you."}])
    example = tokenize_conversation(chat, tokenizer, get_template("auto", tokenizer))
    assert items["c1"]["tokens"] == example.num_trained < len(example.input_ids) - 1
    total_nll, total_tokens = sum(r["nll"] for r in items.values()), sum(r["tokens"] for r in items.values())
    assert metrics["perplexity"]["value"] == pytest.approx(math.exp(total_nll / total_tokens))

    # replaying the generations through --outputs scores exactly the same
    replay = tmp_path / "replay"
    assert cli(["eval", "--suite", "task", "--limit", "3", "--outputs", str(out / "generations_task.jsonl"),
                "--output-dir", str(replay)]) == 0
    again = json.load(open(replay / "results.json"))["metrics"]["task/arithmetic/accuracy"]
    assert again["per_item"] == metrics["task/arithmetic/accuracy"]["per_item"]
    assert again["item_ids"] == metrics["task/arithmetic/accuracy"]["item_ids"]


def test_task_suite_sampling_gives_pass_at_k(tmp_path):
    out = tmp_path / "run"
    assert cli(["eval", "--model", "tiny-random", "--suite", "task", "--task", "sorting", "--samples", "3",
                "--output-dir", str(out), *SMALL]) == 0
    metrics = json.load(open(out / "results.json"))["metrics"]
    assert [m for m in metrics] == ["task/sorting/pass@1", "task/sorting/pass@2", "task/sorting/pass@3"]
    assert metrics["task/sorting/pass@1"]["extra"]["temperature"] == 0.8
    rows = read_jsonl(out / "generations_task.jsonl")
    assert [r["sample"] for r in rows] == [0, 1, 2] * 3
    assert all(r["verifier"] == "sort" for r in rows)
    # sampled at temperature 0.8 from random weights, the three samples of a prompt differ
    assert len({r["response"] for r in rows[:3]}) > 1
