"""`posttrain dpo` end to end on tiny-random: every loss runs, a mix runs, and training on a
separable set raises the reward accuracy and margin."""
from __future__ import annotations

import json
import math

import pytest

from posttrain.losses import PREFERENCE_LOSSES
from posttrain.train.dpo import DPOConfig, loss_components, needs_reference, train_dpo
from posttrain.train.metrics import read_metrics

METRICS = {"loss", "grad_norm", "lr", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"}


def config(tmp_path, data, **overrides) -> DPOConfig:
    base = dict(model="tiny-random", data=str(data), output_dir=str(tmp_path / "run"), batch_size=4, max_steps=2,
                learning_rate=1e-3, lr_scheduler="constant", progress=False, max_length=64)
    return DPOConfig(**{**base, **overrides})


@pytest.mark.parametrize("loss", list(PREFERENCE_LOSSES))
def test_every_loss_trains_a_few_steps(tmp_path, preference_file, loss):
    result = train_dpo(config(tmp_path, preference_file(8), loss=[loss]))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and result.steps == 2
    assert METRICS <= set(rows[-1]) and all(math.isfinite(rows[-1][k]) for k in METRICS)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    # Reference-free losses never build a reference; the others use the cache (auto, local file).
    assert report["reference"]["strategy"] == ("cached" if needs_reference([loss]) else "none (reference-free loss)")


def test_weighted_mix_of_losses(tmp_path, preference_file):
    cfg = config(tmp_path, preference_file(8), loss=["sigmoid", "hinge"], loss_weights=[0.7, 0.3], beta=0.2)
    assert loss_components(cfg) == ({"sigmoid": 0.7, "hinge": 0.3}, {"sigmoid": {"beta": 0.2}, "hinge": {"beta": 0.2}})
    train_dpo(cfg)
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    # At step 1 the policy is the reference: h = 0, so the loss is 0.7 log 2 + 0.3 * max(0, 1 - 0).
    assert first["loss"] == pytest.approx(0.7 * math.log(2) + 0.3, abs=1e-6)


def test_loss_options_reach_their_losses(tmp_path, preference_file):
    cfg = config(tmp_path, preference_file(8), loss=["simpo", "orpo", "cdpo"], simpo_gamma=0.3, orpo_lambda=0.2,
                 label_smoothing=0.05)
    assert loss_components(cfg)[1] == {"cdpo": {"label_smoothing": 0.05}, "simpo": {"gamma": 0.3}, "orpo": {"lam": 0.2}}
    assert not needs_reference(["simpo", "orpo"]) and needs_reference(["simpo", "sigmoid"])


def test_dpo_learns_a_separable_preference(tmp_path, preference_file):
    """Chosen starts with "YES ", rejected with "NO! ", the rest is shared: the held-out pairs (new
    prompts, new letters) must end up with chosen rewarded above rejected."""
    data = preference_file(48, seed=1)
    held_out = preference_file(16, seed=2, name="held.jsonl")
    cfg = config(tmp_path, data, eval_data=str(held_out), max_steps=24, learning_rate=3e-4, beta=0.1, eval_every=12,
                 prefix_sharing=True)
    result = train_dpo(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/rewards/accuracies" in r]
    # Step 1: policy == reference, rewards 0, no pair counted as won.
    assert train_rows[0]["rewards/margins"] == 0 and train_rows[0]["rewards/accuracies"] == 0
    assert sum(r["rewards/margins"] for r in train_rows[-4:]) / 4 > 0.5
    assert sum(r["rewards/accuracies"] for r in train_rows[-4:]) / 4 >= 0.9
    assert train_rows[-1]["loss"] < 0.6 * math.log(2)  # log 2 is the loss at the start
    assert evals[-1]["eval/rewards/accuracies"] >= 0.9
    assert evals[-1]["eval/rewards/margins"] > evals[0]["eval/rewards/margins"] > 0
    assert result.eval_metrics["eval/rewards/accuracies"] == evals[-1]["eval/rewards/accuracies"]
