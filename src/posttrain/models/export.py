"""`posttrain export`: merge a PEFT adapter into its base and save a Hugging Face directory.

    posttrain export --model runs/sft-lora --output exported/sft-merged [--dtype bfloat16]

`--model` is anything `load_model` accepts: a run directory (its `final/`), an
adapter directory (base + adapter are loaded and merged), a full model directory,
an alias or a .gguf file (then export just writes a plain copy). A posttrain
scalar-head model (reward/value) is exported with its head. The output directory
holds config, safetensors weights, generation config and the tokenizer; it appears
atomically (written to a temporary directory beside it, then renamed), so a crash
never leaves a half-written model behind.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import help_field, parse_config
from ..errors import ConfigError, PosttrainError
from .peft import is_peft_model, merge_adapter
from .saving import save_pretrained_atomic


@dataclasses.dataclass
class ExportConfig:
    model: str = help_field("", "run directory, adapter directory, model directory, alias or .gguf file to export")
    output: str = help_field("", "directory to write the merged Hugging Face model to (must not exist, see --overwrite)")
    dtype: str = help_field("auto", "dtype of the saved weights (auto: float32 on CPU)",
                            choices=["auto", "float32", "bfloat16", "float16"])
    overwrite: bool = help_field(False, "replace --output when it already exists")


def export_model(model: str, output: str | Path, *, dtype: str = "auto", overwrite: bool = False) -> dict:
    """Load `model`, merge any adapter, save model + tokenizer to `output` atomically.

    Returns {"output": str, "merged_adapter": bool, "scalar_head": bool}.
    """
    from .heads import ScalarHeadModel, is_classifier_dir, is_scalar_head_dir, load_reward_model
    from .loading import load_model, load_tokenizer

    output = Path(output)
    if output.exists() and not overwrite:
        raise PosttrainError(f"{output}: already exists (choose another --output or pass --overwrite)")
    tokenizer = load_tokenizer(model)
    scalar_head = is_scalar_head_dir(model) or is_classifier_dir(model)
    if is_scalar_head_dir(model):
        loaded = ScalarHeadModel.from_pretrained(model, dtype=dtype)
        merged = is_peft_model(loaded.model)
        loaded.model = merge_adapter(loaded.model)
    elif scalar_head:  # a reward model: sequence classifier (adapter), saved as a plain classifier
        loaded = load_reward_model(model, dtype=dtype)
        merged = is_peft_model(loaded)
        loaded = merge_adapter(loaded)
    else:
        loaded = load_model(model, dtype=dtype)
        merged = is_peft_model(loaded)
        loaded = merge_adapter(loaded)

    save_pretrained_atomic(loaded, tokenizer, output)
    return {"output": str(output), "merged_adapter": merged, "scalar_head": scalar_head}


def main(argv: list[str]) -> int:
    cfg = parse_config(ExportConfig, argv, prog="posttrain export",
                       description="merge a LoRA adapter into its base and save a Hugging Face directory",
                       positional="model")
    if not cfg.model:
        raise ConfigError("model", "required (a run, adapter or model directory)")
    if not cfg.output:
        raise ConfigError("output", "required (the directory to write)")
    result = export_model(cfg.model, cfg.output, dtype=cfg.dtype, overwrite=cfg.overwrite)
    what = "merged adapter into base" if result["merged_adapter"] else "no adapter to merge; plain copy"
    print(f"exported {cfg.model} -> {result['output']} ({what})")
    return 0
