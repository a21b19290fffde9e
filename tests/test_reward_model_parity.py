"""Reward models in the classifier format score in posttrain as in plain transformers, whatever the
padding (left, right, none) and lengths, also when the config's pad token is not the tokenizer's
(TRL users set `pad_token_id = eos`); and `posttrain export` of any reward model writes a directory
plain `AutoModelForSequenceClassification` loads with the trained head."""
from __future__ import annotations

import pytest
import torch

from posttrain.cli import main
from posttrain.data import get_template
from posttrain.data.tokenize import tokenize_prompt_response
from posttrain.models import load_model, load_tokenizer
from posttrain.records import user_prompt
from posttrain.rollout.score import RewardScorer

PROMPTS = ["What is 2+2?", "Name a colour, any colour you like, please, and say why.", "Say hi.", "Hm?"]
RESPONSES = ["4", "Blue, I think.", "Hi there! How are you doing today, my friend? Well, I hope.", ""]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def sequences(tokenizer) -> list[list[int]]:
    template = get_template("auto", tokenizer)
    out = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        prompt_ids, response_ids = tokenize_prompt_response(user_prompt(prompt), response, tokenizer, template)
        out.append(prompt_ids + response_ids)
    return out


def plain(model, seqs: list[list[int]], pad_id: int | None = None, side: str | None = None) -> list[float]:
    """Plain transformers: each sequence alone (side None), or one batch padded on `side`."""
    with torch.no_grad():
        if side is None:
            return [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
        width = max(map(len, seqs))
        pads = [[pad_id] * (width - len(s)) for s in seqs]
        ids = torch.tensor([s + p if side == "right" else p + s for s, p in zip(seqs, pads)])
        mask = torch.tensor([[1] * len(s) + [0] * len(p) if side == "right" else [0] * len(p) + [1] * len(s)
                             for s, p in zip(seqs, pads)])
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()


def trl_classifier(folder, pad_is_eos: bool):
    from transformers import AutoModelForSequenceClassification

    from posttrain.models.loading import tiny_checkpoint

    tokenizer = load_tokenizer("tiny-random")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_checkpoint(seed=0)), num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    model.config.pad_token_id = tokenizer.eos_token_id if pad_is_eos else tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # its own pad token stays <pad>
    return model.eval()


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_classifier_scores_match_plain_transformers_with_any_padding(tmp_path, pad_is_eos):
    model = trl_classifier(tmp_path / "clf", pad_is_eos)
    seqs = sequences(load_tokenizer("tiny-random"))
    assert len({len(s) for s in seqs}) == len(seqs)  # mixed lengths
    alone = plain(model, seqs)
    pad = model.config.pad_token_id
    assert plain(model, seqs, pad, "right") == pytest.approx(alone, abs=1e-5)
    assert plain(model, seqs, pad, "left") == pytest.approx(alone, abs=1e-5)
    for batch_size in (1, 3, 8):
        scorer = RewardScorer(str(tmp_path / "clf"), device="cpu", batch_size=batch_size)
        assert scorer.layout == "padded"
        assert scorer.score(PROMPTS, RESPONSES) == pytest.approx(alone, abs=1e-5), batch_size


def exported_scores(source, output, capsys) -> tuple[list[float], str]:
    from transformers import AutoModelForSequenceClassification

    assert main(["export", str(source), "--output", str(output)]) == 0
    err = capsys.readouterr().err
    model = AutoModelForSequenceClassification.from_pretrained(str(output)).eval()
    assert model.config.num_labels == 1
    return plain(model, sequences(load_tokenizer(str(output)))), err


def test_export_of_an_old_value_head_reward_model_loads_with_its_head_in_plain_transformers(tmp_path, capsys):
    from posttrain.models.heads import ScalarHeadModel

    torch.manual_seed(0)
    old = ScalarHeadModel.from_causal_lm(load_model("tiny-random"), seed=3)
    with torch.no_grad():
        old.head.bias.fill_(0.7)
    old.save_pretrained(tmp_path / "old")
    load_tokenizer("tiny-random").save_pretrained(tmp_path / "old")
    ours = RewardScorer(str(tmp_path / "old"), device="cpu").score(PROMPTS, RESPONSES)
    theirs, err = exported_scores(tmp_path / "old", tmp_path / "exported", capsys)
    # the head, less its bias (a classifier's score layer has none), and a warning saying so
    assert theirs == pytest.approx([s - 0.7 for s in ours], abs=1e-5)
    assert "bias +0.7 is dropped" in err
    assert not (tmp_path / "exported" / "value_head.safetensors").exists()
    assert RewardScorer(str(tmp_path / "exported"), device="cpu").score(PROMPTS, RESPONSES) == \
        pytest.approx(theirs, abs=1e-5)


def test_export_of_a_seq_cls_lora_reward_model_merges_and_keeps_the_head(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from posttrain.models.loading import tiny_checkpoint

    tokenizer = load_tokenizer("tiny-random")
    torch.manual_seed(2)
    classifier = AutoModelForSequenceClassification.from_pretrained(str(tiny_checkpoint(seed=0)), num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id  # an adapter does not store it: the tokenizer's
    adapter = get_peft_model(classifier, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if "lora_B" in name or "score" in name:
                param.normal_(0, 0.5)
    adapter.save_pretrained(tmp_path / "lora")
    tokenizer.save_pretrained(tmp_path / "lora")
    expected = plain(adapter.eval(), sequences(tokenizer))
    assert RewardScorer(str(tmp_path / "lora"), device="cpu").score(PROMPTS, RESPONSES) == \
        pytest.approx(expected, abs=1e-5)
    theirs, _ = exported_scores(tmp_path / "lora", tmp_path / "exported", capsys)
    assert theirs == pytest.approx(expected, abs=1e-5)
