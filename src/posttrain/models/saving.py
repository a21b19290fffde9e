"""Save a model (full, PEFT adapter, or scalar-head) and its tokenizer atomically.

The directory appears complete or not at all: everything is written into a
temporary directory beside the target, which is then renamed over it. Use it for
final models and exports; `load_model` reads the result back.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import storage_errors
from .peft import quiet_peft_warnings


def save_model_files(model, directory: str | Path, state_dict: dict | None = None) -> None:
    """`model.save_pretrained(directory)` (safetensors), without PEFT's hub lookup.

    `state_dict`: the full weights when the live ones are sharded (FSDP/DeepSpeed).

    For a PEFT model PEFT would, by default, ask the hub whether the base model's
    vocabulary changed (an offline network call for names like `tiny-random`).
    posttrain never resizes embeddings through an adapter, so the embedding layers
    are only saved when they are themselves trained.
    """
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    is_adapter = getattr(model, "peft_config", None) is not None and hasattr(model, "get_base_model")
    if is_adapter:
        kwargs["save_embedding_layers"] = _embeddings_trained(model)

    with quiet_peft_warnings(), _loadable_base_recorded(model if is_adapter else None, directory):
        model.save_pretrained(str(directory), **kwargs)


@contextlib.contextmanager
def _loadable_base_recorded(model, directory: str | Path) -> Iterator[None]:
    """While a PEFT model is saved, its configs name a base that plain PEFT can load
    (`loading.loadable_base`: the converted directory of an alias or .gguf file), and
    `posttrain_base.json` keeps the alias for posttrain (should the cache be cleared)."""
    if model is None:
        yield
        return
    from .loading import BASE_NOTE, loadable_base

    seed = int(getattr(model.get_base_model(), "posttrain_seed", 0))
    configs = list(model.peft_config.values())
    recorded = [config.base_model_name_or_path for config in configs]
    aliases = set()
    for config in configs:
        if config.base_model_name_or_path:
            config.base_model_name_or_path, alias = loadable_base(str(config.base_model_name_or_path), seed)
            aliases.add(alias)
    try:
        yield
    finally:
        for config, name in zip(configs, recorded):
            config.base_model_name_or_path = name
    alias = next(iter(aliases - {None}), None)
    if alias is not None:
        note = {"alias": alias, "seed": seed}
        (Path(directory) / BASE_NOTE).write_text(json.dumps(note) + "\n", encoding="utf-8")


def _embeddings_trained(model) -> bool:
    base = model.get_base_model()
    modules = [base.get_input_embeddings(), base.get_output_embeddings()]
    return any(param.requires_grad for module in modules if module is not None for param in module.parameters())


def save_pretrained_atomic(model, tokenizer, directory: str | Path) -> Path:
    """Write model (+ tokenizer when given) to `directory`, replacing it atomically."""
    directory = Path(directory)
    with storage_errors("model directory", directory):  # a full disk, a read-only directory: one line
        return _save_pretrained_atomic(model, tokenizer, directory)


def _save_pretrained_atomic(model, tokenizer, directory: Path) -> Path:
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
