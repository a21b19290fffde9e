"""`posttrain rm` on tiny-random: learning, the K-way ranking loss against separate
forwards, one forward per micro-batch, margins, LoRA round trip, bad input."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from posttrain.cli import main as cli_main
from posttrain.data import get_template
from posttrain.models import ScalarHeadModel, load_model, load_tokenizer
from posttrain.records import Ranked, user_prompt
from posttrain.train.reward import RMConfig, group_losses, make_loss
from posttrain.train.reward_batch import (
    RewardGroup,
    collate_groups,
    ranks_from_record,
    rewards_for_groups,
    tokenize_group,
)

WORDS = ["blue", "small", "river", "paper", "quick", "stone", "green", "cloud", "warm", "glass", "north", "apple"]


def write_pairs(path: Path, n: int, seed: int, margin: bool = False) -> Path:
    """Separable pairs: the chosen answer says "good", the rejected one "bad", amid random filler
    (different filler on each side, so an untrained model orders the pairs at chance)."""
    rng = random.Random(seed)
    filler = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))  # noqa: E731
    with open(path, "w") as f:
        for _ in range(n):
            row = {"prompt": f"Describe {rng.choice(WORDS)}.", "chosen": f"{filler()} good {filler()}",
                   "rejected": f"{filler()} bad {filler()}"}
            if margin:
                row["margin"] = 1.0
            f.write(json.dumps(row) + "\n")
    return path


def summary(run: Path) -> dict:
    return json.loads((run / "rm_summary.json").read_text())


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("rm")
    return write_pairs(folder / "train.jsonl", 64, 0), write_pairs(folder / "eval.jsonl", 32, 1)


def test_bradley_terry_training_raises_heldout_accuracy(pairs, tmp_path, capsys):
    train, held = pairs
    run = tmp_path / "run"
    assert cli_main(["rm", "--model", "tiny-random", "--data", str(train), "--eval-data", str(held),
                     "--output-dir", str(run), "--max-steps", "12", "--learning-rate", "3e-3", "--batch-size", "8",
                     "--no-progress"]) == 0
    result = summary(run)
    before, after = result["heldout_before"], result["heldout"]
    assert after["pairs"] == 32 and after["prompts"] == 32
    assert before["accuracy"] < 0.75  # an untrained head is near chance on this set
    assert after["accuracy"] >= 0.9 and after["margin"] > before["margin"] + 1.0 and after["loss"] < before["loss"]
    step_rows = [r for r in rows(run) if "loss" in r]
    assert {"accuracy", "margin", "rewards/mean", "rewards/std"} <= set(step_rows[-1])
    assert rows(run)[-1]["eval/accuracy"] == after["accuracy"]
    final = run / "final"
    # An AutoModelForSequenceClassification directory (tests/test_outputs_reward_model.py loads it).
    for name in ("config.json", "model.safetensors", "reward_model.json", "tokenizer.json"):
        assert (final / name).is_file()
    assert not (final / "value_head.safetensors").exists()
    assert "held-out: pairwise accuracy" in capsys.readouterr().out


# --- the K-way ranking loss ---------------------------------------------------------------


def ranked_groups(tokenizer):
    template = get_template("auto", tokenizer)
    four = Ranked(user_prompt("Rank these."), ["alpha one", "beta two two", "gamma", "delta four four four"],
                  ranking=[2, 0, 3, 1])
    tied = Ranked(user_prompt("And these?"), ["x", "yy", "zzz"], scores=[1.0, 3.0, 1.0])  # 2 pairs (a tie)
    return [tokenize_group(r.prompt, r.responses, tokenizer, template, ranks=ranks_from_record(r)) for r in (four, tied)]


def test_ranks_from_ranking_and_scores():
    assert ranks_from_record(Ranked([], ["a", "b", "c", "d"], ranking=[2, 0, 3, 1])) == [1, 3, 0, 2]
    assert ranks_from_record(Ranked([], ["a", "b", "c"], scores=[1.0, 3.0, 1.0])) == [1, 0, 1]


@pytest.mark.parametrize("layout", ["shared_prompt", "padded"])
def test_ranking_loss_equals_mean_bt_over_pairs_with_separate_forwards(layout):
    tokenizer = load_tokenizer("tiny-random")
    model = ScalarHeadModel.from_causal_lm(load_model("tiny-random"), seed=3)
    groups = ranked_groups(tokenizer)
    calls = []
    backbone = model.model.model
    hook = backbone.embed_tokens.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    batch = collate_groups(groups, layout, tokenizer.pad_token_id)
    out = make_loss(RMConfig(model="tiny-random"))(model, batch)
    hook.remove()
    # One forward for the whole micro-batch; the prompt once per group in shared_prompt.
    assert len(calls) == 1
    rows_expected = len(groups) if layout == "shared_prompt" else sum(len(g.response_ids) for g in groups)
    assert calls[0][0] == rows_expected

    def alone(group: RewardGroup, k: int) -> torch.Tensor:
        """The reward of response k from a forward of prompt + response k on its own."""
        ids = torch.tensor([group.prompt_ids + group.response_ids[k]])
        return model(ids, torch.ones_like(ids))[0, -1]

    expected = torch.zeros(())
    for group in groups:
        r = [alone(group, k) for k in range(len(group.ranks))]
        losses = [F.softplus(-(r[i] - r[j]))  # the Bradley-Terry loss -log sigma(r_i - r_j) of one pair
                  for i in range(len(r)) for j in range(len(r)) if group.ranks[i] < group.ranks[j]]
        assert len(losses) == {4: 6, 3: 2}[len(group.ranks)]
        expected = expected + torch.stack(losses).mean()
    assert torch.allclose(out.loss_sum, expected, atol=1e-5)
    # Gradients flow to the backbone and the head.
    out.loss_sum.backward()
    assert model.head.weight.grad is not None and backbone.embed_tokens.weight.grad.abs().sum() > 0


def test_shared_prompt_and_padded_rewards_agree():
    tokenizer = load_tokenizer("tiny-random")
    model = ScalarHeadModel.from_causal_lm(load_model("tiny-random"), seed=5).eval()
    groups = ranked_groups(tokenizer)
    shared = rewards_for_groups(model, groups, "shared_prompt", tokenizer.pad_token_id)
    padded = rewards_for_groups(model, groups, "padded", tokenizer.pad_token_id, max_responses=2)
    for a, b in zip(shared, padded):
        assert torch.allclose(a, b, atol=1e-5)


def test_margin_enters_the_pair_loss_only_when_asked():
    rewards = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    batch = {"response_mask": torch.ones(2, 2, dtype=torch.bool), "ranks": torch.tensor([[0, 1], [1, 0]]),
             "margins": torch.tensor([0.5, 0.0]), "has_margin": torch.tensor([True, False])}
    plain = group_losses(rewards, batch, "pairwise", use_margin=False)
    with_margin = group_losses(rewards, batch, "pairwise", use_margin=True)
    assert torch.allclose(plain, F.softplus(-torch.tensor([1.0, 3.0])))
    assert torch.allclose(with_margin, F.softplus(-torch.tensor([0.5, 3.0])))  # only the pair with a margin moves


def test_ranked_training_with_plackett_luce_and_margin_flag(tmp_path):
    rng = random.Random(2)
    data = tmp_path / "ranked.jsonl"
    with open(data, "w") as f:
        for _ in range(16):  # more "good"s is better
            responses = [" ".join(["good"] * n + [rng.choice(WORDS)]) for n in range(4)]
            order = list(range(4))
            rng.shuffle(order)
            f.write(json.dumps({"prompt": "Say it.", "responses": [responses[i] for i in order],
                                "scores": [float(i) for i in order]}) + "\n")
    run = tmp_path / "run"
    assert cli_main(["rm", "--model", "tiny-random", "--data", str(data), "--output-dir", str(run), "--max-steps", "3",
                     "--batch-size", "4", "--loss", "plackett_luce", "--eval-fraction", "0.25", "--use-margin",
                     "--learning-rate", "1e-3", "--no-progress"]) == 0
    result = summary(run)
    assert result["heldout"]["pairs"] == 4 * 6 and result["loss"] == "plackett_luce"
    assert all(r["loss"] > 0 for r in rows(run) if "loss" in r)


def test_lora_reward_model_reloads_to_the_scores_it_was_evaluated_with(pairs, tmp_path):
    from posttrain.rollout.score import RewardScorer

    train, held = pairs
    run = tmp_path / "lora"
    assert cli_main(["rm", "--model", "tiny-random", "--data", str(train), "--eval-data", str(held), "--peft", "lora",
                     "--lora-r", "4", "--output-dir", str(run), "--max-steps", "4", "--learning-rate", "3e-3",
                     "--no-progress", "--no-eval-at-start"]) == 0
    final = run / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "value_head.safetensors").exists()
    assert not (final / "model.safetensors").exists()
    heldout = summary(run)["heldout"]
    records = [json.loads(line) for line in held.read_text().splitlines()]
    prompts = [r["prompt"] for r in records]
    for merge in (False, True):
        scorer = RewardScorer(str(run), device="cpu", merge_adapter=merge)
        chosen = torch.tensor(scorer.score(prompts, [r["chosen"] for r in records]))
        rejected = torch.tensor(scorer.score(prompts, [r["rejected"] for r in records]))
        assert float((chosen - rejected).mean()) == pytest.approx(heldout["margin"], abs=1e-4)
        assert float((chosen > rejected).float().mean()) == heldout["accuracy"]


# --- bad input: one line naming file, line and field; exit 2 --------------------------------


BAD_ROWS = [
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "field 'rejected': is identical to 'chosen'"),
    ({"prompt": "p", "chosen": " ", "rejected": "no"}, "field 'chosen': is empty"),
    ({"prompt": "p", "chosen": "ok " * 40, "rejected": "no"}, "field 'chosen': example is"),
    ({"prompt": "p", "responses": ["only one"], "ranking": [0]}, "field 'responses': expected at least 2"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]}, "field 'ranking': expected a permutation"),
    ({"prompt": "p", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]}, "field 'responses[2]': is identical"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1, 1]}, "field 'scores': all scores are equal"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "preference pairs"),
]


@pytest.mark.parametrize("bad,message", BAD_ROWS)
def test_bad_input_is_one_line_with_file_line_field_and_exit_2(tmp_path, capsys, bad, message):
    data = tmp_path / "data.jsonl"
    good = {"prompt": "p", "chosen": "yes", "rejected": "no"}
    data.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    code = cli_main(["rm", "--model", "tiny-random", "--data", str(data), "--output-dir", str(tmp_path / "run"),
                     "--max-length", "40", "--length-policy", "error", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"posttrain rm: error: {data}:2: ") and message in err
