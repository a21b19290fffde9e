"""A scalar head on a causal-LM backbone: the value model of PPO and the reward model.

    values = ScalarHeadModel.from_causal_lm(load_model("tiny-random"))(input_ids, attention_mask)  # (B, T)
    reward = last_token_values(values, attention_mask)                                            # (B,)

`ScalarHeadModel` keeps the whole causal LM (so `load_model`, `apply_peft` and PEFT
adapters work on it unchanged) but runs only its transformer body, then a
`Linear(hidden, 1)`. An untied `lm_head` is frozen: it is never used, and a trainable
unused parameter would break DDP.

On disk, two formats:
- reward models (`save_as_classifier`, bias-free head): what the ecosystem reads, an
  `AutoModelForSequenceClassification` directory with `num_labels=1` whose `score` layer is
  the head, or, for a LoRA backbone, a PEFT adapter of task type SEQ_CLS with `score` in
  `modules_to_save`. `load_reward_model` loads these (and TRL's, and any HF reward model).
- value models (`save_pretrained`): the backbone as a Hugging Face directory (or a PEFT
  adapter directory), plus `value_head.safetensors` (`weight` (1, H), `bias` (1,)) and
  `value_head.json` (`{"format": "posttrain-scalar-head", "hidden_size": H}`). Older
  posttrain reward models are in this format and still load.

`sequence_scores` scores either kind.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PosttrainError, first_line
from .logprobs import default_position_ids, split_causal_lm
from .peft import is_peft_model, merge_adapter, quiet_peft_warnings
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
    def from_causal_lm(cls, model: nn.Module, seed: int = 0, bias: bool = True) -> "ScalarHeadModel":
        """A fresh head: weight ~ N(0, 1/(H+1)), bias 0 (deterministic for `seed`).

        `bias=False` for reward models: the head is then exactly the `score` layer of
        `AutoModelForSequenceClassification` (which has no bias; a reward's constant offset
        does not change any preference), so the model saves in that format."""
        hidden = hidden_size(model)
        param = next(model.parameters())
        head = nn.Linear(hidden, 1, bias=bias, device=param.device, dtype=param.dtype)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            weight = torch.randn(1, hidden, generator=generator) / math.sqrt(hidden + 1)
            head.weight.copy_(weight)
            if bias:
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
        if head["bias"] is None:
            head["bias"] = torch.zeros(1, dtype=head["weight"].dtype)
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
        hidden = hidden_size(model)
        if tuple(state["weight"].shape) != (1, hidden):
            raise PosttrainError(f"{path}/{HEAD_WEIGHTS}: head shape {tuple(state['weight'].shape)} "
                                 f"does not fit the backbone's hidden size {hidden}")
        param = next(model.parameters())
        head = nn.Linear(hidden, 1, device=param.device, dtype=param.dtype)
        with torch.no_grad():
            head.weight.copy_(state["weight"])
            head.bias.copy_(state["bias"])
        return cls(model, head)

    @classmethod
    def from_classifier(cls, path: str | Path, **load_kwargs: Any) -> "ScalarHeadModel":
        """A reward model in the classifier format (`load_reward_model`, adapters merged) as a
        causal LM + head, e.g. to start PPO's value model from it: the backbone's weights and
        the `score` layer as the head (bias 0). The causal LM's output layer is never used."""
        from transformers import AutoModelForCausalLM

        classifier = load_reward_model(str(path), merge_adapter=True, **load_kwargs)
        config = copy.deepcopy(classifier.config)
        config.architectures = None
        param = next(classifier.parameters())
        lm = AutoModelForCausalLM.from_config(config, dtype=param.dtype)
        prefix = lm.base_model_prefix
        getattr(lm, prefix).load_state_dict(getattr(classifier, prefix).state_dict())
        lm.name_or_path = lm.config._name_or_path = str(path)
        head = nn.Linear(hidden_size(lm), 1, device=param.device, dtype=param.dtype)
        with torch.no_grad():
            head.weight.copy_(classifier.score.weight)
            head.bias.zero_()
        return cls(lm.to(param.device).eval(), head)

    def save_as_classifier(self, directory: str | Path, tokenizer, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Save in the format the ecosystem reads reward models in: `AutoModelForSequenceClassification`
        with `num_labels=1` and this head as its `score` layer (a full model), or a PEFT adapter of
        task type SEQ_CLS with `score` in `modules_to_save` (a LoRA backbone). Plain transformers /
        PEFT then give the scores posttrain gives. The head must have no bias (`bias=False`).

        `tokenizer` is saved too; its pad token is the one the classifier treats as padding (it
        scores a sequence's last non-pad token), so a pad token that equals eos is swapped for another
        special token: a response ends in eos, and that is the token the head was trained on.
        """
        from safetensors.torch import load_file, save_file

        if self.head.bias is not None:
            raise PosttrainError("a head with a bias cannot be saved as a sequence classifier (use bias=False)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokenizer = classifier_tokenizer(tokenizer)
        if state_dict is None:
            backbone_state, score = None, self.head.weight
        else:
            backbone_state = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
            score = state_dict["head.weight"]
        score = score.detach().cpu().contiguous()

        if is_peft_model(self.model):
            save_model_files(self.model, directory, state_dict=backbone_state)
            config_path = directory / "adapter_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["task_type"] = "SEQ_CLS"
            config["modules_to_save"] = sorted(set(config.get("modules_to_save") or []) | {"score"})
            config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            weights_path = directory / "adapter_model.safetensors"
            weights = load_file(str(weights_path))
            weights["base_model.model.score.weight"] = score.to(next(iter(weights.values())).dtype)
            save_file(weights, str(weights_path), metadata={"format": "pt"})
        else:
            lm = self.model
            weights = backbone_state if backbone_state is not None else lm.state_dict()
            output = lm.get_output_embeddings()
            output_name = next((name for name, module in lm.named_modules() if module is output), "lm_head")
            weights = {k: v.detach().cpu().contiguous() for k, v in weights.items()
                       if not k.startswith(output_name + ".")}
            weights["score.weight"] = score.to(next(iter(weights.values())).dtype)
            classifier_config(lm.config, tokenizer.pad_token_id).save_pretrained(str(directory))
            save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(directory))


def classifier_config(config, pad_token_id: int | None):
    """A causal LM's config -> the config of its `...ForSequenceClassification` with one label."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if name is None:
        raise PosttrainError(f"transformers has no sequence-classification model for {config.model_type!r}")
    config = copy.deepcopy(config)
    config.architectures = [name]
    config.num_labels = 1
    config.pad_token_id = pad_token_id
    config._name_or_path = ""
    return config


def classifier_tokenizer(tokenizer):
    """`tokenizer`, or a copy whose pad token differs from eos (see `save_as_classifier`)."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer
    vocab = tokenizer.get_vocab()
    preferred = ["<pad>", "<|pad|>", "[PAD]", "<|endoftext|>", "<unk>", *tokenizer.all_special_tokens]
    for token in preferred:
        if token in vocab and vocab[token] != tokenizer.eos_token_id:
            tokenizer = copy.deepcopy(tokenizer)
            tokenizer.pad_token = token
            return tokenizer
    return tokenizer  # nothing else to pad with: the classifier then skips a final eos


def hidden_size(model: nn.Module) -> int:
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
    """A reward/value model in posttrain's older format (backbone + value_head.safetensors)."""
    from .loading import resolve_run_dir

    return (resolve_run_dir(Path(path)) / HEAD_CONFIG).is_file()


def is_classifier_dir(path: str | Path) -> bool:
    """A local sequence-classification model (a reward model): a directory whose config names a
    `...ForSequenceClassification` architecture, or a SEQ_CLS adapter."""
    from .loading import resolve_run_dir

    path = resolve_run_dir(Path(path).expanduser())
    if is_classifier_adapter_dir(path):
        return True
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(str(name).endswith("ForSequenceClassification") for name in config.get("architectures") or [])


def is_classifier_adapter_dir(path: Path) -> bool:
    """A PEFT adapter of task type SEQ_CLS (a LoRA reward model, posttrain's or TRL's)."""
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("task_type") == "SEQ_CLS"


def load_reward_model(name_or_path: str, **load_kwargs: Any):
    """A reward model, as `AutoModelForSequenceClassification` with `num_labels=1` (posttrain's
    own, TRL's, any HF one; a SEQ_CLS PEFT adapter on its base), or a `ScalarHeadModel` for a
    directory in posttrain's older value-head format. `load_kwargs`: dtype, device,
    attn_implementation (and `merge_adapter=True` to fold an adapter into its base)."""
    if is_scalar_head_dir(name_or_path):
        load_kwargs.pop("merge_adapter", None)
        return ScalarHeadModel.from_pretrained(name_or_path, **load_kwargs)
    from .loading import (
        adapter_base_name,
        check_hub_available,
        is_adapter_dir,
        loadable_base,
        looks_like_path,
        missing_model_error,
        resolve_device,
        resolve_dtype,
        resolve_run_dir,
    )

    path = Path(name_or_path).expanduser()
    if not path.exists():
        if looks_like_path(str(name_or_path)):
            raise missing_model_error(str(name_or_path))
        check_hub_available(str(name_or_path))
    else:
        path = resolve_run_dir(path)
    device = resolve_device(load_kwargs.get("device"))
    dtype = resolve_dtype(load_kwargs.get("dtype", "auto"), device)
    kwargs = {"dtype": dtype, "attn_implementation": load_kwargs.get("attn_implementation") or "sdpa"}
    source = str(path) if path.exists() else str(name_or_path)
    if path.exists() and is_adapter_dir(path):
        if not is_classifier_adapter_dir(path):
            raise PosttrainError(f"{path}: a causal-LM adapter, not a reward model (expected task_type SEQ_CLS)")
        base_name = adapter_base_name(path)
        base = _classifier_from_pretrained(loadable_base(base_name)[0], base_name, kwargs, path)
        model = _with_classifier_adapter(base, path, merge=bool(load_kwargs.get("merge_adapter")))
    else:
        model = _classifier_from_pretrained(source, str(name_or_path), kwargs, path if path.exists() else None)
    return model.to(device) if load_kwargs.get("device") is not None else model


def _classifier_from_pretrained(source: str, label: str, kwargs: dict[str, Any], tokenizer_dir: Path | None):
    """`AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)` with a pad token id
    (the classifier finds each row's last token by it; a causal LM's config often has none)."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    from .loading import load_tokenizer

    verbosity = transformers.logging.get_verbosity()
    # Loading a causal LM as a classifier (the base of a LoRA reward model) reports its new,
    # random `score` layer; the adapter's saved `score` replaces it right after.
    transformers.logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, **kwargs)
    except Exception as exc:  # noqa: BLE001 - missing dir, offline hub, wrong architecture
        raise PosttrainError(f"cannot load reward model '{label}': {first_line(exc)}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:
        tokenizer = load_tokenizer(str(tokenizer_dir or source))
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def _with_classifier_adapter(base, path: Path, merge: bool):
    from peft import PeftModel

    try:
        with quiet_peft_warnings():
            model = PeftModel.from_pretrained(base, str(path))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise PosttrainError(f"cannot load reward-model adapter {path}: {first_line(exc)}") from None
    return (merge_adapter(model) if merge else model).eval()


def sequence_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One scalar per sequence (B,) float32: the value at the last real token for a
    `ScalarHeadModel`, the classifier's logit for a sequence-classification model."""
    if isinstance(model, ScalarHeadModel):
        return last_token_values(model(input_ids, attention_mask), attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
