"""Set-up steps every training recipe shares: the run directory and the model to train."""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..allocator import REEXECUTED as ALLOCATOR_SET
from ..config import save_config, to_mapping
from ..errors import ConfigError
from ..models.peft import apply_peft, is_peft_model, merge_adapter, trainable_parameter_summary
from .args import ModelArgs


def is_main_process() -> bool:
    """True on the process that writes files and prints (rank 0 under torchrun/accelerate)."""
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    """Print once per run, not once per process."""
    if is_main_process():
        print(message, flush=True)


# --------------------------------------------------------------------------- run directories

LOCK_FILE = ".posttrain.lock"
# Settings that change how a run reports or checkpoints, not what it computes: a --resume
# may change them freely.
RESUMABLE_CHANGES = frozenset({"output_dir", "resume", "overwrite", "overwrite_config", "progress", "log_every", "save_every",
                               "keep_last", "report_to"})
# Run directories this process has locked, kept open (and so locked) until the process exits.
_locks: dict[Path, Any] = {}


def prepare_run_dir(cfg: Any) -> Path:
    """Check that `cfg.output_dir` may be written, lock it, write the resolved config.

    Refused (a ConfigError, with nothing written) when the directory
    - is being trained into by another process (an fcntl lock; even with --overwrite);
    - holds a finished or started run and neither --resume nor --overwrite is given;
    - is resumed with settings that differ from its config.yaml, without --overwrite-config.
    With --overwrite, the old run's final/, checkpoints/ and metrics.jsonl are removed.
    """
    run_dir = Path(cfg.output_dir)
    if not is_main_process():
        return run_dir
    lock_run_dir(run_dir)
    try:
        check_run_dir(cfg, run_dir)
    except BaseException:
        release_run_dir(run_dir)
        raise
    if getattr(cfg, "overwrite", False) and not getattr(cfg, "resume", False):
        clear_previous_run(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def lock_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on `run_dir/.posttrain.lock` for the rest of this process."""
    key = run_dir.resolve()
    if key in _locks:  # this process already trains here (e.g. a resume in the same process)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError("output_dir", f"{run_dir}: another posttrain process (pid {holder}) is training into "
                                        "this directory; wait for it or choose another --output-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _locks[key] = handle


def release_run_dir(run_dir: Path) -> None:
    handle = _locks.pop(run_dir.resolve(), None)
    if handle is not None:
        handle.close()  # closing the file releases the lock


def run_state(run_dir: Path) -> str | None:
    """"finished" (final/ exists), "started" (checkpoints or metrics, no final/), or None (no run)."""
    if (run_dir / "final").is_dir():
        return "finished"
    checkpoints = run_dir / "checkpoints"
    if (run_dir / "metrics.jsonl").exists() or (checkpoints.is_dir() and any(checkpoints.glob("step-*"))):
        return "started"
    return None


def check_run_dir(cfg: Any, run_dir: Path) -> None:
    """Raise a ConfigError when starting `cfg` in `run_dir` would silently replace a run."""
    if getattr(cfg, "overwrite", None) is None:
        return  # not a training command's config (the caller manages the directory)
    state = run_state(run_dir)
    resume, overwrite = bool(getattr(cfg, "resume", False)), bool(cfg.overwrite)
    if resume:
        has_checkpoint = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*"))
        if state == "finished" and not has_checkpoint and not overwrite:
            raise ConfigError("resume", f"{run_dir} holds a finished run and no checkpoint to resume from; "
                                        "pass --overwrite to train it again from the start")
        differences = config_differences(run_dir / "config.yaml", cfg)
        if differences and not getattr(cfg, "overwrite_config", False):
            raise ConfigError("resume", f"{run_dir} was started with other settings: {'; '.join(differences)} "
                                        "(pass --overwrite-config to resume with the new ones, or change them back)")
        return
    if state is not None and not overwrite:
        what = "a finished run (final/)" if state == "finished" else "a started run (checkpoints or metrics.jsonl)"
        hint = "" if state == "finished" else "--resume to continue it, "
        raise ConfigError("output_dir", f"{run_dir} already holds {what}; pass {hint}--overwrite to replace it, "
                                        "or choose another --output-dir")


def config_differences(saved: Path, cfg: Any) -> list[str]:
    """`["learning_rate: 2e-05 -> 0.0001", ...]` between a run's config.yaml and `cfg` (settings
    in RESUMABLE_CHANGES, and ones the saved file does not have, are not differences)."""
    if not saved.is_file():
        return []
    try:
        before = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return [f"{saved} cannot be read"]
    now = to_mapping(cfg)
    return [f"{name}: {before[name]!r} -> {now[name]!r}" for name in now
            if name in before and name not in RESUMABLE_CHANGES and before[name] != now[name]]


def clear_previous_run(run_dir: Path) -> None:
    """--overwrite: remove what a new run would otherwise mix with (its model, checkpoints, metrics)."""
    for name in ("final", "checkpoints"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)


def load_trainable_model(cfg: ModelArgs, *, seed: int = 0, gradient_checkpointing: bool = False,
                         modules_to_save: list[str] | None = None, quiet: bool = False):
    """Load `cfg.model` and wrap it in the chosen PEFT method; returns the model in train mode."""
    from accelerate.utils import set_seed

    from ..models import load_model

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
        if os.environ.get(ALLOCATOR_SET):
            say(f"allocator: {os.environ[ALLOCATOR_SET]} (POSTTRAIN_ALLOCATOR=system runs with glibc malloc)")
    return model
