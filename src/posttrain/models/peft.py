"""Parameter-efficient fine-tuning through PEFT: one `method` choice.

    model = apply_peft(model, "lora", r=16, alpha=32, dropout=0.05, target_modules="all-linear")

Methods (`PEFT_METHODS`):
  lora    low-rank adapters A·B added to the chosen linear layers (Hu et al., 2021)
  dora    LoRA with a learned magnitude per output column (Liu et al., 2024)
  qlora   LoRA on a model loaded in 4-bit NF4 (Dettmers et al., 2023); the model must
          come from `load_model(..., load_in_4bit=True)` (CUDA + bitsandbytes)
  prefix  trainable key/value prefixes in every layer (Li & Liang, 2021)
  ia3     learned rescaling of keys, values and feed-forward activations (Liu et al., 2022)

`target_modules="all-linear"` means every linear layer except the output head.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

from ..errors import PosttrainError

PEFT_METHODS = ("lora", "dora", "qlora", "prefix", "ia3")


def _lora_config(r: int, alpha: float, dropout: float, target_modules: Any, modules_to_save: list[str] | None,
                 use_dora: bool = False, **_: Any):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none",
                      use_dora=use_dora, modules_to_save=modules_to_save, task_type="CAUSAL_LM")


def _dora_config(**kwargs: Any):
    return _lora_config(use_dora=True, **kwargs)


def _prefix_config(num_virtual_tokens: int, **_: Any):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=num_virtual_tokens, task_type="CAUSAL_LM")


def _ia3_config(target_modules: Any, modules_to_save: list[str] | None, **_: Any):
    from peft import IA3Config

    # IA3 needs to know which targets are feed-forward layers; PEFT's per-architecture
    # defaults (keys, values, down projection) are used unless modules are named explicitly.
    if target_modules == "all-linear":
        return IA3Config(modules_to_save=modules_to_save, task_type="CAUSAL_LM")
    modules = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    feedforward = [m for m in modules if any(key in m for key in ("mlp", "down", "fc", "ffn", "w2"))]
    return IA3Config(target_modules=modules, feedforward_modules=feedforward, modules_to_save=modules_to_save,
                     task_type="CAUSAL_LM")


_CONFIG_BUILDERS: dict[str, Callable[..., Any]] = {
    "lora": _lora_config,
    "dora": _dora_config,
    "qlora": _lora_config,
    "prefix": _prefix_config,
    "ia3": _ia3_config,
}


@contextlib.contextmanager
def quiet_peft_warnings() -> Iterator[None]:
    """Hide a FutureWarning PEFT triggers inside transformers (a renamed API), nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def is_quantized_4bit(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them (non-reentrant).
    transformers 5 renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable`
    (the old name warns); use whichever the installed version has."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_peft(model, method: str = "lora", r: int = 16, alpha: float = 32, dropout: float = 0.05,
               target_modules: str | list[str] = "all-linear", *, num_virtual_tokens: int = 16,
               modules_to_save: list[str] | None = None, gradient_checkpointing: bool = False):
    """Wrap `model` (in place, as PEFT does) in a `PeftModel` whose only trainable
    parameters are the adapter's. The train/eval mode of `model` is kept.

    `modules_to_save` lists extra modules trained in full and saved with the adapter
    (e.g. a value head). For qlora the model must already be 4-bit (see module docstring).
    """
    if method not in _CONFIG_BUILDERS:
        raise PosttrainError(f"unknown PEFT method '{method}' (choose from {', '.join(PEFT_METHODS)})")
    if r <= 0:
        raise PosttrainError(f"LoRA rank r must be positive, got {r}")
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        if not is_quantized_4bit(model):
            raise PosttrainError("qlora needs a 4-bit model: load it with load_model(..., load_in_4bit=True) "
                                 "(CUDA GPU and the bitsandbytes package required)")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need an input grad
    config = _CONFIG_BUILDERS[method](r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                                      modules_to_save=modules_to_save, num_virtual_tokens=num_virtual_tokens)
    was_training = model.training
    try:
        with quiet_peft_warnings():
            wrapped = get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules not found in the model
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise PosttrainError(f"cannot apply {method}: {first}") from None
    return wrapped.train(was_training)  # PEFT switches to train mode; keep the caller's mode


def trainable_parameter_summary(model) -> dict[str, Any]:
    """{"trainable": n, "total": n, "percent": float, "text": "trainable 1.2M / 135M (0.9%)"}."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    percent = 100.0 * trainable / total if total else 0.0
    text = f"trainable {_human(trainable)} / {_human(total)} parameters ({percent:.2f}%)"
    return {"trainable": trainable, "total": total, "percent": percent, "text": text}


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def is_peft_model(model) -> bool:
    return getattr(model, "peft_config", None) is not None and hasattr(model, "get_base_model")


def merge_adapter(model):
    """A plain model with the (LoRA/DoRA/IA3) adapter folded into its weights; others unchanged."""
    if not is_peft_model(model):
        return model
    if not hasattr(model, "merge_and_unload"):
        raise PosttrainError("this adapter type cannot be merged into the base weights (e.g. prefix tuning)")
    with quiet_peft_warnings():
        return model.merge_and_unload()
