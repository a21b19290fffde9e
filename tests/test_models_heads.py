"""Scalar value/reward head: shapes, last-token selection, save/load (full and LoRA), seq-clf loading."""
import pytest
import torch

from posttrain.errors import PosttrainError
from posttrain.models import (
    ScalarHeadModel,
    apply_peft,
    last_token_index,
    last_token_values,
    load_model,
    load_reward_model,
    sequence_scores,
)

IDS = torch.tensor([[3, 3, 1, 80, 81, 2], [1, 90, 91, 92, 93, 2]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def test_last_token_selection_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 3, 0]
    assert last_token_values(values, mask).tolist() == [3.0, 8.0, 9.0]


def test_forward_shapes_and_head_equals_linear_on_hidden_states():
    model = ScalarHeadModel.from_causal_lm(load_model("tiny-random"), seed=1)
    values = model(IDS, MASK)
    assert values.shape == (2, 6) and values.dtype == torch.float32
    hidden = model.model.model(input_ids=IDS, attention_mask=MASK,
                               position_ids=(MASK.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
    assert torch.allclose(values, (hidden @ model.head.weight.T + model.head.bias).squeeze(-1), atol=1e-6)
    assert model.head.bias.item() == 0.0
    scores = sequence_scores(model, IDS, MASK)
    assert torch.allclose(scores, values[:, -1])
    # Untied lm_head is unused: frozen (DDP would fail on a trainable unused parameter).
    assert not model.model.lm_head.weight.requires_grad
    values.sum().backward()
    assert model.head.weight.grad is not None and model.model.model.embed_tokens.weight.grad is not None


def test_seed_makes_the_head_deterministic():
    a = ScalarHeadModel.from_causal_lm(load_model("tiny-random"), seed=4)
    b = ScalarHeadModel.from_causal_lm(load_model("tiny-random"), seed=4)
    assert torch.equal(a.head.weight, b.head.weight)


def test_save_and_load_full(tmp_path):
    model = ScalarHeadModel.from_causal_lm(load_model("tiny-random"), seed=2)
    with torch.no_grad():
        model.head.bias.fill_(0.25)
    model.save_pretrained(tmp_path / "rm")
    for name in ("config.json", "model.safetensors", "value_head.safetensors", "value_head.json"):
        assert (tmp_path / "rm" / name).is_file()
    loaded = load_reward_model(str(tmp_path / "rm"))
    assert isinstance(loaded, ScalarHeadModel)
    with torch.no_grad():
        assert torch.equal(loaded(IDS, MASK), model(IDS, MASK))


def test_save_and_load_with_lora_backbone(tmp_path):
    model = ScalarHeadModel.from_causal_lm(load_model("tiny-random"))
    model.model = apply_peft(model.model, "lora", r=4, dropout=0.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.weight" in trainable and any("lora_A" in n for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    model.save_pretrained(tmp_path / "rm")
    assert (tmp_path / "rm" / "adapter_config.json").is_file()
    loaded = ScalarHeadModel.from_pretrained(tmp_path / "rm")
    with torch.no_grad():
        assert torch.allclose(loaded(IDS, MASK), model(IDS, MASK), atol=1e-6)


def test_sequence_classification_reward_model(tmp_path):
    from transformers import LlamaForSequenceClassification

    from posttrain.models.tiny import tiny_config

    torch.manual_seed(0)
    classifier = LlamaForSequenceClassification(tiny_config(num_labels=1))
    classifier.save_pretrained(tmp_path / "clf")
    loaded = load_reward_model(str(tmp_path / "clf"))
    assert type(loaded).__name__ == "LlamaForSequenceClassification"
    right = torch.tensor([[1, 80, 81, 2, 3, 3]])  # right-padded with <pad> (id 3 = pad_token_id)
    with torch.no_grad():
        scores = sequence_scores(loaded, right, (right != 3).long())
        expected = classifier(input_ids=right[:, :4]).logits[:, 0]
    assert scores.shape == (1,) and torch.allclose(scores, expected, atol=1e-6)


def test_errors(tmp_path):
    with pytest.raises(PosttrainError, match="no value_head.safetensors"):
        ScalarHeadModel.from_pretrained(tmp_path)
    with pytest.raises(PosttrainError, match="not found"):
        load_reward_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PosttrainError, match="cannot load reward model"):
        load_reward_model(str(tmp_path / "empty"))
