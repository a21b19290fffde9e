"""Online RL on two CPU processes (torchrun, gloo) = one process answering the same prompts.

Each process answers its own slice of a step's prompts (`--prompts-per-step 2` each) and one
process answers all of them (`--prompts-per-step 4`); every sample is drawn from a seed of its
own (run seed, step, prompt, sample index), so both runs sample the same responses, and the
loss is divided by the global token count, so both take the same updates. Final weights
(policy, and PPO's value model) must agree to float tolerance, logged metrics (rewards, KL,
losses, greedy evaluation on an odd number of eval prompts, split unevenly) to 1e-5.

The micro-batch size is a multiple of what a prompt contributes (n samples), so both runs put
the same samples in each micro-batch: with a different padding width float noise of 1e-7 in
near-zero gradients is blown up by Adam's first steps (~lr * sign(g)) and can flip a sampled
token a step later. lr 1e-3 keeps that noise far below a token flip.

FSDP (default suite): grpo with a sharded checkpoint and a resume from it, and ppo (policy +
separate value model in one FSDP module). DDP (-m slow): grpo, rloo, ppo.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import rl_toy
from distributed_worker import copy_step, final_weights, launch
from posttrain.cli import main as cli_main

TOY = str(Path(rl_toy.__file__).resolve())
SAMPLES = {"grpo": 4, "rloo": 4, "ppo": 2}  # n: samples per prompt
CHECKED = ("reward", "kl", "loss", "entropy", "response_length", "reward_std", "value_loss", "policy_loss",
           "eval/reward", "eval/response_length")


def write_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rl_toy.write_prompts(folder, 16)
    (folder / "eval").mkdir(exist_ok=True)
    rl_toy.write_prompts(folder / "eval", 3)  # odd: process 0 evaluates 2 prompts, process 1 one
    return folder


def command(recipe: str, inputs: Path, out: Path, processes: int, extra=()) -> list[str]:
    n = SAMPLES[recipe]
    argv = [recipe, "--model", "tiny-random", "--prompts", str(inputs / "prompts.jsonl"),
            "--eval-prompts", str(inputs / "eval" / "prompts.jsonl"), "--reward", f"{TOY}:lowercase",
            "--n", str(n), "--prompts-per-step", str(4 // processes), "--micro-batch-size", str(n),
            "--max-new-tokens", "8", "--learning-rate", "1e-3", "--max-steps", "2", "--seed", "1",
            "--no-progress", "--output-dir", str(out / recipe), *extra]
    if recipe == "ppo":
        argv += ["--ppo-epochs", "2"]
    return argv


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(one: Path, two: Path) -> None:
    a, b = final_weights(one), final_weights(two)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=lambda m: f"{two.name} {name}: {m}")
    rows_a, rows_b = metrics(one), metrics(two)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for x, y in zip(rows_a, rows_b):
        for key in CHECKED:
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-5), (two.name, x["step"], key)
    assert [r["response"] for r in read_rollouts(one)] == [r["response"] for r in read_rollouts(two)]


def read_rollouts(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: (r["step"], r["id"], r["sample"]))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """grpo, rloo and ppo in this process, answering 4 prompts per step."""
    root = tmp_path_factory.mktemp("rl-single")
    inputs = write_inputs(root / "inputs")
    with rl_toy.torch_threads(1):
        for recipe in SAMPLES:
            assert cli_main(command(recipe, inputs, root / "runs", 1)) == 0, recipe
    yield root / "runs"
    shutil.rmtree(root, ignore_errors=True)


def test_fsdp_two_processes_match_one_for_grpo_and_ppo(single, tmp_path):
    inputs, runs = write_inputs(tmp_path / "inputs"), tmp_path / "runs"
    fsdp = ["--distributed", "fsdp"]
    grpo = command("grpo", inputs, runs, 2, [*fsdp, "--save-every", "1"])
    resumed = [*grpo[:grpo.index("--output-dir")], "--output-dir", str(runs / "grpo-resumed"), *fsdp,
               "--save-every", "1", "--resume"]
    result = launch([grpo, copy_step(runs / "grpo", runs / "grpo-resumed"), resumed,
                     command("ppo", inputs, runs, 2, fsdp)], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("distributed: FSDP2 full shard; 2 processes (cpu, gloo backend)") == 3

    for recipe in ("grpo", "ppo"):
        assert_same_run(single / recipe, runs / recipe)
    one, two = (final_weights_of(run / "ppo" / "value_model") for run in (single, runs))
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=2e-5)
    # The policy moved (so equality above is not two untouched copies).
    start = final_weights_of_model()
    moved = max(float((final_weights(runs / "grpo")[f"model.safetensors:{k}"] - v).abs().max()) for k, v in start.items())
    assert moved > 1e-3

    # Checkpoints under FSDP are sharded (one file per process), and resuming from step 1
    # ends exactly where the uninterrupted run ended.
    checkpoint = runs / "grpo" / "checkpoints" / "step-00000001"
    assert sorted(p.name for p in (checkpoint / "state" / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert "resumed from" in result.stdout
    straight, again = final_weights(runs / "grpo"), final_weights(runs / "grpo-resumed")
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    assert [r.get("loss") for r in metrics(runs / "grpo-resumed")] == [r.get("loss") for r in metrics(runs / "grpo")]


@pytest.mark.slow
def test_ddp_two_processes_match_one_for_grpo_rloo_ppo(single, tmp_path):
    inputs, runs = write_inputs(tmp_path / "inputs"), tmp_path / "runs"
    result = launch([command(r, inputs, runs, 2, ["--distributed", "ddp"]) for r in SAMPLES], tmp_path,
                    env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("distributed: DDP (whole model on every process); 2 processes") == 3
    for recipe in SAMPLES:
        assert_same_run(single / recipe, runs / recipe)


def test_zero3_is_refused_before_anything_loads(tmp_path, capsys):
    inputs = write_inputs(tmp_path / "inputs")
    code = cli_main(command("grpo", inputs, tmp_path / "runs", 1, ["--distributed", "zero3"]))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("posttrain grpo: error: ") and "'distributed'" in err[-1]
    assert "online RL does not support zero3 yet" in err[-1]
    assert not (tmp_path / "runs").exists()


def final_weights_of(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{f.name}:{k}": v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def final_weights_of_model() -> dict[str, torch.Tensor]:
    from posttrain.models import load_model

    return {k: v.detach().clone() for k, v in load_model("tiny-random", seed=1).state_dict().items()}
