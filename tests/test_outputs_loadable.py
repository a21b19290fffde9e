"""What posttrain writes loads in plain transformers / PEFT, with the same numbers, offline:

- a LoRA run's final/: `AutoPeftModelForCausalLM.from_pretrained(run/final)` (its base is recorded
  as a directory plain PEFT can load: tiny-random is saved into the cache for that);
- a reward model (full and LoRA): `AutoModelForSequenceClassification` (num_labels=1, the trained
  `score` head) / `AutoPeftModelForSequenceClassification` score what `posttrain score` scores;
- TRL's reward-model outputs (a classifier directory, a SEQ_CLS adapter with `score` in
  modules_to_save) load in `posttrain score` and as `rm:DIR` rewards;
- posttrain's older value-head reward models still load.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from posttrain.cli import main
from posttrain.data import get_template
from posttrain.data.tokenize import tokenize_prompt_response
from posttrain.models import load_model, load_tokenizer
from posttrain.records import user_prompt
from posttrain.rl.rewards import RewardScorerSet
from posttrain.rollout.score import RewardScorer

PROMPTS = ["What is 2+2?", "Name a colour.", "Say hi.", "Count to three."]
RESPONSES = ["4", "Blue, I think.", "Hi there!", "one two three"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def pairs_file(tmp_path):
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}"} for i in range(16)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def posttrain_ids(tokenizer) -> list[list[int]]:
    template = get_template("auto", tokenizer)
    out = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        prompt_ids, response_ids = tokenize_prompt_response(user_prompt(prompt), response, tokenizer, template)
        out.append(prompt_ids + response_ids)
    return out


def plain_scores(model, pad_id: int, sequences: list[list[int]]) -> list[float]:
    """A batch scored the plain transformers way: right padding with the tokenizer's pad token."""
    width = max(map(len, sequences))
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()


def posttrain_scores(directory, merge=True) -> list[float]:
    return RewardScorer(str(directory), device="cpu", merge_adapter=merge).score(PROMPTS, RESPONSES)


# --------------------------------------------------------------------------- LoRA adapters

PLAIN_PEFT = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = AutoTokenizer.from_pretrained(sys.argv[1])("Hello there", return_tensors="pt").input_ids
with torch.no_grad():
    print(json.dumps(model(ids).logits[0, -1, :8].tolist()))
"""


def test_a_lora_run_loads_in_plain_peft_offline(tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"q{i}", "completion": f"answer {i}"} for i in range(8)])
    run = tmp_path / "lora"
    assert main(["sft", "--model", "tiny-random", "--data", data, "--output-dir", str(run), "--peft", "lora",
                 "--max-steps", "3", "--batch-size", "4", "--learning-rate", "1e-2", "--no-progress"]) == 0
    config = json.loads((run / "final" / "adapter_config.json").read_text())
    base = config["base_model_name_or_path"]
    assert base.startswith(str(tmp_path / "cache" / "models" / "tiny-random-s0-"))  # a directory, not the alias
    # Plain PEFT, in a fresh process that has never heard of posttrain's aliases, offline.
    result = subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(run / "final")], capture_output=True, text=True,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    plain = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    tokenizer = load_tokenizer(str(run))
    ids = tokenizer("Hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = load_model(str(run))(ids).logits[0, -1, :8]
        untrained = load_model("tiny-random")(ids).logits[0, -1, :8]
    torch.testing.assert_close(plain, ours, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, untrained, atol=1e-4)  # the adapter is in what plain PEFT loaded


def test_posttrain_still_loads_an_adapter_whose_cached_base_was_removed(tmp_path):
    import shutil

    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"q{i}", "completion": f"answer {i}"} for i in range(8)])
    run = tmp_path / "lora"
    assert main(["sft", "--model", "tiny-random", "--data", data, "--output-dir", str(run), "--peft", "lora",
                 "--max-steps", "1", "--batch-size", "4", "--no-progress"]) == 0
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        before = load_model(str(run))(ids).logits
        shutil.rmtree(tmp_path / "cache" / "models")
        after = load_model(str(run))(ids).logits  # rebuilt from the alias in posttrain_base.json
    torch.testing.assert_close(before, after)


# --------------------------------------------------------------------------- reward models

@pytest.mark.parametrize("peft", ["none", "lora"])
def test_a_reward_model_scores_the_same_in_plain_transformers(peft, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / f"rm-{peft}"
    assert main(["rm", "--model", "tiny-random", "--data", pairs_file(tmp_path), "--output-dir", str(run),
                 "--peft", peft, "--max-steps", "3", "--batch-size", "4", "--learning-rate", "1e-2",
                 "--no-progress", "--no-eval-at-start"]) == 0
    final = run / "final"
    if peft == "none":
        model = AutoModelForSequenceClassification.from_pretrained(str(final))
        assert model.config.num_labels == 1 and tuple(model.score.weight.shape) == (1, 64)
    else:
        model = AutoPeftModelForSequenceClassification.from_pretrained(str(final), num_labels=1)
        assert json.loads((final / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    plain = plain_scores(model.eval(), tokenizer.pad_token_id, posttrain_ids(load_tokenizer(str(run))))
    ours = posttrain_scores(run)
    assert ours == pytest.approx(plain, abs=1e-5)
    assert max(ours) - min(ours) > 1e-3  # a trained head, not a constant
    if peft == "lora":
        assert posttrain_scores(run, merge=False) == pytest.approx(plain, abs=1e-5)


def trl_style_reward_models(tmp_path):
    """A classifier directory and a SEQ_CLS LoRA adapter, written with transformers/PEFT as TRL does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from posttrain.models.loading import tiny_checkpoint

    base = str(tiny_checkpoint(seed=0))
    tokenizer = load_tokenizer("tiny-random")
    torch.manual_seed(1)
    full = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    full.config.pad_token_id = tokenizer.pad_token_id
    full.save_pretrained(tmp_path / "trl-full")
    tokenizer.save_pretrained(tmp_path / "trl-full")
    classifier = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    adapter = get_peft_model(classifier, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if "lora_B" in name or "score" in name:
                param.normal_(0, 0.5)
    adapter.save_pretrained(tmp_path / "trl-lora")
    tokenizer.save_pretrained(tmp_path / "trl-lora")
    return {"trl-full": full.eval(), "trl-lora": adapter.eval()}


def test_trl_reward_models_load_in_score_and_as_rm_rewards(tmp_path):
    models = trl_style_reward_models(tmp_path)
    assert json.loads((tmp_path / "trl-lora" / "adapter_config.json").read_text())["modules_to_save"]
    tokenizer = load_tokenizer("tiny-random")
    for name, model in models.items():
        plain = plain_scores(model, tokenizer.pad_token_id, posttrain_ids(tokenizer))
        assert posttrain_scores(tmp_path / name) == pytest.approx(plain, abs=1e-5), name
        rewards = RewardScorerSet.from_config([f"rm:{tmp_path / name}"])
        rows = [{"prompt": user_prompt(p), "response": r} for p, r in zip(PROMPTS, RESPONSES)]
        assert rewards.score(rows).total == pytest.approx(plain, abs=1e-5), name


def test_an_old_value_head_reward_model_still_scores(tmp_path):
    from posttrain.models.heads import ScalarHeadModel

    torch.manual_seed(0)
    old = ScalarHeadModel.from_causal_lm(load_model("tiny-random"), seed=3)
    old.save_pretrained(tmp_path / "old")
    load_tokenizer("tiny-random").save_pretrained(tmp_path / "old")
    scores = posttrain_scores(tmp_path / "old")
    assert len(scores) == 4 and max(scores) - min(scores) > 1e-4


def test_a_classifier_reward_model_starts_ppos_value_model_with_its_head(tmp_path):
    from posttrain.models.heads import ScalarHeadModel, last_token_values

    run = tmp_path / "rm"
    assert main(["rm", "--model", "tiny-random", "--data", pairs_file(tmp_path), "--output-dir", str(run),
                 "--peft", "lora", "--max-steps", "2", "--batch-size", "4", "--learning-rate", "1e-2",
                 "--no-progress", "--no-eval-at-start"]) == 0
    critic = ScalarHeadModel.from_classifier(run).eval()
    sequences = posttrain_ids(load_tokenizer(str(run)))
    with torch.no_grad():
        values = [float(last_token_values(critic(torch.tensor([s])), torch.ones(1, len(s)))[0]) for s in sequences]
    assert values == pytest.approx(posttrain_scores(run), abs=1e-5)
