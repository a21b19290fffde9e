"""The shared training loop on a toy model: accumulation equality, exact resume, NaN, early stop, SIGINT."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from posttrain.errors import TrainingError
from posttrain.train.args import TrainArgs
from posttrain.train.checkpoint import list_checkpoints
from posttrain.train.engine import LossOutput, TrainTask, epoch_order, run_training, step_micro_batches


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.dropout = torch.nn.Dropout(0.2)  # exercises RNG state on resume

    def forward(self, x):
        return self.layer(self.dropout(x)).squeeze(-1)


def toy_examples(n=32):
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(n, 4, generator=g)
    ys = xs @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    # `weight` plays the role of a label-token count: examples count unequally in the mean.
    return [{"x": xs[i].tolist(), "y": float(ys[i]), "weight": 1 + i % 3} for i in range(n)]


def collate(rows):
    return {"x": torch.tensor([r["x"] for r in rows]), "y": torch.tensor([r["y"] for r in rows]),
            "w": torch.tensor([float(r["weight"]) for r in rows])}


def mse_sum(model, batch):
    err = (model(batch["x"]) - batch["y"]) ** 2
    return LossOutput(loss_sum=(err * batch["w"]).sum(), metric_sums={"abs_err": (err.sqrt() * batch["w"]).sum()})


def save_weights(model, directory: Path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))


def make_task(model=None, loss=mse_sum, examples=None, evaluate=None):
    return TrainTask(model=model or Toy(), train_examples=examples or toy_examples(), collate=collate,
                     compute_loss=loss, item_count=lambda r: r["weight"], token_count=lambda r: 4,
                     evaluate=evaluate, save_final=save_weights, name="toy")


def args_for(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path), learning_rate=0.05, batch_size=4, max_steps=12, progress=False,
                lr_scheduler="constant", seed=3)
    return TrainArgs(**{**base, **overrides})


def final_weights(result):
    from safetensors.torch import load_file
    return load_file(str(result.final_dir / "model.safetensors"))


def test_loss_falls_and_metrics_are_logged(tmp_path):
    result = run_training(make_task(), args_for(tmp_path, max_steps=30))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert {"lr", "grad_norm", "tokens_per_s", "abs_err", "epoch"} <= set(rows[0])
    assert result.steps == 30 and (result.final_dir / "model.safetensors").exists()


def test_micro_batch_assignment_matches_across_world_sizes():
    one = TrainArgs(batch_size=2, grad_accum=2)
    two = TrainArgs(batch_size=2, grad_accum=1)
    # One process accumulating two micro-batches sees what two processes see together.
    assert step_micro_batches(16, one, 1, 3, 4) == step_micro_batches(16, two, 2, 3, 4)
    assert sorted(epoch_order(10, 0, 0)) == list(range(10)) and epoch_order(10, 0, 0) != epoch_order(10, 0, 1)


def test_accumulation_gives_the_same_weights_as_one_big_batch(tmp_path):
    model_no_dropout = lambda: _no_dropout(Toy())
    big = run_training(make_task(model_no_dropout()), args_for(tmp_path / "a", batch_size=8, grad_accum=1))
    split = run_training(make_task(model_no_dropout()), args_for(tmp_path / "b", batch_size=2, grad_accum=4))
    for key, value in final_weights(big).items():
        torch.testing.assert_close(final_weights(split)[key], value, rtol=1e-5, atol=1e-6)


def _no_dropout(model):
    model.dropout.p = 0.0
    return model


class Crash(Exception):
    pass


def test_resume_after_crash_gives_identical_weights(tmp_path):
    reference = run_training(make_task(), args_for(tmp_path / "ref", save_every=3))

    calls = {"n": 0}

    def crashing(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # during step 8, after the step-6 checkpoint
            raise Crash()
        return mse_sum(model, batch)

    with pytest.raises(Crash):
        run_training(make_task(loss=crashing), args_for(tmp_path / "run", save_every=3))
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [3, 6]
    resumed = run_training(make_task(), args_for(tmp_path / "run", save_every=3, resume=True))
    for key, value in final_weights(reference).items():
        assert torch.equal(final_weights(resumed)[key], value), key
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # rows after the checkpoint were replaced, not duplicated


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    calls = {"n": 0}

    def nan_at_step_5(model, batch):
        calls["n"] += 1
        out = mse_sum(model, batch)
        return LossOutput(out.loss_sum * float("nan")) if calls["n"] == 5 else out

    with pytest.raises(TrainingError, match=r"step 5: loss is nan.*last good checkpoint: .*step-00000004"):
        run_training(make_task(loss=nan_at_step_5), args_for(tmp_path, save_every=2))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]


def test_early_stopping_after_patience(tmp_path):
    scores = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    result = run_training(make_task(evaluate=lambda m: {"loss": next(scores)}),
                          args_for(tmp_path, eval_every=1, early_stopping_patience=2))
    assert result.stopped_early and result.steps == 4


def test_checkpoints_are_pruned_to_keep_last(tmp_path):
    run_training(make_task(), args_for(tmp_path, save_every=2, keep_last=2))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [8, 10]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_global_batch_larger_than_data_trains_on_all_of_it_with_a_warning(tmp_path, capsys):
    # As TRL does: one warning line, then every step uses the whole (small) training set.
    result = run_training(make_task(examples=toy_examples(3)), args_for(tmp_path, max_steps=2))
    assert result.steps == 2
    assert capsys.readouterr().err.splitlines() == [
        "WARNING: the training set (3 examples) is smaller than one global batch (4 x 1 accumulation x 1 "
        "processes = 4); each step uses 3 of them (batch size 3 x 1 accumulation)"]


def test_bf16_autocast_runs_on_the_cpu_and_fp16_is_refused(tmp_path):
    from posttrain.errors import ConfigError
    from posttrain.train.accelerator import make_accelerator

    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    accelerator = make_accelerator(args_for(tmp_path, mixed_precision="bf16"))
    layer = torch.nn.Linear(8, 8)
    with accelerator.autocast():
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16
    assert layer(torch.randn(2, 8)).dtype == torch.float32  # only inside the step's autocast
    with accelerator.autocast():  # `auto` keeps the CPU in float32
        pass
    plain = make_accelerator(args_for(tmp_path, mixed_precision="auto"))
    with plain.autocast():
        assert layer(torch.randn(2, 8)).dtype == torch.float32
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        make_accelerator(args_for(tmp_path, mixed_precision="fp16"))
