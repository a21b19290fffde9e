"""The reference policy pi_ref: one concept for every recipe that needs one (DPO family, KTO,
GRPO/RLOO, PPO, the combined objective).

A `Reference` answers "log pi_ref(y | x)" in the two shapes the losses need:

- `token_logprobs(batch, temperature)`: `[B, T]`, per response token (online recipes: the KL
  term, RLOO's KL-in-reward), for a rollout batch (`input_ids`, `attention_mask`, `response_mask`);
- `sequence_logps(batch, columns)`: `[S]`, summed over each scored sequence of a preference batch
  (`preference_batch.sequence_logps`'s layout); `columns` says which of each example's sequences
  the batch holds (0 = chosen/completion, 1 = rejected/mismatched), which the cache needs to pick
  its rows. A live reference scores the batch itself.

How pi_ref is obtained (`--reference` for the offline recipes; online ones pick `copy` or `adapter`
by whether the policy has an adapter, `reference_for_policy`):

- `copy`: a separate frozen model (`--ref-model`, default the starting model; online: a
  `frozen_copy` of the policy), in eval mode. One more model in memory and one more forward per
  batch. Works for every setup.
- `adapter`: the policy itself with its PEFT adapter switched off (`adapter_disabled`). No second
  copy in memory; one more forward per batch. Needs `--peft`; the base under the adapter is the
  reference, so `--ref-model` cannot be used.
- `policy-at-start`: the untouched policy itself, before its first update (only for the cache's
  first pass of a full fine-tune).
- `cached`: a layer over the others, for sequence sums: the reference log-probs of every example
  are computed ONCE, in a first pass before training, and stored in posttrain's cache (never
  beside the user's data): `$POSTTRAIN_CACHE/reference/<data file name>.ref-<key>.safetensors`
  (default `~/.cache/posttrain`). A second epoch, an evaluation, or a rerun reads them instead of
  running the reference at all: no reference model in memory and no reference forward during
  training. The first pass runs the starting model (the policy before its first update, with the
  adapter switched off under PEFT; or `--ref-model`, loaded for the pass and freed).
- `auto`: `cached` when the training (and eval) data are local files or
  directories, else `adapter` with `--peft`, else `copy`. Reference-free losses
  (simpo, orpo) use no reference whatever this says.

The cache key is a SHA-256 over: the reference model's identity (an alias and
its seed, or the path with the size and modification time of its files, or a
hub id), the dtype, the data file's content hash, the template, max_length,
the length policy, and the token ids of every example. Any change gives a new
key and so a new file name: a stale cache is never read. Files are written
atomically (temporary file, then rename) by the main process, after every
process has computed its share (examples `rank::world`) and the shares were
gathered. If the cache directory is not writable, the file goes to the run
directory instead (and is then only reused by runs with that directory).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import ConfigError, PosttrainError
from ..jsonl import atomic_write
from ..models.gguf import cache_root
from ..models.logprobs import response_logprobs
from ..models.peft import is_peft_model
from .preference_batch import sequence_logps

STRATEGIES = ("auto", "copy", "adapter", "cached")
CACHE_FORMAT = "posttrain-reference-logps-v1"

# Number of first passes run in this process (tests check that a rerun does not add one).
cache_passes = 0


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` without dropout inside the block; its train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """`model` itself in eval mode (no dropout) with `requires_grad=False` everywhere."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy of `model` (the `copy` strategy when the reference is the starting policy)."""
    return freeze(copy.deepcopy(model))


@contextlib.contextmanager
def adapter_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a PEFT model as its base model inside the block (the adapter is restored after).

    Also accepts a `ScalarHeadModel`-like wrapper whose `.model` is a PEFT model.
    Raises PosttrainError for a model without an adapter (use `frozen_copy` then).
    """
    target = model
    if not hasattr(target, "disable_adapter") and hasattr(target, "model"):
        target = target.model
    if not hasattr(target, "disable_adapter") or getattr(target, "peft_config", None) is None:
        raise PosttrainError("the reference model can only be 'the policy without its adapter' when the policy "
                             "has a PEFT adapter; use a frozen copy for full fine-tuning")
    with target.disable_adapter():
        yield model


def pick(values: torch.Tensor, batch: dict[str, Any], columns: Sequence[int]) -> torch.Tensor:
    """Rows of a `[N, K]` table for the batch's examples, columns one after another: `[len(columns) * B]`."""
    rows = values[batch["example_index"].to(values.device)]
    return torch.cat([rows[:, c] for c in columns])


class Reference:
    """pi_ref's log-probs: the one type every recipe holds (see the module docstring). Two kinds:
    `ModelReference` runs a model (copy, adapter, policy-at-start); `CachedReference` reads the
    sequence sums a model computed once."""

    name = "reference"

    def token_logprobs(self, batch: dict[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
        """`[B, T]` log pi_ref of each response token (0 off `response_mask`), at `temperature`."""
        raise NotImplementedError

    def sequence_logps(self, batch: dict[str, Any], columns: Sequence[int] = ()) -> torch.Tensor:
        """`[S]` summed response log pi_ref of the batch's S scored sequences, in the batch's order."""
        raise NotImplementedError

    def to(self, device) -> "Reference":
        return self

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.name}


class ModelReference(Reference):
    """pi_ref from a live model: scored without gradients, in eval mode, with the adapter switched
    off when `adapter_off` (the `adapter` strategy). `model` is the module, or a function returning
    it (an online run's policy, looked up through its wrapper at each call)."""

    def __init__(self, model: torch.nn.Module | Callable[[], torch.nn.Module], *, adapter_off: bool = False,
                 name: str = "copy"):
        self.model, self.adapter_off, self.name = model, adapter_off, name

    @contextlib.contextmanager
    def scoring(self) -> Iterator[torch.nn.Module]:
        """The model to run as pi_ref inside the block."""
        model = self.model if isinstance(self.model, torch.nn.Module) else self.model()
        with torch.no_grad(), eval_mode(model), adapter_disabled(model) if self.adapter_off else contextlib.nullcontext():
            yield model

    def token_logprobs(self, batch: dict[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
        with self.scoring() as model:
            return response_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                     response_mask=batch["response_mask"], temperature=temperature).logprobs

    def sequence_logps(self, batch: dict[str, Any], columns: Sequence[int] = ()) -> torch.Tensor:
        with self.scoring() as model:
            return sequence_logps(model, batch).logps

    def to(self, device) -> "Reference":
        if isinstance(self.model, torch.nn.Module) and not self.adapter_off:
            self.model.to(device)
        return self


def copy_reference(model: torch.nn.Module) -> Reference:
    """`copy`: a separate model (frozen here), e.g. `--ref-model` loaded by `load_reference_model`."""
    return ModelReference(freeze(model), name="copy")


def adapter_reference(policy: torch.nn.Module | Callable[[], torch.nn.Module]) -> Reference:
    """`adapter`: the (unwrapped: DDP wrappers do not expose disable_adapter) PEFT policy, adapter off."""
    return ModelReference(policy, adapter_off=True, name="adapter")


def policy_reference(policy: torch.nn.Module) -> Reference:
    """`policy-at-start`: the policy itself, before its first update (the cache's first pass)."""
    return ModelReference(policy, name="policy-at-start")


def reference_for_policy(policy: torch.nn.Module, get_policy: Callable[[], torch.nn.Module]) -> Reference:
    """An online run's pi_ref, the starting policy: with a PEFT adapter, the policy with the adapter
    off (`get_policy` finds it at each call; no second model), otherwise a `frozen_copy` of it."""
    return adapter_reference(get_policy) if is_peft_model(policy) else copy_reference(frozen_copy(policy))


@dataclass
class CacheInfo:
    path: str
    key: str
    hit: bool
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key, "hit": self.hit, "rows": self.rows}


class CachedReference(Reference):
    """The `cached` layer: sequence sums read from a `[N, K]` table (row: `example.index`, column:
    which sequence of the example), computed once by a live reference (`build_reference`)."""

    name = "cached"

    def __init__(self, table: torch.Tensor, caches: Sequence[CacheInfo] = ()):
        self.table, self.caches = table, list(caches)

    def sequence_logps(self, batch: dict[str, Any], columns: Sequence[int] = ()) -> torch.Tensor:
        if not columns:
            raise ValueError("a cached reference needs the columns the batch holds")
        return pick(self.table, batch, columns).to(batch["input_ids"].device)

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.name, "caches": [c.to_dict() for c in self.caches]}


def resolve_strategy(strategy: str, *, needs_reference: bool, peft: str, ref_model: str | None,
                     data_paths: Sequence[str]) -> str | None:
    """The strategy to use ("copy", "adapter", "cached"), or None for reference-free losses."""
    if strategy not in STRATEGIES:
        raise ConfigError("reference", f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
    if not needs_reference:
        return None
    if strategy == "adapter":
        if peft == "none":
            raise ConfigError("reference", "'adapter' needs a PEFT adapter on the policy (--peft lora, ...); "
                                           "use 'copy' or 'cached' for full fine-tuning")
        if ref_model:
            raise ConfigError("ref_model", "with --reference adapter the reference is the base under the adapter; "
                                           "use --reference copy or cached for another reference model")
    local = all(os.path.exists(p) for p in data_paths)
    if strategy == "cached" and not local:
        missing = next(p for p in data_paths if not os.path.exists(p))
        raise ConfigError("reference", f"'cached' stores reference log-probs beside the dataset, but {missing!r} is "
                                       "not a local file or directory; use 'copy' or 'adapter'")
    if strategy != "auto":
        return strategy
    if local:
        return "cached"
    return "adapter" if peft != "none" and not ref_model else "copy"


# --------------------------------------------------------------------------- cache keys


def _hash_path(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def data_fingerprint(path: str) -> str:
    """SHA-256 of a data file's bytes, or of every file (names and bytes) under a dataset directory."""
    digest = hashlib.sha256()
    root = Path(path)
    if root.is_dir():
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(root)).encode())
            _hash_path(digest, file)
    else:
        _hash_path(digest, root)
    return digest.hexdigest()


def model_identity(name: str, seed: int) -> str:
    """What identifies a reference model's weights, for the cache key."""
    from ..models.loading import BUILTIN_ALIASES, TINY_RANDOM

    if name in BUILTIN_ALIASES:
        return f"alias:{name}" + (f":seed={seed}" if name == TINY_RANDOM else "")
    path = Path(name).expanduser()
    if path.exists():
        files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file())
        stats = ";".join(f"{p.relative_to(path) if path.is_dir() else p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                         for p in files if not p.name.startswith("."))
        return f"path:{path.resolve()}|{stats}"
    return f"hub:{name}"


def token_fingerprint(examples: Sequence[Any], fields: Sequence[str]) -> str:
    """SHA-256 of the token ids of every example (the fields in order)."""
    digest = hashlib.sha256()
    for example in examples:
        for name in fields:
            digest.update(b"|" + ",".join(map(str, getattr(example, name))).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    text = "\n".join(f"{k}={parts[k]}" for k in sorted(parts))
    return hashlib.sha256(f"{CACHE_FORMAT}\n{text}".encode()).hexdigest()


def cache_file(data_path: str, key: str, fallback_dir: str | Path) -> Path:
    """`$POSTTRAIN_CACHE/reference/<name>.ref-<key16>.safetensors` (the key covers the data's
    content, so two files of one name never share an entry); when the cache root is not
    writable, `fallback_dir/reference-cache/`. Never beside the data: a user's data directory,
    or the source tree for shipped data, is not posttrain's to write into."""

    directory = cache_root() / "reference"
    existing = next((p for p in (directory, *directory.parents) if p.exists()), directory)
    if not os.access(existing, os.W_OK):
        directory = Path(fallback_dir) / "reference-cache"
    return directory / f"{Path(data_path).name}.ref-{key[:16]}.safetensors"


def read_cache(path: Path, key: str, rows: int) -> torch.Tensor | None:
    """The cached table, or None when the file is missing, unreadable or not for this key and size."""
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            table = handle.get_tensor("logps")
    except Exception:  # noqa: BLE001 - a damaged cache is simply recomputed
        return None
    if meta.get("key") != key or meta.get("format") != CACHE_FORMAT or table.shape[0] != rows:
        return None
    return table


def write_cache(path: Path, key: str, table: torch.Tensor, description: dict[str, str]) -> None:
    from safetensors.torch import save

    data = save({"logps": table.contiguous().cpu()}, metadata={"key": key, "format": CACHE_FORMAT, **description})
    with atomic_write(path, "wb") as handle:
        handle.write(data)


# --------------------------------------------------------------------------- the first pass


def compute_table(score: Callable[[list], torch.Tensor], examples: Sequence[Any], batch_size: int,
                  accelerator) -> torch.Tensor:
    """`[N, K]` reference log-probs: each process scores examples `rank::world`, then all are gathered.

    `score(chunk)` returns `[len(chunk), K]` (no gradients needed).
    """
    from accelerate.utils import gather_object

    global cache_passes
    cache_passes += 1
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(examples), world))
    rows: list[tuple[int, list[float]]] = []
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            ids = mine[start:start + batch_size]
            values = score([examples[i] for i in ids]).float().cpu()
            rows += [(i, values[j].tolist()) for j, i in enumerate(ids)]
    if world > 1:
        rows = gather_object(rows)
    rows.sort()
    return torch.tensor([values for _, values in rows], dtype=torch.float32)


def load_or_compute(data_path: str, examples: Sequence[Any], key_parts: dict[str, Any], token_fields: Sequence[str],
                    score: Callable[[list], torch.Tensor], *, batch_size: int, accelerator,
                    fallback_dir: str | Path) -> tuple[torch.Tensor, CacheInfo]:
    """The reference table of one data file: read from its cache, or computed and written there."""
    key = cache_key({**key_parts, "data": data_fingerprint(data_path),
                     "tokens": token_fingerprint(examples, token_fields)})
    path = cache_file(data_path, key, fallback_dir)
    table = read_cache(path, key, len(examples))
    if table is not None:
        return table, CacheInfo(str(path), key, True, len(examples))
    table = compute_table(score, examples, batch_size, accelerator)
    if accelerator.is_main_process:
        write_cache(path, key, table, {k: str(v) for k, v in key_parts.items()})
    accelerator.wait_for_everyone()
    return table, CacheInfo(str(path), key, False, len(examples))


# --------------------------------------------------------------------------- putting it together


def load_reference_model(cfg, device) -> torch.nn.Module:
    """`cfg.ref_model` (default `cfg.model`) loaded like the policy, frozen, on `device`."""
    from ..models import load_model

    model = load_model(cfg.ref_model or cfg.model, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation,
                       seed=cfg.seed)
    return freeze(model).to(device)


def build_reference(strategy: str | None, cfg, policy: torch.nn.Module, accelerator, *,
                    datasets: Sequence[tuple[str, Sequence[Any]]], score: Callable[[Reference, list], torch.Tensor],
                    token_fields: Sequence[str], key_parts: dict[str, Any]) -> Reference | None:
    """The reference for a run (None for reference-free losses).

    `datasets`: (path, every kept example of that file). For "cached", each
    file's table is read or computed with `score(live_reference, chunk) -> [len(chunk), K]`,
    the tables are stacked, and each example's `.index` is shifted to its row
    in the stack (train and eval examples of one file share its table).
    """
    if strategy is None:
        return None
    if strategy == "adapter":
        return adapter_reference(policy)
    if strategy == "copy":
        return copy_reference(load_reference_model(cfg, accelerator.device))
    if cfg.ref_model:
        live = copy_reference(load_reference_model(cfg, accelerator.device))
    elif cfg.peft != "none":
        live = adapter_reference(policy)
    else:
        live = policy_reference(policy)
    policy.to(accelerator.device)
    tables, infos, offset = [], [], 0
    for path, examples in datasets:
        with accelerator.autocast():
            table, info = load_or_compute(path, examples, key_parts, token_fields, lambda chunk: score(live, chunk),
                                          batch_size=cfg.batch_size, accelerator=accelerator,
                                          fallback_dir=cfg.output_dir)
        for example in examples:
            example.index += offset
        offset += len(examples)
        tables.append(table)
        infos.append(info)
    # `live` (and a --ref-model loaded for the pass) is dropped on return: training reads only the table.
    return CachedReference(torch.cat(tables), infos)


def describe(reference: Reference | None) -> dict[str, Any]:
    """What the run used, for data_report.json."""
    return reference.describe() if reference is not None else {"strategy": "none (reference-free loss)"}


def summary_line(reference: Reference | None) -> str:
    info = describe(reference)
    if info["strategy"] != "cached":
        return info["strategy"]
    return "cached; " + "; ".join(f"{'read' if c['hit'] else 'computed and wrote'} {c['rows']} rows: {c['path']}"
                                  for c in info["caches"])
