"""The benchmark models, each materialised once as a local checkpoint directory that BOTH
frameworks load (same weights, same tokenizer, same config).

- `smollm2-135m`: posttrain's cached safetensors conversion of SmolLM2-135M-Instruct
  (`posttrain.models.gguf.smollm2_checkpoint()`); real weights, real tokenizer.
- `tiny-random`: posttrain's tiny Llama (2 layers, hidden 64), saved with its tokenizer;
  for smoke runs of the harness only (a few ms per step: overheads dominate).
- `llama-0.5b`, `llama-1b`: randomly initialised Llama-style configs for GPU runs
  (bf16); the tiny tokenizer is saved beside them only for its pad/eos ids, the data
  are random ids over the model's vocabulary.
"""
from __future__ import annotations

from pathlib import Path

RANDOM_CONFIGS = {
    # ~0.48B: 24 x 17.2M block weights + 49152 x 1280 tied embedding/head
    "llama-0.5b": dict(hidden_size=1280, num_hidden_layers=24, num_attention_heads=20, num_key_value_heads=4,
                       head_dim=64, intermediate_size=3456, vocab_size=49152),
    # ~1.07B: the Llama-3.2-1B body (16 x 60.8M) with a 49152 vocabulary, tied head
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=64, intermediate_size=8192, vocab_size=49152),
}
MODELS = ("smollm2-135m", "tiny-random", *RANDOM_CONFIGS)


def random_llama(name: str, seed: int = 0):
    """A randomly initialised LlamaForCausalLM of one of `RANDOM_CONFIGS` (float32, on the CPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**RANDOM_CONFIGS[name], max_position_embeddings=4096, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def materialise(name: str, workdir: Path) -> tuple[Path, bool]:
    """(checkpoint directory, whether the model has a real tokenizer for text)."""
    if name == "smollm2-135m":
        from posttrain.models.gguf import smollm2_checkpoint

        return Path(smollm2_checkpoint()), True
    from posttrain.models import build_tiny_tokenizer

    target = workdir / f"model-{name}"
    if (target / "config.json").exists():
        return target, name == "tiny-random"
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    if name == "tiny-random":
        from posttrain.models import load_model

        model = load_model("tiny-random", seed=0)
        text = True
    elif name in RANDOM_CONFIGS:
        model = random_llama(name)
        text = False
    else:
        raise ValueError(f"unknown benchmark model {name!r} (known: {', '.join(MODELS)})")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target, text
