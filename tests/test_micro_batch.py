"""Automatic micro-batching (train/micro_batch.py): the split takes the same optimizer step.

Unit checks of the rule, then whole runs of `sft`, `dpo` and `rm` on tiny-random, once with every
batch in one micro-batch (`--micro-batch-tokens 0`) and once split into micro-batches of one
example (`--micro-batch-tokens 1`): the same loss at every step and the same final weights.
(Full fine-tuning, no dropout, so both runs draw no random numbers in the step.)"""
from __future__ import annotations

import json
import random

import pytest
import torch

from posttrain.train.args import TrainArgs
from posttrain.train.engine import step_micro_batches
from posttrain.train.metrics import read_metrics
from posttrain.train.micro_batch import (
    activation_bytes_per_token,
    micro_batch_size,
    plan_micro_batches,
    token_budget,
)


def test_size_is_the_largest_divisor_that_fits():
    assert micro_batch_size(8, [100] * 10, 450) == 4
    assert micro_batch_size(8, [100] * 10, 250) == 2
    assert micro_batch_size(6, [100] * 10, 350) == 3
    assert micro_batch_size(4, [1000] * 10, 300) == 1  # one example over the budget still trains
    assert micro_batch_size(4, [100] * 10, 0) == 4  # 0: no split
    # The 95th percentile of the example sizes sets it, not the mean.
    assert micro_batch_size(4, [50] * 18 + [400, 400], 500) == 1


def test_the_plan_keeps_the_global_batch_and_explicit_accumulation():
    model = torch.nn.Linear(4, 4)
    model.config = type("C", (), {"num_hidden_layers": 2, "hidden_size": 8, "intermediate_size": 16})()
    args = TrainArgs(batch_size=8, grad_accum=3, micro_batch_tokens=200)
    plan = plan_micro_batches(args, model, list(range(20)), lambda e: 90)
    assert (plan.size, plan.grad_accum) == (2, 12)
    assert plan.size * plan.grad_accum == args.batch_size * args.grad_accum
    off = plan_micro_batches(TrainArgs(batch_size=8, micro_batch_tokens=0), model, [1], lambda e: 10_000)
    assert (off.size, off.grad_accum) == (8, 1) and "no split" in off.line
    applied = plan.apply(args)
    assert (applied.batch_size, applied.grad_accum, applied.learning_rate) == (2, 12, args.learning_rate)


def test_auto_budget_is_the_weights_worth_of_activations_on_the_cpu():
    model = torch.nn.Linear(1000, 1000)
    model.config = type("C", (), {"num_hidden_layers": 4, "hidden_size": 10, "intermediate_size": 20})()
    per_token = activation_bytes_per_token(model)
    assert per_token == 4 * (14 * 10 + 3 * 20) * 4
    assert token_budget(model) == int(sum(p.numel() * 4 for p in model.parameters()) / per_token)


@pytest.mark.parametrize("world", [1, 2])
def test_each_process_sees_the_same_examples_per_step(world):
    """Splitting a process's batch into micro-batches leaves the examples of every step and process alone."""
    whole, split = TrainArgs(batch_size=4, grad_accum=1, seed=3), TrainArgs(batch_size=1, grad_accum=4, seed=3)
    for step in range(5):
        a = step_micro_batches(40, whole, world, step, 40 // (4 * world))
        b = step_micro_batches(40, split, world, step, 40 // (4 * world))
        for rank in range(world):
            mine_a = sorted(i for ids in a[rank * 1:(rank + 1) * 1] for i in ids)
            mine_b = sorted(i for ids in b[rank * 4:(rank + 1) * 4] for i in ids)
            assert mine_a == mine_b


def final_weights(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((run / "final").glob("*.safetensors"))
    assert files
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def assert_same_runs(run_a, run_b, steps):
    rows_a = [r for r in read_metrics(run_a / "metrics.jsonl") if "loss" in r]
    rows_b = [r for r in read_metrics(run_b / "metrics.jsonl") if "loss" in r]
    assert len(rows_a) == len(rows_b) == steps
    for a, b in zip(rows_a, rows_b):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4, abs=1e-6)
    wa, wb = final_weights(run_a), final_weights(run_b)
    assert wa.keys() == wb.keys()
    moved = 0
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)
        moved += 1
    assert moved


def chat_file(tmp_path, n=12):
    rng = random.Random(0)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(["red", "blue", "green", "cat", "dog"]) for _ in range(rng.randint(2, 12)))
        rows.append({"messages": [{"role": "user", "content": f"question {i}: {words}"},
                                  {"role": "assistant", "content": words * rng.randint(1, 3)}]})
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


COMMON = dict(model="tiny-random", batch_size=4, max_steps=3, learning_rate=1e-3, lr_scheduler="constant",
              progress=False, max_length=64)


def test_sft_split_run_equals_one_micro_batch(tmp_path, capsys):
    from posttrain.train.sft import SFTConfig, train_sft

    data = str(chat_file(tmp_path))
    for budget, name in ((0, "whole"), (1, "split")):  # rows reach 232 tokens: all 12 kept, of mixed lengths
        train_sft(SFTConfig(**{**COMMON, "max_length": 256}, data=[data], output_dir=str(tmp_path / name),
                            micro_batch_tokens=budget, layout="padded"))
    out = capsys.readouterr().out
    assert "micro-batches: 1 examples each, 4 per step" in out
    assert "12 examples, longest 232 tokens; 0 truncated, 0 dropped" in out
    assert_same_runs(tmp_path / "whole", tmp_path / "split", 3)


@pytest.mark.parametrize("layout", ["padded", "shared_prompt"])
def test_dpo_split_run_equals_one_micro_batch(tmp_path, preference_file, layout):
    from posttrain.train.dpo import DPOConfig, train_dpo

    data = str(preference_file(12))
    for budget, name in ((0, "whole"), (1, "split")):
        train_dpo(DPOConfig(**COMMON, data=[data], output_dir=str(tmp_path / name), micro_batch_tokens=budget,
                            layout=layout, reference="copy"))
    assert_same_runs(tmp_path / "whole", tmp_path / "split", 3)


def test_rm_split_run_equals_one_micro_batch(tmp_path, preference_file):
    from posttrain.train.reward import RMConfig, train_reward_model

    data = str(preference_file(12))
    for budget, name in ((0, "whole"), (1, "split")):
        train_reward_model(RMConfig(**COMMON, data=[data], output_dir=str(tmp_path / name), micro_batch_tokens=budget,
                                    eval_fraction=0.0))
    assert_same_runs(tmp_path / "whole", tmp_path / "split", 3)


def test_trim_memory_trims_after_every_micro_batch_and_trains_the_same(tmp_path, monkeypatch):
    """`--trim-memory` gives freed pages back after each micro-batch's backward (the peak it saves
    is measured in docs/benchmarks.md, not here): one trim per micro-batch, the same run."""
    from posttrain.train import engine
    from posttrain.train.sft import SFTConfig, train_sft

    calls = []
    monkeypatch.setattr(engine, "trim_heap", lambda: calls.append(1))
    data = str(chat_file(tmp_path))
    for trim, name in ((False, "plain"), (True, "trimmed")):
        train_sft(SFTConfig(**{**COMMON, "max_length": 256}, data=[data], output_dir=str(tmp_path / name),
                            micro_batch_tokens=1, layout="padded", trim_memory=trim))
        assert len(calls) == (3 * 4 if trim else 0)  # 3 steps x 4 micro-batches of one example
    assert_same_runs(tmp_path / "plain", tmp_path / "trimmed", 3)
