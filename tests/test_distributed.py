"""FSDP on CPU processes (gloo): every training recipe, 2 processes = 1 process with the same global batch.

One torchrun launch runs sft, dpo (frozen reference copy), kto (cached reference computed
under FSDP) and rm with `--distributed fsdp`, plus an SFT resume from a sharded checkpoint;
the same recipes run in this process with one process and grad_accum 2. Final weights and
logged losses must agree to float tolerance (gloo sums in another order), the checkpoint
must be sharded (one file per process), final/ must be an ordinary Hugging Face directory,
and the resumed run must end bit-identical to the uninterrupted one.

DDP equality for SFT is in test_sft.py; DDP for the other recipes, CPU offload and the
`posttrain launch` wrapper are in test_distributed_slow.py (-m slow).
"""
from __future__ import annotations

import shutil

import pytest
import torch

from distributed_worker import RECIPES, copy_step, final_weights, launch, recipe_commands, train_losses, write_data
from posttrain.cli import main as cli_main


@pytest.fixture(scope="module")
def single_process_runs(tmp_path_factory):
    """Each recipe in this (single) process, grad_accum 2: the reference results."""
    root = tmp_path_factory.mktemp("single")
    data = write_data(root / "data")
    for argv in recipe_commands(data, root / "runs", ["--grad-accum", "2"]):
        assert cli_main(argv) == 0, argv
    yield root / "runs"
    shutil.rmtree(root, ignore_errors=True)


def initial_weights() -> dict[str, torch.Tensor]:
    from posttrain.models import load_model

    return {k: v.detach().clone() for k, v in load_model("tiny-random", seed=1).state_dict().items()}


def test_fsdp_two_processes_match_one_process_for_every_recipe(single_process_runs, tmp_path):
    data, runs = write_data(tmp_path / "data"), tmp_path / "runs"
    commands = recipe_commands(data, runs, ["--grad-accum", "1", "--distributed", "fsdp"])
    sft = commands[0]
    commands += [copy_step(runs / "sft", runs / "sft-resumed"),
                 [*sft[:sft.index("--output-dir")], "--output-dir", str(runs / "sft-resumed"), *sft[sft.index("--output-dir") + 2:], "--resume"]]
    result = launch(commands, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("distributed: FSDP2 full shard; 2 processes (cpu, gloo backend)") == len(RECIPES) + 1

    start = initial_weights()
    for recipe in RECIPES:
        one, two = final_weights(single_process_runs / recipe), final_weights(runs / recipe)
        assert one.keys() == two.keys(), recipe
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=5e-5, msg=lambda m: f"{recipe} {name}: {m}")
        moved = max(float((two[f"model.safetensors:{k}"] - v).abs().max()) for k, v in start.items()
                    if f"model.safetensors:{k}" in two)
        assert moved > 1e-3, f"{recipe}: the weights did not train"
        assert train_losses(runs / recipe) == pytest.approx(train_losses(single_process_runs / recipe), rel=1e-5), recipe

    # During training the checkpoint's training state is sharded: one file per process, nothing
    # gathered (beside it, the step folder holds the loadable model, as final/ does).
    state = runs / "sft" / "checkpoints" / "step-00000001" / "state"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (state / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(state.glob("*.safetensors"))
    # ... resuming from it ends exactly where the uninterrupted run ended ...
    assert "resumed from" in result.stdout
    resumed, straight = final_weights(runs / "sft-resumed"), final_weights(runs / "sft")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert train_losses(runs / "sft-resumed") == train_losses(runs / "sft")
    # ... and final/ is an ordinary Hugging Face model directory.
    from posttrain.models import load_model

    loaded = load_model(str(runs / "sft" / "final"))
    for name, value in loaded.state_dict().items():
        if f"model.safetensors:{name}" in straight:
            assert torch.equal(value, straight[f"model.safetensors:{name}"])
