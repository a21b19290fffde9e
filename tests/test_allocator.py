"""`posttrain` re-executes its model-heavy commands under jemalloc when the machine has it
(src/posttrain/allocator.py); `cli.main` never does."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from posttrain.allocator import JEMALLOC_PATHS, REEXECUTED, library_to_preload

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
HAVE_JEMALLOC = sys.platform == "linux" and any(os.path.exists(p) for p in JEMALLOC_PATHS)


def plan(argv, env=None, platform="linux", present=(LIB,)):
    return library_to_preload(argv, env or {}, platform=platform, exists=lambda path: path in present)


def test_heavy_commands_get_jemalloc_when_it_is_there():
    assert plan(["sft", "--data", "x.jsonl"]) == LIB
    assert plan(["grpo", "--task", "arithmetic"]) == LIB
    assert plan(["sft"], present=()) is None  # nothing installed: run as before


@pytest.mark.parametrize("argv", [[], ["--help"], ["sft", "--help"], ["dpo", "-h"], ["data", "check", "x"],
                                  ["serve"], ["report", "runs/x"]])
def test_help_and_light_commands_run_as_they_are(argv):
    assert plan(argv) is None


def test_the_user_and_the_loop_guard_decide_first():
    assert plan(["sft"], {"POSTTRAIN_ALLOCATOR": "system"}) is None
    assert plan(["sft"], {"LD_PRELOAD": "/opt/libtcmalloc.so"}) is None
    assert plan(["sft"], {REEXECUTED: LIB}) is None
    assert plan(["sft"], platform="darwin") is None
    assert plan(["sft"], {"POSTTRAIN_ALLOCATOR": "/opt/tc.so"}, present=("/opt/tc.so",)) == "/opt/tc.so"
    assert plan(["sft"], {"POSTTRAIN_ALLOCATOR": "/opt/missing.so"}) is None


def _posttrain(args, tmp_path, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", REEXECUTED)}
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True,
                          timeout=600, env=environment, cwd=tmp_path)


@pytest.mark.skipif(not HAVE_JEMALLOC, reason="no libjemalloc on this machine (apt install libjemalloc2)")
def test_a_training_command_runs_under_jemalloc_and_keeps_its_exit_status(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "completion": f"ok {i}"}) + "\n" for i in range(4)))
    args = ["sft", "--data", str(data), "--model", "tiny-random", "--max-steps", "1", "--batch-size", "2",
            "--no-progress", "--output-dir", str(tmp_path / "run")]
    done = _posttrain(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "allocator: " in done.stdout and "jemalloc" in done.stdout  # logged with the run's set-up lines
    assert (tmp_path / "run" / "final").is_dir()
    plain = _posttrain([*args[:-1], str(tmp_path / "plain")], tmp_path, POSTTRAIN_ALLOCATOR="system")
    assert plain.returncode == 0 and "allocator:" not in plain.stdout
    missing = _posttrain(["sft", "--data", str(tmp_path / "nope.jsonl"), "--model", "tiny-random"], tmp_path)
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1  # still one line


def test_a_wrong_allocator_path_is_one_line_for_model_commands_only(capsys, monkeypatch):
    from posttrain.allocator import reexecute_with_allocator

    monkeypatch.setenv("POSTTRAIN_ALLOCATOR", "/nowhere/libmalloc.so")
    monkeypatch.delenv(REEXECUTED, raising=False)
    reexecute_with_allocator(["sft", "--data", "x"])  # nothing to preload: returns, no exec
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/nowhere/libmalloc.so" in err and "system allocator" in err
    reexecute_with_allocator(["--help"])
    reexecute_with_allocator(["data", "check", "x"])
    assert capsys.readouterr().err == ""
