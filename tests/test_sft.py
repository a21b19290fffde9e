"""`posttrain sft` end to end on tiny-random: learning, LoRA, packing, kill -9 resume, SIGINT, 2 processes."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.cli import main as cli_main
from posttrain.models import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    """Single-digit additions in chat shape plus Alpaca rows: short, learnable, two shapes."""
    folder = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    with open(folder / "chat.jsonl", "w") as f:
        for _ in range(48):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            f.write(json.dumps({"messages": [{"role": "user", "content": f"{a}+{b}"},
                                             {"role": "assistant", "content": str(a + b)}]}) + "\n")
    with open(folder / "alpaca.jsonl", "w") as f:
        for word in ["cat", "dog", "sun", "sky", "red", "big", "cup", "pen"] * 2:
            f.write(json.dumps({"instruction": "Repeat the word twice", "input": word, "output": f"{word} {word}"}) + "\n")
    return folder


def run_cli(*args: str, env=None, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "posttrain.cli", *args]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    files = list((run / "final").glob("*.safetensors"))
    assert files, f"no weights in {run / 'final'}"
    return load_file(str(files[0]))


def test_sft_learns_from_two_shapes_and_writes_a_run_directory(sft_data, tmp_path):
    run = tmp_path / "run"
    code = cli_main(["sft", "--model", "tiny-random", "--data", str(sft_data / "chat.jsonl"), str(sft_data / "alpaca.jsonl"),
                     "--output-dir", str(run), "--max-steps", "40", "--learning-rate", "3e-3", "--batch-size", "8",
                     "--eval-fraction", "0.1", "--eval-every", "20", "--no-progress"])
    assert code == 0
    rows = [r for r in metrics(run) if "loss" in r]
    assert sum(r["loss"] for r in rows[-5:]) / 5 < 0.6 * sum(r["loss"] for r in rows[:5]) / 5
    evals = [r for r in metrics(run) if "eval/loss" in r]
    assert len(evals) == 2 and evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert (run / "config.yaml").exists() and (run / "final" / "tokenizer.json").exists()


def test_lora_sft_saves_an_adapter_that_loads_and_generates(sft_data, tmp_path, capsys):
    run = tmp_path / "lora"
    assert cli_main(["sft", "--model", "tiny-random", "--data", str(sft_data / "chat.jsonl"), "--peft", "lora",
                     "--lora-r", "4", "--output-dir", str(run), "--max-steps", "3", "--batch-size", "4",
                     "--learning-rate", "1e-3", "--no-progress"]) == 0
    assert (run / "final" / "adapter_config.json").exists()
    out = tmp_path / "gen.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1+2"}\n')
    assert cli_main(["generate", "--model", str(run), "--prompts", str(prompts), "--output", str(out),
                     "--max-new-tokens", "4", "--temperature", "0"]) == 0
    row = json.loads(out.read_text())
    assert row["model"] == str(run) and row["prompt"][0]["content"] == "1+2"


def test_packed_loss_equals_padded_loss(sft_data):
    from posttrain.data import (
        get_template,
        load_records,
        pack_examples,
        packed_collate,
        pad_collate,
        tokenize_conversations,
    )
    from posttrain.models import load_model, load_tokenizer
    from posttrain.train.sft import nll_sum

    tokenizer = load_tokenizer("tiny-random")
    model = load_model("tiny-random")
    examples, _ = tokenize_conversations(load_records(sft_data / "chat.jsonl", kind="sft")[:6], tokenizer,
                                         get_template("auto", tokenizer))
    padded = nll_sum(model, pad_collate(examples, tokenizer.pad_token_id)).loss_sum
    packed = nll_sum(model, packed_collate(pack_examples(examples, 64), tokenizer.pad_token_id)).loss_sum
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def test_padding_free_run_matches_the_padded_run(sft_data, tmp_path):
    """--padding-free changes the batch layout only: same losses per step and same final weights."""
    common = ["--model", "tiny-random", "--data", str(sft_data / "chat.jsonl"), "--max-steps", "4",
              "--learning-rate", "3e-3", "--batch-size", "4", "--no-progress"]
    assert cli_main(["sft", *common, "--output-dir", str(tmp_path / "padded"), "--layout", "padded"]) == 0
    assert cli_main(["sft", *common, "--output-dir", str(tmp_path / "free"), "--padding-free"]) == 0
    losses = lambda run: [r["loss"] for r in metrics(run) if "loss" in r]
    assert len(losses(tmp_path / "free")) == 4
    assert losses(tmp_path / "free") == pytest.approx(losses(tmp_path / "padded"), rel=1e-4)
    free, padded = weights(tmp_path / "free"), weights(tmp_path / "padded")
    start = load_model("tiny-random").state_dict()
    name = next(k for k in free if "layers.0.self_attn.q_proj" in k)
    assert not torch.allclose(free[name], start[name])  # it trained
    for key in padded:
        torch.testing.assert_close(free[key], padded[key], rtol=1e-4, atol=3e-5)  # 4 Adam steps of float noise


def test_packing_and_padding_free_together_are_refused(sft_data, tmp_path, capsys):
    code = cli_main(["sft", "--model", "tiny-random", "--data", str(sft_data / "chat.jsonl"), "--packing",
                     "--padding-free", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "padding_free" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def sft_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["sft", "--model", "tiny-random", "--data", str(data), "--output-dir", str(run), "--batch-size", "4",
            "--learning-rate", "5e-3", "--peft", "lora", "--lora-r", "4", "--lora-dropout", "0.1", "--no-progress", *extra]


def wait_for(predicate, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"process ended early: {process.communicate()[1][-2000:]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_resume_after_kill_9_matches_an_uninterrupted_run(sft_data, tmp_path):
    data = sft_data / "chat.jsonl"
    steps = ["--max-steps", "24", "--save-every", "4"]
    reference = run_cli(*sft_args(data, tmp_path / "ref", *steps))
    assert reference.wait(timeout=600) == 0, reference.communicate()[1][-2000:]

    run = tmp_path / "killed"
    victim = run_cli(*sft_args(data, run, *steps))
    # Kill at an arbitrary moment after the second checkpoint: mid-step or mid-save.
    wait_for(lambda: (run / "checkpoints" / "step-00000008").exists(), victim)
    time.sleep(random.Random(7).uniform(0.0, 0.5))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = run_cli(*sft_args(data, run, *steps, "--resume"))
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-2000:]
    assert "resumed from" in stdout
    for name, tensor in weights(tmp_path / "ref").items():
        assert torch.equal(weights(run)[name], tensor), name
    assert [r["step"] for r in metrics(run) if "loss" in r] == list(range(1, 25))


def test_sigint_saves_a_checkpoint_and_exits_cleanly(sft_data, tmp_path):
    run = tmp_path / "interrupted"
    process = run_cli(*sft_args(sft_data / "chat.jsonl", run, "--max-steps", "100000"))
    wait_for(lambda: (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert "checkpoint saved to" in stderr and "--resume" in stderr
    assert list((run / "checkpoints").glob("step-*"))


def test_two_processes_match_one_process_with_the_same_global_batch(sft_data, tmp_path):
    common = ["sft", "--model", "tiny-random", "--data", str(sft_data / "chat.jsonl"), "--max-steps", "4",
              "--learning-rate", "1e-2", "--batch-size", "4", "--no-progress", "--seed", "1"]
    single = run_cli(*common, "--grad-accum", "2", "--output-dir", str(tmp_path / "one"))
    assert single.wait(timeout=600) == 0, single.communicate()[1][-2000:]
    port = str(29500 + random.Random().randint(100, 900))
    multi = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", port,
                              "-m", "posttrain.cli", *common, "--grad-accum", "1", "--output-dir", str(tmp_path / "two")],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = multi.communicate(timeout=600)
    assert multi.returncode == 0, stderr[-3000:]
    assert stdout.count("done:") == 1  # printed once, by rank 0
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=5e-5)  # gloo sums in another order
    losses = lambda run: [r["loss"] for r in metrics(run) if "loss" in r]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.jsonl"], "missing.jsonl: file not found"),
    (["--data", "{bad}", "--batch-size", "two"], "config field 'batch_size': expected an integer"),
    (["--data", "{bad}", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--data", "{bad}"], "bad.jsonl:2: malformed JSON"),
    (["--data", "{empty_response}"], "empty.jsonl:1: field 'messages"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n')
    (tmp_path / "empty.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}\n')
    args = [a.replace("{bad}", str(tmp_path / "bad.jsonl")).replace("{empty_response}", str(tmp_path / "empty.jsonl"))
            for a in args]
    code = cli_main(["sft", "--model", "tiny-random", "--output-dir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_yaml_field_names_the_field(tmp_path, capsys):
    config = tmp_path / "sft.yaml"
    config.write_text("model: tiny-random\nlearning_rat: 0.1\n")
    assert cli_main(["sft", "--config", str(config)]) == 2
    assert "config field 'learning_rat': unknown field" in capsys.readouterr().err
