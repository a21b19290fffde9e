"""Diverging runs stop at the step that went wrong and name a checkpoint that is really good (issue 16).

- `--learning-rate 1e30` used to stop at a NaN one step later, naming a "last good checkpoint"
  that already held weights of 1e30;
- `--learning-rate 1e6` used to wreck the model silently (grad_norm 0.0 from step 2, exit 0).
"""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

import posttrain.train.engine as engine
from posttrain.cli import main as cli_main
from posttrain.train.checkpoint import STATE_FILE, last_good_checkpoint, list_checkpoints, prune_checkpoints
from posttrain.train.health import StepHealth, check_step_health, weights_problem

# ---------------------------------------------------------------- the pure checks


def test_non_finite_loss_or_gradient_stops_the_step():
    assert check_step_health(math.nan, 1.0, StepHealth()).stop == "loss is nan"
    assert check_step_health(1.0, math.inf, StepHealth()).stop == "gradient norm is inf"


def test_a_zero_gradient_is_suspicious_only_after_nonzero_ones():
    memory = StepHealth()
    first = check_step_health(2.0, 0.0, memory)  # e.g. a first batch with nothing to learn
    assert (first.stop, first.warning, first.check_weights) == (None, None, False)
    assert check_step_health(2.0, 3.0, memory).warning is None
    collapsed = check_step_health(2.0, 0.0, memory)
    assert collapsed.stop is None and collapsed.check_weights
    assert collapsed.warning.startswith("the gradient norm is exactly 0 after nonzero steps")

def test_a_zero_gradient_in_online_rl_checks_the_weights_without_a_warning():
    memory = StepHealth()
    assert check_step_health(2.0, 3.0, memory, zero_grad_expected=True).warning is None
    quiet = check_step_health(0.0, 0.0, memory, zero_grad_expected=True)  # every advantage 0
    assert (quiet.stop, quiet.warning, quiet.check_weights) == (None, None, True)
    assert check_step_health(math.nan, 0.0, memory, zero_grad_expected=True).stop == "loss is nan"



def test_a_gradient_spike_is_a_warning():
    memory = StepHealth()
    for norm in (2.0, 3.0, 2.5):
        assert check_step_health(1.0, norm, memory).warning is None
    spike = check_step_health(1.0, 5e4, memory)
    assert spike.stop is None and spike.warning.startswith("gradient norm spiked to 5e+04")


def test_weights_problem_names_the_parameter():
    small = torch.nn.Parameter(torch.tensor([0.5, -2.0]))
    assert weights_problem([("a", small)]) is None
    huge = torch.nn.Parameter(torch.tensor([1.0, -1e30]))
    assert weights_problem([("a", small), ("b", huge)]) == "weights exploded: max |w| = 1e+30 in 'b' (limit 10000)"
    broken = torch.nn.Parameter(torch.tensor([1.0, math.nan]))
    assert weights_problem([("a", small), ("c", broken)]) == "weight 'c' holds non-finite values"


def test_pruning_keeps_the_newest_good_checkpoint(tmp_path):
    for step, good in [(1, True), (2, True), (3, False), (4, False)]:
        folder = tmp_path / "checkpoints" / f"step-{step:08d}"
        folder.mkdir(parents=True)
        (folder / STATE_FILE).write_text(json.dumps({"step": step, "good": good}))
    prune_checkpoints(tmp_path, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3, 4]
    assert last_good_checkpoint(tmp_path).name == "step-00000002"


# ---------------------------------------------------------------- `posttrain sft` on tiny-random


@pytest.fixture(scope="module")
def sums(tmp_path_factory):
    path = tmp_path_factory.mktemp("divergence") / "sums.jsonl"
    rng = random.Random(0)
    rows = []
    for _ in range(32):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"messages": [{"role": "user", "content": f"{a}+{b}"}, {"role": "assistant", "content": str(a + b)}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sft(data, run, *flags):
    return cli_main(["sft", "--model", "tiny-random", "--data", str(data), "--output-dir", str(run), "--batch-size", "4",
                     "--max-steps", "6", "--no-progress", *flags])


# A warmup of 3 steps makes step 1's learning rate 0: the weights stay sound, the step-1 checkpoint
# is good, and step 2 (learning rate 1e30 / 3) blows the weights up.
HUGE_AFTER_ONE_STEP = ["--learning-rate", "1e30", "--warmup-steps", "3", "--lr-scheduler", "constant", "--save-every", "1"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_lr_1e30_stops_right_after_the_update_and_names_a_good_checkpoint(sums, tmp_path, capsys):
    run = tmp_path / "run"
    assert sft(sums, run, *HUGE_AFTER_ONE_STEP) == 2
    err = error_line(capsys)
    assert err.startswith("posttrain sft: error: step 2: weights exploded: max |w| = ")
    assert err.endswith(f"after the update; stopping (last good checkpoint: {run}/checkpoints/step-00000001)\n")
    assert [s for s, _ in list_checkpoints(run)] == [1]
    state = json.loads((run / "checkpoints" / "step-00000001" / STATE_FILE).read_text())
    assert state["good"] is True and math.isfinite(state["loss"])
    assert not (run / "final").exists()


def test_lr_1e30_with_only_save_time_checks_writes_no_bad_checkpoint(sums, tmp_path, capsys, monkeypatch):
    """A full model too large to check after every step is still checked before every save."""
    monkeypatch.setattr(engine, "PER_STEP_WEIGHT_CHECK_MAX_VALUES", 0)
    run = tmp_path / "run"
    assert sft(sums, run, *HUGE_AFTER_ONE_STEP) == 2
    err = error_line(capsys)
    assert err.startswith("posttrain sft: error: step 2: weights exploded: max |w| = ")
    assert err.endswith(f"before checkpointing; stopping (last good checkpoint: {run}/checkpoints/step-00000001)\n")
    assert [s for s, _ in list_checkpoints(run)] == [1]


def test_lr_1e6_no_longer_exits_0_with_a_wrecked_model(sums, tmp_path, capsys):
    run = tmp_path / "run"
    assert sft(sums, run, "--learning-rate", "1e6") == 2
    err = error_line(capsys)
    assert err.startswith("posttrain sft: error: step 1: weights exploded: max |w| = 1e+06 in ")
    assert err.endswith("after the update; stopping (no good checkpoint was written yet)\n")
    assert not (run / "final").exists()


def test_lr_1e6_is_caught_by_the_collapsed_gradient_when_weights_are_not_checked_each_step(
        sums, tmp_path, capsys, monkeypatch):
    """Saturated weights give a gradient of exactly 0 from step 2 (what the issue saw): that
    triggers a weight check even when per-step checks are off."""
    monkeypatch.setattr(engine, "PER_STEP_WEIGHT_CHECK_MAX_VALUES", 0)
    run = tmp_path / "run"
    assert sft(sums, run, "--learning-rate", "1e6") == 2
    err = error_line(capsys)
    assert err.startswith("posttrain sft: error: step 2: weights exploded: max |w| = 1e+06 in ")
    assert err.endswith("(seen when the gradient norm collapsed to 0); stopping (no good checkpoint was written yet)\n")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1] and rows[0]["grad_norm"] > 0


def test_a_healthy_run_marks_its_checkpoints_good(sums, tmp_path):
    run = tmp_path / "run"
    assert sft(sums, run, "--learning-rate", "1e-3", "--save-every", "2") == 0
    states = [json.loads((path / STATE_FILE).read_text()) for _, path in list_checkpoints(run)]
    assert [(s["step"], s["good"]) for s in states] == [(2, True), (4, True)]
