"""`posttrain export`: merge a PEFT adapter into its base and save a Hugging Face directory.

    posttrain export --model runs/sft-lora --output exported/sft-merged [--dtype bfloat16]

`--model` is anything `load_model` accepts: a run directory (its `final/`), an
adapter directory (base + adapter are loaded and merged), a full model directory,
an alias or a .gguf file (then export just writes a plain copy). A reward model
(posttrain's, TRL's, or posttrain's older value-head format) is exported as
`AutoModelForSequenceClassification` with num_labels=1 and its trained `score` head. The output directory
holds config, safetensors weights, generation config and the tokenizer; it appears
atomically (written to a temporary directory beside it, then renamed), so a crash
never leaves a half-written model behind.
"""
from __future__ import annotations

import dataclasses
import sys
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
    if is_scalar_head_dir(model):  # posttrain's older value-head format: exported as a classifier
        loaded = ScalarHeadModel.from_pretrained(model, dtype=dtype)
        merged = is_peft_model(loaded.model)
        loaded.model = merge_adapter(loaded.model)
        loaded = _ClassifierExport(_without_bias(loaded, model), tokenizer)
        tokenizer = None  # saved by save_as_classifier (with a pad token other than eos)
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


class _ClassifierExport:
    """Saves a scalar-head model as `AutoModelForSequenceClassification` (num_labels=1, its head as
    `score`) through `save_pretrained_atomic`, so plain transformers loads the trained head."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def save_pretrained(self, directory: str, **_: object) -> None:
        self.model.save_as_classifier(directory, self.tokenizer)


def _without_bias(model, source: str):
    """A transformers classifier's `score` layer has no bias: a head's nonzero bias is a constant
    added to every score, dropped here with a warning (score differences and rankings are unchanged)."""
    import torch

    head = model.head
    if head.bias is None:
        return model
    bias = float(head.bias.detach().float().reshape(-1)[0])
    if bias != 0.0:
        print(f"posttrain export: warning: {source}: the value head's bias {bias:+.4g} is dropped (a sequence "
              f"classifier's score layer has none); every exported score is {-bias:+.4g} off the original, "
              "differences between scores are unchanged", file=sys.stderr)
    plain = torch.nn.Linear(head.in_features, 1, bias=False, device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(head.weight)
    return type(model)(model.model, plain)


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
