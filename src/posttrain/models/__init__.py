"""posttrain.models: loading models and tokenizers, PEFT, log-probs, value heads.

    from posttrain.models import load_model, load_tokenizer
    model = load_model("tiny-random")          # or "smollm2-135m", a local dir, a .gguf file, a hub id
    tokenizer = load_tokenizer("tiny-random")

Submodules are imported lazily so `import posttrain.models` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_tiny_model": "tiny",
    "build_tiny_tokenizer": "tiny",
    "load_model": "loading",
    "load_tokenizer": "loading",
    "load_model_and_tokenizer": "loading",
    "ensure_pad_token": "loading",
    "resolve_device": "loading",
    "resolve_dtype": "loading",
    "BUILTIN_ALIASES": "loading",
    "gguf_checkpoint": "gguf",
    "smollm2_checkpoint": "gguf",
    "PEFT_METHODS": "peft",
    "apply_peft": "peft",
    "trainable_parameter_summary": "peft",
    "is_peft_model": "peft",
    "merge_adapter": "peft",
    "TokenLogprobs": "logprobs",
    "selective_log_softmax": "logprobs",
    "entropy_from_logits": "logprobs",
    "fused_linear_logprobs": "logprobs",
    "response_logprobs": "logprobs",
    "ScalarHeadModel": "heads",
    "last_token_index": "heads",
    "last_token_values": "heads",
    "load_reward_model": "heads",
    "sequence_scores": "heads",
    "export_model": "export",
    "save_pretrained_atomic": "saving",
    "save_model_files": "saving",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'posttrain.models' has no attribute {name!r}")
