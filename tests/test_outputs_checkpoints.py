"""Intermediate checkpoints hold a loadable model next to the training state, and
--keep-best (TrainingArguments' load_best_model_at_end) makes final/ the best validation's model.

- checkpoints/step-N loads in plain transformers/PEFT `from_pretrained`, in posttrain's
  `load_model`, `posttrain generate` and `posttrain export`, with the weights of that step;
- the training state sits in step-N/state/ and still resumes;
- --keep-best: final/ is the checkpoint of the best eval metric, which pruning keeps.
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from posttrain.cli import main
from posttrain.models import load_model
from posttrain.train.checkpoint import list_checkpoints
from posttrain.train.engine import run_training
from test_engine import args_for, make_task


def sft_run(tmp_path, name, *extra):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(8)))
    out = tmp_path / name
    assert main(["sft", "--model", "tiny-random", "--data", str(data), "--output-dir", str(out), "--batch-size", "4",
                 "--max-steps", "3", "--save-every", "1", "--keep-last", "5", "--learning-rate", "1e-2",
                 "--no-progress", *extra]) == 0
    return out


def logits(model, ids=torch.tensor([[5, 6, 7, 8]])):
    with torch.no_grad():
        return model(ids).logits


def test_a_full_checkpoint_loads_everywhere(tmp_path):
    from transformers import AutoModelForCausalLM

    run = sft_run(tmp_path, "full")
    steps = dict(list_checkpoints(run))
    assert sorted(steps) == [1, 2]  # the last step is final/
    step2 = steps[2]
    assert (step2 / "config.json").is_file() and (step2 / "tokenizer.json").is_file()
    assert (step2 / "state").is_dir() and (step2 / "trainer_state.json").is_file()
    plain = logits(AutoModelForCausalLM.from_pretrained(str(step2)).eval())
    ours = logits(load_model(str(step2)))
    torch.testing.assert_close(plain, ours)
    assert not torch.allclose(ours, logits(load_model(str(steps[1]))))  # each step its own weights
    assert not torch.allclose(ours, logits(load_model(str(run))))

    out = tmp_path / "gen.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    assert main(["generate", "--model", str(step2), "--prompts", str(prompts), "--max-new-tokens", "3",
                 "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1
    assert main(["export", "--model", str(step2), "--output", str(tmp_path / "exported")]) == 0
    torch.testing.assert_close(logits(load_model(str(tmp_path / "exported"))), ours)


def test_a_lora_checkpoint_is_an_adapter_plain_peft_loads(tmp_path):
    from peft import AutoPeftModelForCausalLM

    run = sft_run(tmp_path, "lora", "--peft", "lora")
    step2 = dict(list_checkpoints(run))[2]
    assert (step2 / "adapter_config.json").is_file()
    torch.testing.assert_close(logits(AutoPeftModelForCausalLM.from_pretrained(str(step2)).eval()),
                               logits(load_model(str(step2))))


def test_a_checkpoint_with_the_model_still_resumes(tmp_path):
    run = sft_run(tmp_path, "resume")
    straight = load_file(str(run / "final" / "model.safetensors"))
    # Continue the same run past its end from step 2's checkpoint: same weights as a straight run.
    for path in (run / "final", list_checkpoints(run)[-1][1].parent / "step-00000003"):
        if path.exists():
            import shutil
            shutil.rmtree(path)
    assert main(["sft", "--model", "tiny-random", "--data", str(tmp_path / "chat.jsonl"), "--output-dir", str(run),
                 "--batch-size", "4", "--max-steps", "3", "--save-every", "1", "--keep-last", "5",
                 "--learning-rate", "1e-2", "--no-progress", "--resume"]) == 0
    resumed = load_file(str(run / "final" / "model.safetensors"))
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key])


def test_keep_best_makes_final_the_best_validation(tmp_path, capsys):
    # eval/loss by step: 1 -> 3.0, 2 -> 1.0 (best), 3 -> 2.0, 4 -> 2.5, end (step 6) -> 4.0
    scores = iter([3.0, 1.0, 2.0, 2.5, 2.6, 4.0])
    task = make_task(evaluate=lambda m: {"loss": next(scores)})
    result = run_training(task, args_for(tmp_path, eval_every=1, max_steps=6, keep_best=True, keep_last=1))
    assert "--keep-best: final/ holds the model of step 2 (eval/loss 1; the last step's: 4)" in capsys.readouterr().out
    best = load_file(str(tmp_path / "checkpoints" / "step-00000002" / "model.safetensors"))  # kept despite keep_last=1
    final = load_file(str(result.final_dir / "model.safetensors"))
    assert final.keys() == best.keys() and all(torch.equal(final[k], best[k]) for k in best)
    assert not torch.equal(final["layer.weight"], task.model.layer.weight.detach())  # not the last step's


def test_keep_best_keeps_the_last_model_when_it_is_the_best(tmp_path):
    scores = iter([3.0, 2.0, 1.0])
    result = run_training(make_task(evaluate=lambda m: {"loss": next(scores)}),
                          args_for(tmp_path, eval_every=1, max_steps=3, keep_best=True))
    final = load_file(str(result.final_dir / "model.safetensors"))
    step2 = load_file(str(tmp_path / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert not torch.equal(final["layer.weight"], step2["layer.weight"])  # the end model, trained one step more
