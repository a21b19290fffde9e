"""PEFT methods, parameter summaries, reference models, merge + `posttrain export` round trip."""
import pytest
import torch

from posttrain.cli import main
from posttrain.errors import PosttrainError
from posttrain.models import (
    PEFT_METHODS,
    apply_peft,
    load_model,
    load_tokenizer,
    save_pretrained_atomic,
    trainable_parameter_summary,
)
from posttrain.train.reference import adapter_disabled, frozen_copy

IDS = torch.tensor([[1, 80, 81, 82, 2, 14, 40], [1, 90, 91, 2, 14, 60, 61]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _perturbed_lora(r=4, method="lora"):
    """A LoRA policy whose adapter is not the identity (B is zero at init)."""
    torch.manual_seed(0)  # PEFT draws A from the global RNG
    policy = apply_peft(load_model("tiny-random"), method, r=r, dropout=0.0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return policy


@pytest.mark.parametrize("method", ["lora", "dora", "prefix", "ia3"])
def test_methods_train_only_adapter_parameters(method):
    model = load_model("tiny-random")
    total = sum(p.numel() for p in model.parameters())
    policy = apply_peft(model, method, r=4)
    summary = trainable_parameter_summary(policy)
    assert 0 < summary["trainable"] < 0.2 * summary["total"]
    assert summary["total"] >= total
    assert summary["percent"] == pytest.approx(100 * summary["trainable"] / summary["total"])
    loss = policy(input_ids=IDS, labels=IDS).loss
    loss.backward()
    trained = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in policy.parameters() if p.requires_grad)
    assert all(not p.requires_grad for n, p in policy.named_parameters() if "embed_tokens" in n)
    assert not policy.training  # the loaded model was in eval mode; apply_peft keeps it


def test_lora_rank_and_all_linear_targets():
    policy = apply_peft(load_model("tiny-random"), "lora", r=4)
    lora_a = {n: p for n, p in policy.named_parameters() if "lora_A" in n}
    # 2 layers x 7 linear layers (q, k, v, o, gate, up, down); lm_head excluded.
    assert len(lora_a) == 14
    assert all(p.shape[0] == 4 for p in lora_a.values())
    assert not any("lm_head" in n for n in lora_a)
    only_q = apply_peft(load_model("tiny-random"), "lora", r=2, target_modules=["q_proj"])
    assert len([n for n, _ in only_q.named_parameters() if "lora_A" in n]) == 2


def test_trainable_summary_text():
    summary = trainable_parameter_summary(load_model("tiny-random"))
    assert summary["trainable"] == summary["total"] and summary["percent"] == 100.0
    assert summary["text"].startswith("trainable 107.3K / 107.3K")


def test_bad_method_and_qlora_without_4bit():
    with pytest.raises(PosttrainError, match="unknown PEFT method 'lorax'"):
        apply_peft(load_model("tiny-random"), "lorax")
    with pytest.raises(PosttrainError, match="qlora needs a 4-bit model"):
        apply_peft(load_model("tiny-random"), "qlora")
    with pytest.raises(PosttrainError, match="cannot apply lora"):
        apply_peft(load_model("tiny-random"), "lora", target_modules=["no_such_module"])
    assert set(PEFT_METHODS) == {"lora", "dora", "qlora", "prefix", "ia3"}


def test_adapter_disabled_gives_the_base_model():
    base_logits = _logits(load_model("tiny-random"))
    policy = _perturbed_lora()
    assert not torch.allclose(_logits(policy), base_logits, atol=1e-3)
    with adapter_disabled(policy):
        assert torch.allclose(_logits(policy), base_logits, atol=1e-6)
    assert not torch.allclose(_logits(policy), base_logits, atol=1e-3)  # restored afterwards
    with pytest.raises(PosttrainError, match="frozen copy"):
        with adapter_disabled(load_model("tiny-random")):
            pass


def test_frozen_copy_is_independent_and_frozen():
    model = load_model("tiny-random").train()
    reference = frozen_copy(model)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(reference.parameters()))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_export_merges_adapter_and_logits_match(tmp_path, method, capsys):
    policy = _perturbed_lora(method=method)
    expected = _logits(policy)
    save_pretrained_atomic(policy, load_tokenizer("tiny-random"), tmp_path / "run" / "final")
    assert main(["export", "--model", str(tmp_path / "run"), "--output", str(tmp_path / "merged")]) == 0
    assert "merged adapter into base" in capsys.readouterr().out
    merged = load_model(str(tmp_path / "merged"))
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert torch.allclose(_logits(merged), expected, atol=5e-5)  # float32 rounding of W + BA
    assert load_tokenizer(str(tmp_path / "merged")).apply_chat_template(
        [{"role": "user", "content": "q"}], tokenize=False) == "<|im_start|>user\nq<|im_end|>\n"


def test_export_dtype_and_refusals(tmp_path, capsys):
    assert main(["export", "tiny-random", "--output", str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    assert load_model(str(tmp_path / "out"), dtype=torch.bfloat16).dtype == torch.bfloat16
    import json

    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    capsys.readouterr()
    assert main(["export", "tiny-random", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"posttrain export: error: {tmp_path / 'out'}: already exists (choose another --output or pass --overwrite)"
    assert main(["export", "tiny-random", "--output", str(tmp_path / "out"), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["export", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err and not (tmp_path / "o2").exists()
    assert main(["export", "--output", str(tmp_path / "o3")]) == 2
    assert "config field 'model': required" in capsys.readouterr().err
    assert main(["export", "tiny-random", "--output", str(tmp_path / "o4"), "--dtype", "int8"]) == 2
    assert "config field 'dtype'" in capsys.readouterr().err
