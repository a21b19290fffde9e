"""Atomic checkpoints that resume exactly.

A checkpoint is `output_dir/checkpoints/step-00000012/`, holding the model as
`final/` would hold it (a Hugging Face model or PEFT adapter directory, with the
tokenizer: `from_pretrained`, `posttrain generate/eval/export` load it), Accelerate's
state in `state/` (model, optimizer, schedule, every process's RNG) and
`trainer_state.json` (step, epoch, early-stopping state). Checkpoints written before
`state/` existed (Accelerate's files beside trainer_state.json) still resume. It is
written to a hidden temporary folder
and renamed into place, so a kill at any moment leaves either the previous
checkpoint set or the new one, never a half-written `step-*` folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import TrainingError, storage_errors

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
STATE_DIR = "state"  # Accelerate's files; the step folder itself holds the loadable model


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), root / name) for name in os.listdir(root) if (m := STEP_DIR.match(name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def is_good(path: Path) -> bool:
    """Whether a checkpoint was checked good when saved: its weights and the loss that produced
    them finite (train/health.py). Checkpoints from before that check, or unreadable ones, are not."""
    try:
        return json.loads((path / STATE_FILE).read_text()).get("good") is True
    except (OSError, ValueError):
        return False


def last_good_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that `is_good`, or None."""
    return next((path for _, path in reversed(list_checkpoints(output_dir)) if is_good(path)), None)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int,
                    save_model: Callable[[Path], None] | None = None, protect: Path | None = None) -> Path:
    """Save on every process (sharded states need all ranks); rename and prune on the main one.

    `save_model(directory)` (called on every process) writes the loadable model into the step
    folder; `protect` is a checkpoint pruning must keep (the best one, for --keep-best)."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    # A full disk or a read-only directory: one line naming the path, the temporary folder
    # removed, the previous checkpoints untouched (nothing is pruned before the rename).
    with storage_errors("checkpoint", final), removed_on_error(tmp, accelerator.is_main_process):
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / STATE_DIR))
        if save_model is not None:
            save_model(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
            if final.exists():  # a rerun of the same step: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            prune_checkpoints(output_dir, keep_last, protect)
    accelerator.wait_for_everyone()
    return final


@contextlib.contextmanager
def removed_on_error(folder: Path, owner: bool = True) -> Iterator[None]:
    """Remove a half-written temporary `folder` when the block fails (on the process that owns it)."""
    try:
        yield
    except BaseException:
        if owner:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int, protect: Path | None = None) -> None:
    checkpoints = list_checkpoints(output_dir)
    newest_good = last_good_checkpoint(output_dir)  # kept even when newer (unchecked) ones push it out
    for _, path in checkpoints[: max(len(checkpoints) - max(keep_last, 1), 0)]:
        if path != newest_good and path != protect:
            shutil.rmtree(path, ignore_errors=True)
    for leftover in checkpoint_root(output_dir).glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore model/optimizer/schedule/RNG; return the trainer state saved with them."""
    state_file = path / STATE_FILE
    if not state_file.exists():
        raise TrainingError(f"checkpoint {path} is incomplete: {STATE_FILE} is missing")
    accelerator.load_state(str(path / STATE_DIR if (path / STATE_DIR).is_dir() else path))
    return json.loads(state_file.read_text())


def checkpoint_model_files(path: Path) -> list[Path]:
    """The loadable model's files in a checkpoint folder (all but the training state)."""
    return [item for item in path.iterdir() if item.name not in (STATE_DIR, STATE_FILE)]
