"""GRPO and RLOO on tiny-random with a toy verifiable reward (tests/rl_toy.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rl_toy
from posttrain.cli import main as cli
from posttrain.rl.grpo import GRPOConfig, RLOOConfig, group_advantages, train_grpo
from posttrain.rl.rollouts import Sample
from posttrain.train.metrics import read_metrics
from rl_toy import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
TOY = str(Path(rl_toy.__file__).resolve())


def _config(tmp_path, cls=GRPOConfig, **overrides):
    values = dict(model="tiny-random", prompts=str(rl_toy.write_prompts(tmp_path)), output_dir=str(tmp_path / "run"),
                  num_samples=4, prompts_per_step=4, max_new_tokens=12, learning_rate=1e-2, max_steps=16, micro_batch_size=16,
                  progress=False)
    values.update(overrides)
    return cls(**values)


def test_grpo_cli_raises_the_reward(tmp_path, capsys):
    prompts = rl_toy.write_prompts(tmp_path)
    out = tmp_path / "grpo"
    code = cli(["grpo", "--model", "tiny-random", "--prompts", str(prompts), "--output-dir", str(out),
                "--reward", f"{TOY}:lowercase", "--reward", f"{TOY}:short:0", "--n", "4", "--prompts-per-step", "4",
                "--max-new-tokens", "12", "--learning-rate", "1e-2", "--max-steps", "16", "--beta", "0.04",
                "--micro-batch-size", "16", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    rows = read_metrics(out / "metrics.jsonl")
    early, late = rl_toy.early_late(rows)
    assert late > early + 0.2, (early, late)
    last = rows[-1]
    for key in ("reward", "reward_std", "entropy", "kl", "clip_fraction", "ratio_mean", "response_length",
                "finished_fraction", "tokens_per_s", "generated_tokens_per_s", "time/generate", "time/reward",
                "time/train", "grad_norm", f"reward/{TOY}:lowercase", f"reward/{TOY}:short"):
        assert key in last, key
    assert last["kl"] > 0  # the policy moved away from the reference
    assert (out / "final" / "config.json").is_file() and (out / "config.yaml").is_file()
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 16 * 16
    assert {"prompt", "response", "reward", "advantage", "step", "rewards"} <= set(rollouts[0])


def test_rloo_raises_the_reward(tmp_path):
    cfg = _config(tmp_path, RLOOConfig, kl_coef=0.01, eval_prompts=str(tmp_path / "prompts.jsonl"), eval_limit=4)
    assert (cfg.advantage, cfg.loss_aggregation, cfg.kl_in_reward) == ("rloo", "sequence_sum", True)
    result = train_grpo(cfg, {"lowercase": rl_toy.lowercase}, name="rloo")
    rows = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    early, late = rl_toy.early_late(rows)
    assert late > early + 0.2, (early, late)
    assert result.steps == 16
    # Greedy evaluation before and after, with every answer written out.
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 16 and "eval/reward" in rows[0] and "eval/reward" in rows[-1]
    assert result.eval_before["reward"] == pytest.approx(rows[0]["eval/reward"])
    assert result.eval_after["reward"] == pytest.approx(rows[-1]["eval/reward"])
    answers = [json.loads(line) for line in (Path(cfg.output_dir) / "eval" / "step-000016.jsonl").read_text().splitlines()]
    assert len(answers) == 4
    assert sum(a["reward"] for a in answers) / 4 == pytest.approx(result.eval_after["reward"])


def test_first_update_has_ratio_one_and_later_updates_do_not(tmp_path):
    """mu = 2: the old log-probs are computed once, before the first update, by a separate pass;
    the first update sees ratio 1 exactly (same weights), the second a moved policy."""
    cfg = _config(tmp_path, ppo_epochs=2, max_steps=2, kl_coef=0.0)
    train_grpo(cfg, {"lowercase": rl_toy.lowercase})
    rows = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "ratio_first" in r]
    assert len(rows) == 2
    for row in rows:
        assert row["ratio_first_abs_dev"] < 1e-5
        assert row["ratio_first"] == pytest.approx(1.0, abs=1e-6)
        assert row["clip_fraction"] > 0  # the second pass saw ratios outside [0.8, 1.2]


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "sum_over_constant"])
def test_micro_batching_does_not_change_the_update(tmp_path, aggregation):
    """The loss denominator is that of the whole minibatch, so 16 sequences in one forward or in
    micro-batches of 3 give the same gradient: same updated policy, same next samples."""
    rows = {}
    for size in (16, 3):
        # lr 1e-3: Adam's first steps are ~lr * sign(g), so float noise of another padding width
        # (1e-7) in near-zero gradients moves weights by up to ~lr * 1e-4; at 1e-2 that is enough
        # to flip an occasional sampled token at the next step (seen on tiny-random).
        cfg = _config(tmp_path, max_steps=3, micro_batch_size=size, loss_aggregation=aggregation, kl_coef=0.1,
                      learning_rate=1e-3, output_dir=str(tmp_path / f"mb{size}"))
        train_grpo(cfg, {"lowercase": rl_toy.lowercase})
        rows[size] = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "loss" in r]
    for whole, split in zip(rows[16], rows[3]):
        assert split["reward"] == pytest.approx(whole["reward"], abs=1e-6)
        for key in ("loss", "kl", "entropy", "grad_norm"):
            assert split[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key


def test_group_advantages_by_hand():
    samples = [Sample(i // 2, i % 2, [1], [2], "", "eos", score=s) for i, s in enumerate([1.0, 0.0, 0.5, 0.5])]
    stats = group_advantages(samples, n=2, estimator="grpo", beta_in_reward=0.0)
    # group 1: mean 0.5, sample std 0.7071 -> +-0.7071; group 2: identical rewards -> 0
    assert [s.scalars["advantage"] for s in samples] == pytest.approx([0.70710, -0.70710, 0.0, 0.0], abs=1e-4)
    assert stats["groups_zero_std"] == 0.5
    group_advantages(samples, n=2, estimator="rloo", beta_in_reward=0.0)
    assert [s.scalars["advantage"] for s in samples] == pytest.approx([1.0, -1.0, 0.0, 0.0])
    # The KL in the reward: r_i - beta * sum_t (old - ref).
    for s, (old, ref) in zip(samples, [([-1.0], [-1.0]), ([-1.0], [-3.0]), ([0.0], [0.0]), ([0.0], [0.0])]):
        s.tokens = {"old_logps": torch.tensor(old), "ref_logps": torch.tensor(ref)}
    group_advantages(samples, n=2, estimator="rloo", beta_in_reward=0.5)
    assert [s.scalars["advantage"] for s in samples] == pytest.approx([2.0, -2.0, 0.0, 0.0])


def test_beta_zero_loads_no_reference_model(tmp_path, monkeypatch):
    import posttrain.train.reference as reference

    def forbidden(*args, **kwargs):
        raise AssertionError("a reference model was built")

    monkeypatch.setattr(reference.ModelReference, "__init__", forbidden)
    train_grpo(_config(tmp_path, kl_coef=0.0, max_steps=1), {"lowercase": rl_toy.lowercase})


def test_resume_after_a_crash_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    import posttrain.rl.grpo as grpo

    reward = {"lowercase": rl_toy.lowercase}
    full = _config(tmp_path, max_steps=4, ppo_epochs=2, output_dir=str(tmp_path / "full"))
    train_grpo(full, reward)

    real_update = grpo.update_policy
    monkeypatch.setattr(grpo, "update_policy", rl_toy.crash_on_call(real_update, 3))
    broken = _config(tmp_path, max_steps=4, ppo_epochs=2, save_every=2, output_dir=str(tmp_path / "broken"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_grpo(broken, reward)
    monkeypatch.setattr(grpo, "update_policy", real_update)
    broken.resume = True
    train_grpo(broken, reward)

    a = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    b = [r for r in read_metrics(tmp_path / "broken" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert y["reward"] == x["reward"]
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-6)
    lines = (tmp_path / "broken" / "rollouts.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 16  # the crashed step's rollouts were not kept twice


@pytest.mark.parametrize("argv, message", [
    (["--num-samples", "1"], "field 'num_samples': a group baseline needs at least 2 samples"),
    (["--reward", "no_such_reward"], "unknown reward 'no_such_reward'"),
    (["--prompts", "missing.jsonl"], "missing.jsonl"),
    (["--task", "chess"], "unknown task 'chess'"),
    (["--loss-aggregation", "mean"], "'mean' is not one of"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    prompts = rl_toy.write_prompts(tmp_path)
    base = ["grpo", "--model", "tiny-random", "--prompts", str(prompts), "--reward", f"{TOY}:lowercase",
            "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--no-progress"]
    code = cli(base + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("posttrain grpo: error:") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_processes_run_grpo_and_ppo(tmp_path):
    """torchrun with 2 CPU processes (gloo): sampling sharded by prompt, DDP updates, rollouts
    gathered on the main process, checkpoints, greedy evaluation over both shards."""
    import subprocess
    import sys

    prompts = rl_toy.write_prompts(tmp_path)
    script = tmp_path / "run.py"
    script.write_text(f"""
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {str(Path(__file__).parent)!r})
import rl_toy
from posttrain.rl.grpo import GRPOConfig, train_grpo
from posttrain.rl.ppo import PPOConfig, train_ppo
common = dict(model="tiny-random", prompts={str(prompts)!r}, prompts_per_step=2, max_new_tokens=8, learning_rate=1e-2,
              max_steps=3, micro_batch_size=3, progress=False, save_every=2, eval_prompts={str(prompts)!r}, eval_limit=5)
train_grpo(GRPOConfig(**common, output_dir={str(tmp_path / 'grpo')!r}, num_samples=4, ppo_epochs=2, num_minibatches=2,
                      dynamic_sampling=2), {{"lowercase": rl_toy.lowercase_even}})
train_ppo(PPOConfig(**common, output_dir={str(tmp_path / 'ppo')!r}, num_samples=2, ppo_epochs=2, num_minibatches=2),
          {{"lowercase": rl_toy.lowercase}})
""")
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, per_step in (("grpo", 2 * 2 * 4), ("ppo", 2 * 2 * 2)):
        rows = read_metrics(tmp_path / name / "metrics.jsonl")
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
        assert "eval/reward" in rows[0] and "eval/reward" in rows[-1]
        rollouts = [json.loads(line) for line in (tmp_path / name / "rollouts.jsonl").read_text().splitlines()]
        trained = [r for r in rollouts if "advantage" in r] if name == "grpo" else rollouts
        assert len(trained) == 3 * per_step  # GRPO's extra sampling rounds add rows without an advantage
        assert (tmp_path / name / "checkpoints" / "step-00000002").is_dir()
    # GRPO ran dynamic sampling: extra rounds on both processes replaced the odd-id (reward 0) groups
    grpo_rows = [r for r in read_metrics(tmp_path / "grpo" / "metrics.jsonl") if "loss" in r]
    assert max(r["dynamic/rounds"] for r in grpo_rows) >= 1
    assert min(r["dynamic/uniform_in_batch"] for r in grpo_rows) < 0.5


def test_rewards_from_yaml_mapping_and_flags(tmp_path):
    from posttrain.config import parse_config
    from posttrain.rl.loop import merge_repeated_flags
    from posttrain.rl.online import build_scorer

    config = tmp_path / "grpo.yaml"
    config.write_text(f"reward: [answer_format]\nreward_weights:\n  '{TOY}:lowercase': 0.5\n  '{TOY}:short': 2\n")
    cfg = parse_config(GRPOConfig, ["--config", str(config)])
    assert build_scorer(cfg).weights == {"answer_format": 1.0, f"{TOY}:lowercase": 0.5, f"{TOY}:short": 2.0}
    argv = merge_repeated_flags(["--reward", "math:2", "--prompts", "p.jsonl", "--reward", f"{TOY}:short:0.1"], "--reward")
    cfg = parse_config(GRPOConfig, argv)
    assert build_scorer(cfg).weights == {"math": 2.0, f"{TOY}:short": 0.1}


def test_task_defaults_and_eval_off():
    from posttrain.rl.loop import apply_task_defaults
    from posttrain.rollout.rewards import task_file

    cfg = apply_task_defaults(GRPOConfig(task="sorting"))
    assert (cfg.prompts, cfg.eval_prompts, cfg.reward) == (str(task_file("sorting")), str(task_file("sorting", "test")),
                                                           ["sort"])
    cfg = apply_task_defaults(GRPOConfig(task="arithmetic", eval_prompts="none", reward=["math:2"]))
    assert (cfg.eval_prompts, cfg.reward) == ("", ["math:2"])
