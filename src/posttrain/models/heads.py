"""A scalar head on a causal-LM backbone: the value model of PPO and the reward model.

    values = ScalarHeadModel.from_causal_lm(load_model("tiny-random"))(input_ids, attention_mask)  # (B, T)
    reward = last_token_values(values, attention_mask)                                            # (B,)

`ScalarHeadModel` keeps the whole causal LM (so `load_model`, `apply_peft` and PEFT
adapters work on it unchanged) but runs only its transformer body, then a
`Linear(hidden, 1)`. An untied `lm_head` is frozen: it is never used, and a trainable
unused parameter would break DDP.

On disk (`save_pretrained(dir)`): the backbone as a Hugging Face directory (or a PEFT
adapter directory when the backbone is a PeftModel), plus `value_head.safetensors`
(`weight` (1, H), `bias` (1,)) and `value_head.json`
(`{"format": "posttrain-scalar-head", "hidden_size": H}`).

Existing reward models saved as `AutoModelForSequenceClassification` with one label
load through `load_reward_model` too; `sequence_scores` scores either kind.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PosttrainError
from .logprobs import default_position_ids, split_causal_lm
from .saving import save_model_files

HEAD_WEIGHTS = "value_head.safetensors"
HEAD_CONFIG = "value_head.json"
HEAD_FORMAT = "posttrain-scalar-head"


class ScalarHeadModel(nn.Module):
    """backbone (a causal LM, possibly PEFT-wrapped) + Linear(hidden, 1) -> one value per token."""

    def __init__(self, model: nn.Module, head: nn.Linear):
        super().__init__()
        self.model = model
        self.head = head
        _freeze_unused_lm_head(model)

    @classmethod
    def from_causal_lm(cls, model: nn.Module, seed: int = 0) -> "ScalarHeadModel":
        """A fresh head: weight ~ N(0, 1/(H+1)), bias 0 (deterministic for `seed`)."""
        hidden = _hidden_size(model)
        param = next(model.parameters())
        head = nn.Linear(hidden, 1, device=param.device, dtype=param.dtype)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            weight = torch.randn(1, hidden, generator=generator) / math.sqrt(hidden + 1)
            head.weight.copy_(weight)
            head.bias.zero_()
        return cls(model, head)

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """input_ids (B, T) -> values (B, T) float32 (one per position; padding positions are junk)."""
        if position_ids is None and attention_mask is not None:
            position_ids = default_position_ids(attention_mask)
        parts = split_causal_lm(self.model)
        if parts is None:
            raise PosttrainError("a scalar head needs a backbone that can run on its own (not prompt-learning PEFT)")
        backbone, _ = parts
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, **kwargs).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Backbone (full or adapter) + head weights + head JSON into `directory` (created).

        `state_dict`: this module's full state dict when the live weights are sharded
        (FSDP/DeepSpeed gather it first: `accelerator.get_state_dict`); default: the weights.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if state_dict is None:
            save_model_files(self.model, directory)
            head = {"weight": self.head.weight, "bias": self.head.bias}
        else:
            backbone = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
            save_model_files(self.model, directory, state_dict=backbone)
            head = {"weight": state_dict["head.weight"], "bias": state_dict["head.bias"]}
        state = {k: v.detach().cpu().contiguous() for k, v in head.items()}
        save_file(state, str(directory / HEAD_WEIGHTS))
        meta = {"format": HEAD_FORMAT, "hidden_size": int(self.head.in_features)}
        (directory / HEAD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, path: str | Path, **load_kwargs: Any) -> "ScalarHeadModel":
        """Load what `save_pretrained` wrote; `load_kwargs` go to `load_model` (dtype, device, ...)."""
        from safetensors.torch import load_file

        from .loading import load_model, resolve_run_dir

        path = resolve_run_dir(Path(path))
        if not (path / HEAD_WEIGHTS).is_file():
            raise PosttrainError(f"{path}: no {HEAD_WEIGHTS}; not a posttrain scalar-head model")
        model = load_model(str(path), **load_kwargs)
        state = load_file(str(path / HEAD_WEIGHTS))
        hidden = _hidden_size(model)
        if tuple(state["weight"].shape) != (1, hidden):
            raise PosttrainError(f"{path}/{HEAD_WEIGHTS}: head shape {tuple(state['weight'].shape)} "
                                 f"does not fit the backbone's hidden size {hidden}")
        param = next(model.parameters())
        head = nn.Linear(hidden, 1, device=param.device, dtype=param.dtype)
        with torch.no_grad():
            head.weight.copy_(state["weight"])
            head.bias.copy_(state["bias"])
        return cls(model, head)


def _hidden_size(model: nn.Module) -> int:
    config = model.config
    hidden = getattr(config, "hidden_size", None) or getattr(config.get_text_config(), "hidden_size", None)
    if hidden is None:
        raise PosttrainError("cannot find the backbone's hidden size (config.hidden_size)")
    return int(hidden)


def _freeze_unused_lm_head(model: nn.Module) -> None:
    parts = split_causal_lm(model)
    if parts is None:
        return
    backbone, head = parts
    embeddings = backbone.get_input_embeddings() if hasattr(backbone, "get_input_embeddings") else None
    if embeddings is not None and head.weight is embeddings.weight:
        return  # tied: the weight is the (used) input embedding
    for param in head.parameters():
        param.requires_grad_(False)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B,) index of the last true position (0 for an all-false row)."""
    return mask.long().cumsum(-1).argmax(-1)


def last_token_values(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values (B, T), mask (B, T) -> (B,) value at each row's last true position
    (the last response token, or the last real token with the attention mask)."""
    return values.gather(-1, last_token_index(mask)[:, None]).squeeze(-1)


def is_scalar_head_dir(path: str | Path) -> bool:
    from .loading import resolve_run_dir

    return (resolve_run_dir(Path(path)) / HEAD_CONFIG).is_file()


def load_reward_model(name_or_path: str, **load_kwargs: Any):
    """A posttrain scalar-head directory -> `ScalarHeadModel`; anything else ->
    `AutoModelForSequenceClassification` with `num_labels=1` (e.g. an existing HF reward model)."""
    if is_scalar_head_dir(name_or_path):
        return ScalarHeadModel.from_pretrained(name_or_path, **load_kwargs)
    from transformers import AutoModelForSequenceClassification

    from .loading import _first_line, _missing, check_hub_available, looks_like_path, resolve_device, resolve_dtype

    if not Path(name_or_path).expanduser().exists():
        if looks_like_path(str(name_or_path)):
            raise _missing(str(name_or_path))
        check_hub_available(str(name_or_path))
    device = resolve_device(load_kwargs.get("device"))
    dtype = resolve_dtype(load_kwargs.get("dtype", "auto"), device)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(name_or_path), num_labels=1, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - missing dir, offline hub, wrong architecture
        raise PosttrainError(f"cannot load reward model '{name_or_path}': {_first_line(exc)}") from None
    return model.to(device) if load_kwargs.get("device") is not None else model


def sequence_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One scalar per sequence (B,) float32: the value at the last real token for a
    `ScalarHeadModel`, the classifier's logit for a sequence-classification model."""
    if isinstance(model, ScalarHeadModel):
        return last_token_values(model(input_ids, attention_mask), attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
