"""The one training core (train/engine.py `TrainingCore`) under an online recipe: checkpoints,
health checks and the RL exception for zero gradients, as the offline recipes have them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import rl_toy
from posttrain.errors import TrainingError
from posttrain.models import load_model
from posttrain.rl.grpo import GRPOConfig, train_grpo
from posttrain.train.metrics import read_metrics
from rl_toy import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
PER_STEP = 4 * 4  # prompts_per_step x num_samples: reward calls per step


def _config(tmp_path: Path, **overrides) -> GRPOConfig:
    values = dict(model="tiny-random", prompts=str(rl_toy.write_prompts(tmp_path)), output_dir=str(tmp_path / "run"),
                  num_samples=4, prompts_per_step=4, max_new_tokens=8, learning_rate=1e-2, max_steps=3,
                  micro_batch_size=16, progress=False, kl_coef=0.0)
    values.update(overrides)
    return GRPOConfig(**values)


def reward_by_step(values_of_step):
    """A reward whose value depends on the (1-based) step it is called in."""
    calls = {"n": 0}

    def reward(prompt: str, response: str, **extra) -> float:
        calls["n"] += 1
        return values_of_step(1 + (calls["n"] - 1) // PER_STEP, response)
    return reward


def test_online_checkpoints_hold_the_policy_and_are_marked_good(tmp_path):
    train_grpo(_config(tmp_path, max_steps=2, save_every=1), {"lowercase": rl_toy.lowercase})
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000001"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["good"] is True
    assert (checkpoint / "state").is_dir()
    load_model(str(checkpoint))  # the loadable policy, as final/ holds it


def test_a_zero_gradient_in_online_rl_is_not_a_warning(tmp_path, capsys):
    # Step 1 has rewards that differ (a gradient); later steps score every sample the same, so
    # every advantage is 0 and the gradient is exactly 0: ordinary in RL, no warning.
    reward = reward_by_step(lambda step, response: float(len(response) % 2) if step == 1 else 1.0)
    train_grpo(_config(tmp_path), {"varies_then_flat": reward})
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "grad_norm" in r]
    assert rows[0]["grad_norm"] > 0 and [r["grad_norm"] for r in rows[1:]] == [0.0, 0.0]
    assert "WARNING" not in capsys.readouterr().err


def test_a_nan_loss_in_online_rl_stops_before_the_update_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    import posttrain.rl.grpo as grpo

    real, calls = grpo.group_advantages, {"n": 0}

    def nan_at_step_3(samples, *args, **kwargs):
        stats = real(samples, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            samples[0].scalars["advantage"] = math.nan
        return stats
    monkeypatch.setattr(grpo, "group_advantages", nan_at_step_3)
    with pytest.raises(TrainingError, match=r"step 3: loss is nan; stopping before the update "
                                            r"\(last good checkpoint: .*step-00000002\)"):
        train_grpo(_config(tmp_path, save_every=1), {"lowercase": rl_toy.lowercase})
    assert not (tmp_path / "run" / "final").exists()


def test_the_online_progress_bar_shows_sampling_and_update_throughput(tmp_path, capsys):
    train_grpo(_config(tmp_path, max_steps=2, progress=True), {"lowercase": rl_toy.lowercase})
    err = capsys.readouterr().err
    assert "sampled tok/s=" in err and "update s=" in err and "reward=" in err
