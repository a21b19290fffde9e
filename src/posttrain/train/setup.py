"""Set-up steps every training recipe shares: the run directory and the model to train."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import save_config
from .args import ModelArgs


def is_main_process() -> bool:
    """True on the process that writes files and prints (rank 0 under torchrun/accelerate)."""
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    """Print once per run, not once per process."""
    if is_main_process():
        print(message, flush=True)


def prepare_run_dir(cfg: Any) -> Path:
    """Create the run directory and write the resolved config (`config.yaml`) into it."""
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        save_config(cfg, run_dir / "config.yaml")
    return run_dir


def load_trainable_model(cfg: ModelArgs, *, seed: int = 0, gradient_checkpointing: bool = False,
                         modules_to_save: list[str] | None = None, quiet: bool = False):
    """Load `cfg.model` and wrap it in the chosen PEFT method; returns the model in train mode."""
    from ..models import load_model
    from ..models.peft import apply_peft, is_peft_model, merge_adapter, trainable_parameter_summary

    from accelerate.utils import set_seed

    # Seed before building anything random (adapter init), so a run is a function of its seed.
    set_seed(seed)
    extra = {"load_in_4bit": True} if cfg.peft == "qlora" else {}
    model = load_model(cfg.model, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation, seed=seed, **extra)
    if is_peft_model(model):
        # Starting from an adapter run (e.g. DPO after LoRA SFT): fold it into the base weights,
        # so the new stage trains one adapter (or the full model) on top of what SFT learned.
        model = merge_adapter(model)
        # PEFT records `name_or_path` as the new adapter's base: name this run, not the bare base
        # model, or loading the result would drop what the first run learned.
        from ..models.loading import resolve_run_dir

        start = str(resolve_run_dir(Path(cfg.model).expanduser()).resolve())
        model.name_or_path = model.config._name_or_path = start
    if cfg.peft != "none":
        target = cfg.lora_target_modules
        target = target[0] if target == ["all-linear"] else target
        model = apply_peft(model, cfg.peft, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=target, modules_to_save=modules_to_save,
                           gradient_checkpointing=gradient_checkpointing)
    model.train()
    if not quiet:
        say(f"model {cfg.model}: {trainable_parameter_summary(model)['text']}")
    return model
