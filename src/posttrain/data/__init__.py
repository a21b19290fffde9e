"""posttrain.data: read, normalise, template, tokenise, pack, collate and mix training data.

    from posttrain.data import load_records, get_template, tokenize_conversation
    records = load_records("train.jsonl", kind="sft")        # list[Conversation]
    template = get_template("auto", tokenizer)               # the chat template, else "basic"
    example = tokenize_conversation(records[0], tokenizer, template, max_length=512, policy="truncate")

Submodules are imported lazily so `import posttrain.data` stays cheap (no torch).
See docs/data-formats.md for the shapes, templates, length policies and packing.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_rows": "readers",
    "split_location": "readers",
    "detect_shape": "formats",
    "parse_row": "formats",
    "iter_records": "formats",
    "load_records": "formats",
    "SHAPES": "formats",
    "KINDS": "formats",
    "Template": "templates",
    "get_template": "templates",
    "TEMPLATE_NAMES": "templates",
    "TokenizedExample": "tokenize",
    "LengthStats": "tokenize",
    "IGNORE_INDEX": "tokenize",
    "tokenize_conversation": "tokenize",
    "tokenize_conversations": "tokenize",
    "tokenize_prompt_response": "tokenize",
    "apply_length_policy": "tokenize",
    "Pack": "packing",
    "pack_examples": "packing",
    "pad_collate": "collate",
    "packed_collate": "collate",
    "padding_free_collate": "collate",
    "block_causal_mask": "collate",
    "mix": "mixing",
    "temperature_weights": "mixing",
    "allocate": "mixing",
    "encode": "tokenize",
    "load_prompts": "prompts",
    "parse_prompt": "prompts",
    "demo_data_path": "resources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'posttrain.data' has no attribute {name!r}")
