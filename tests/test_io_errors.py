"""A full disk or a read-only run directory: one line naming the path and the cause, exit 2, the
temporary checkpoint removed and the previous one intact (issue 16).

Before: a 29-40 line traceback (`inline_container.cc ... unexpected pos`, `SafetensorError ... No
space left on device`) and a `.tmp-step-*` folder left behind.

The real-disk tests mount a small tmpfs (root can, in CI too) and skip when mounting is not allowed.
They fill the disk at a chosen moment with a filler file, so they do not depend on checkpoint sizes.
Root ignores file permissions, so "read-only" is a read-only remount, not chmod.
"""
from __future__ import annotations

import errno
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import torch

import posttrain.train.engine as engine
from posttrain.cli import main as cli_main
from posttrain.errors import StorageError, storage_cause
from posttrain.models import saving
from posttrain.train.checkpoint import list_checkpoints

# ---------------------------------------------------------------- recognising the writers' errors


def test_each_writers_way_of_saying_the_disk_is_full(tmp_path):
    assert storage_cause(OSError(errno.ENOSPC, "No space left on device"), tmp_path) == "No space left on device"
    assert storage_cause(OSError(errno.EROFS, "Read-only file system"), tmp_path) == "Read-only file system"
    # safetensors (Rust) names the OS error code in its message
    rust = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert storage_cause(rust, tmp_path) == "No space left on device"
    # torch's zip writer gives no errno; on a disk with space left it is "a failed write", not "full"
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 469568 vs 469460")
    assert storage_cause(torch_error, tmp_path) == (
        "the write failed ([enforce fail at inline_container.cc:672] . unexpected pos 469568 vs 469460)")
    # an error raised while handling a disk error is traced back to it
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("basic_ios::clear: iostream error")
    except RuntimeError as chained:
        assert storage_cause(chained, tmp_path) == "Disk quota exceeded"


def test_other_errors_are_not_storage_errors(tmp_path):
    assert storage_cause(ValueError("bad value"), tmp_path) is None
    assert storage_cause(OSError(errno.ENOENT, "No such file or directory"), tmp_path) is None
    assert storage_cause(RuntimeError("CUDA out of memory"), tmp_path) is None


def test_save_pretrained_atomic_on_a_full_disk_keeps_the_old_model(tmp_path, monkeypatch):
    """Exports and merged models: simulated ENOSPC at the second file written."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "model.safetensors").write_text("the previous model")

    def write_then_fail(model, directory, state_dict=None):
        (Path(directory) / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saving, "save_model_files", write_then_fail)
    with pytest.raises(StorageError) as caught:
        saving.save_pretrained_atomic(object(), None, target)
    assert str(caught.value) == f"cannot write model directory {target}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
    assert (target / "model.safetensors").read_text() == "the previous model"


# ---------------------------------------------------------------- a real small disk


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs at tmp_path/disk, unmounted afterwards; skipped where mounting is not allowed."""
    point = tmp_path / "disk"
    point.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(disk: Path) -> None:
    """Write zeros until the disk is full."""
    with open(disk / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    (disk / "filler").stat()


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sums(tmp_path_factory):
    path = tmp_path_factory.mktemp("io") / "sums.jsonl"
    rows = [{"prompt": f"{a}+1=", "completion": str(a + 1)} for a in range(16)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sft(data, run, *flags):
    return cli_main(["sft", "--model", "tiny-random", "--data", str(data), "--output-dir", str(run), "--batch-size", "4",
                     "--max-steps", "4", "--learning-rate", "1e-3", "--no-progress", *flags])


def call_before(monkeypatch, name: str, nth: int, action) -> None:
    """Run `action()` just before the `nth` call of engine.`name`."""
    real, calls = getattr(engine, name), {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            action()
        return real(*args, **kwargs)
    monkeypatch.setattr(engine, name, wrapped)


def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(small_disk, sums, monkeypatch, capsys):
    run = small_disk / "run"
    before = {}

    def remember_and_fill():
        before.update(tree_digest(run / "checkpoints"))
        fill(small_disk)

    call_before(monkeypatch, "save_checkpoint", 2, remember_and_fill)
    assert sft(sums, run, "--save-every", "1") == 2
    err = capsys.readouterr().err
    assert err == f"posttrain sft: error: cannot write checkpoint {run}/checkpoints/step-00000002: No space left on device\n"
    assert [s for s, _ in list_checkpoints(run)] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]  # the temporary one is gone
    assert before and tree_digest(run / "checkpoints") == before  # byte for byte as it was


def test_full_disk_at_the_final_save_is_one_line_and_leaves_no_temporary_folder(small_disk, sums, monkeypatch, capsys):
    run = small_disk / "run"
    call_before(monkeypatch, "save_final_atomically", 1, lambda: fill(small_disk))
    assert sft(sums, run) == 2
    assert capsys.readouterr().err == f"posttrain sft: error: cannot write the final model {run}/final: No space left on device\n"
    assert not (run / "final").exists() and not (run / ".tmp-final").exists()


def test_checkpoints_directory_turned_read_only_before_a_checkpoint(small_disk, sums, monkeypatch, capsys):
    run = small_disk / "run"
    folder = str(run / "checkpoints")

    def read_only():  # a read-only bind mount of the folder over itself (the run holds files open: no remount)
        assert _mount("--bind", folder, folder) and _mount("-o", "remount,bind,ro", folder)

    call_before(monkeypatch, "save_checkpoint", 2, read_only)
    try:
        assert sft(sums, run, "--save-every", "1") == 2
    finally:
        subprocess.run(["umount", "-l", folder], capture_output=True)
    err = capsys.readouterr().err
    assert err == f"posttrain sft: error: cannot write checkpoint {run}/checkpoints/step-00000002: Read-only file system\n"
    assert [s for s, _ in list_checkpoints(run)] == [1]


def test_read_only_output_directory_at_the_start(small_disk, sums, capsys):
    assert _mount("-o", "remount,ro", str(small_disk))
    code = sft(sums, small_disk / "run")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.endswith("Read-only file system\n"), err
    assert str(small_disk / "run") in err
    assert list(small_disk.iterdir()) == []


def test_a_model_saved_before_the_full_disk_still_loads(small_disk, sums, monkeypatch, capsys):
    """The previous checkpoint is not only unchanged on disk but resumable."""
    run = small_disk / "run"
    call_before(monkeypatch, "save_checkpoint", 3, lambda: fill(small_disk))
    assert sft(sums, run, "--save-every", "1") == 2
    capsys.readouterr()
    (small_disk / "filler").unlink()
    monkeypatch.undo()
    assert sft(sums, run, "--save-every", "1", "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    assert (run / "final").is_dir() and torch.isfinite(torch.tensor(
        [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()])).all()
