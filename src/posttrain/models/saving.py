"""Save a model (full, PEFT adapter, or scalar-head) and its tokenizer atomically.

The directory appears complete or not at all: everything is written into a
temporary directory beside the target, which is then renamed over it. Use it for
final models and exports; `load_model` reads the result back.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def save_model_files(model, directory: str | Path, state_dict: dict | None = None) -> None:
    """`model.save_pretrained(directory)` (safetensors), without PEFT's hub lookup.

    `state_dict`: the full weights when the live ones are sharded (FSDP/DeepSpeed).

    For a PEFT model PEFT would, by default, ask the hub whether the base model's
    vocabulary changed (an offline network call for names like `tiny-random`).
    posttrain never resizes embeddings through an adapter, so the embedding layers
    are only saved when they are themselves trained.
    """
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    if getattr(model, "peft_config", None) is not None and hasattr(model, "get_base_model"):
        kwargs["save_embedding_layers"] = _embeddings_trained(model)
    from .peft import quiet_peft_warnings

    with quiet_peft_warnings():
        model.save_pretrained(str(directory), **kwargs)


def _embeddings_trained(model) -> bool:
    base = model.get_base_model()
    modules = [base.get_input_embeddings(), base.get_output_embeddings()]
    return any(param.requires_grad for module in modules if module is not None for param in module.parameters())


def save_pretrained_atomic(model, tokenizer, directory: str | Path) -> Path:
    """Write model (+ tokenizer when given) to `directory`, replacing it atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_model_files(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model directory is ordinary data
        if directory.exists():
            # Move the old one aside first (rename cannot replace a non-empty directory);
            # a crash between the two renames leaves the old model in `.NAME.old-*`.
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.rename(directory, old / "x")
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
