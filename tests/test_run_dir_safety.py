"""Run directories are safe (train/setup.py `prepare_run_dir`):

- a directory holding a finished or started run is not silently replaced: refused without
  --overwrite (nothing written), replaced with it;
- two concurrent runs into one directory are prevented by a lock;
- --resume with changed settings lists the differences and refuses without --overwrite-config.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from posttrain.cli import main


def sft_args(tmp_path, out, *extra):
    data = tmp_path / "chat.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(8)))
    return ["sft", "--model", "tiny-random", "--data", str(data), "--output-dir", str(out), "--batch-size", "4",
            "--max-steps", "2", "--no-progress", *extra]


def snapshot(directory):
    return {p.relative_to(directory).as_posix(): p.stat().st_mtime_ns for p in sorted(directory.rglob("*"))}


def test_a_finished_run_is_not_replaced_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(sft_args(tmp_path, out)) == 0
    before = snapshot(out)
    assert main(sft_args(tmp_path, out, "--learning-rate", "1e-3")) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"posttrain sft: error: config field 'output_dir': {out} already holds a finished run "
                           "(final/); pass --overwrite to replace it, or choose another --output-dir")
    assert snapshot(out) == before  # nothing written
    assert main(sft_args(tmp_path, out, "--learning-rate", "1e-3", "--overwrite")) == 0
    assert "learning_rate: 0.001" in (out / "config.yaml").read_text()


def test_a_started_run_suggests_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    assert main(sft_args(tmp_path, out)) == 2
    assert "already holds a started run (checkpoints or metrics.jsonl); pass --resume to continue it, --overwrite" \
        in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'


def test_resume_with_changed_settings_lists_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(sft_args(tmp_path, out, "--save-every", "1", "--max-steps", "3")) == 0
    capsys.readouterr()
    assert main(sft_args(tmp_path, out, "--max-steps", "3", "--resume", "--learning-rate", "1e-3", "--seed", "7")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"posttrain sft: error: config field 'resume': {out} was started with other settings: "
                   "seed: 0 -> 7; learning_rate: 2e-05 -> 0.001 (pass --overwrite-config to resume with the new ones, "
                   "or change them back)")
    # The same settings (report/checkpoint options may change) resume; so do new ones with --overwrite-config.
    assert main(sft_args(tmp_path, out, "--max-steps", "3", "--resume", "--save-every", "2")) == 0
    assert main(sft_args(tmp_path, out, "--max-steps", "3", "--resume", "--seed", "7", "--overwrite-config")) == 0


def test_a_second_process_cannot_train_into_a_locked_directory(tmp_path):
    out = tmp_path / "run"
    # Another process holds the lock (as a running training would) while this one tries to start.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from posttrain.train.setup import lock_run_dir
        lock_run_dir(Path({str(out)!r}))
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = subprocess.run([sys.executable, "-m", "posttrain", *sft_args(tmp_path, out)], capture_output=True,
                                text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2
    assert result.stderr.strip() == (f"posttrain sft: error: config field 'output_dir': {out}: another posttrain "
                                     f"process (pid {holder.pid}) is training into this directory; wait for it or "
                                     "choose another --output-dir")
    assert sorted(p.name for p in out.iterdir()) == [".posttrain.lock"]
