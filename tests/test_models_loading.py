"""Loading models and tokenizers from aliases, directories, run directories and adapters; errors."""
import pytest
import torch

from posttrain.errors import PosttrainError
from posttrain.models import (
    apply_peft,
    ensure_pad_token,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    loading,
    resolve_device,
    resolve_dtype,
    save_pretrained_atomic,
)

IDS = torch.tensor([[1, 80, 81, 82, 2, 14], [1, 90, 91, 2, 14, 3]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny") / "model"
    model, tok = load_model_and_tokenizer("tiny-random", seed=5)
    save_pretrained_atomic(model, tok, directory)
    return directory, model, tok


def test_local_directory_round_trip(saved_tiny):
    directory, model, tok = saved_tiny
    loaded = load_model(str(directory))
    assert torch.equal(_logits(loaded), _logits(model))
    assert loaded.name_or_path == str(directory.resolve())
    tok2 = load_tokenizer(str(directory))
    text = "héllo<|im_end|>"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert (tok2.pad_token, tok2.eos_token) == ("<pad>", "<|im_end|>")
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    assert tok2.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(messages, tokenize=False)


def test_run_directory_uses_final(saved_tiny, tmp_path):
    directory, model, _ = saved_tiny
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "final").symlink_to(directory)
    assert torch.equal(_logits(load_model(str(run))), _logits(model))
    assert load_tokenizer(str(run)).eos_token == "<|im_end|>"


def test_adapter_directory_loads_base_plus_adapter(tmp_path):
    policy = apply_peft(load_model("tiny-random"), "lora", r=4)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a non-zero update, so base and adapter differ
    save_pretrained_atomic(policy, None, tmp_path / "adapter")  # no tokenizer: taken from the base
    loaded = load_model(str(tmp_path / "adapter"))
    assert type(loaded).__name__.startswith("PeftModel")
    assert not loaded.training
    assert torch.allclose(_logits(loaded), _logits(policy), atol=1e-6)
    assert not torch.allclose(_logits(loaded), _logits(load_model("tiny-random")), atol=1e-3)
    assert any(p.requires_grad for p in loaded.parameters())
    assert load_tokenizer(str(tmp_path / "adapter")).pad_token == "<pad>"


def test_missing_path_is_one_line_error(tmp_path):
    with pytest.raises(PosttrainError) as info:
        load_model(str(tmp_path / "nope"))
    message = str(info.value)
    assert "\n" not in message and "not found" in message and "tiny-random" in message
    with pytest.raises(PosttrainError, match="not found"):
        load_tokenizer("./missing-model-dir")


def test_directory_without_config_is_an_error(tmp_path):
    with pytest.raises(PosttrainError, match="not a model directory"):
        load_model(str(tmp_path))


def test_hub_id_offline_is_one_line_error_with_hint(monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(PosttrainError) as info:
        load_model("tiny_random")
    assert "not reachable" in str(info.value) and "did you mean 'tiny-random'" in str(info.value)
    with pytest.raises(PosttrainError, match="not reachable"):
        load_tokenizer("someorg/some-model")


def test_dtype_and_device_resolution():
    cpu = torch.device("cpu")
    assert resolve_device(None) == cpu
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype(torch.float64, cpu) == torch.float64
    with pytest.raises(PosttrainError, match="unknown dtype"):
        resolve_dtype("int3", cpu)
    assert load_model("tiny-random", dtype="bfloat16").dtype == torch.bfloat16


def test_ensure_pad_token_prefers_pad_like_token_then_eos():
    tok = load_tokenizer("tiny-random")
    tok.pad_token = None
    ensure_pad_token(tok)
    assert tok.pad_token == "<pad>"

    class NoPad:
        pad_token, eos_token = None, "</s>"

        def get_vocab(self):
            return {"</s>": 0, "a": 1}

    fake = NoPad()
    ensure_pad_token(fake)
    assert fake.pad_token == "</s>"


def test_bad_padding_side():
    with pytest.raises(PosttrainError, match="padding_side"):
        load_tokenizer("tiny-random", padding_side="middle")


def test_load_in_4bit_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(PosttrainError, match="CUDA"):
        load_model("tiny-random", load_in_4bit=True)
