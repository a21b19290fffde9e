"""GRPO's dynamic sampling (`--dynamic-sampling R`): groups whose rewards are all equal are
replaced by groups of further prompts, and the step still trains on `prompts_per_step` groups."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import rl_toy
from posttrain.rl.grpo import GRPOConfig, train_grpo, uniform_group
from posttrain.rl.rollouts import Sample
from posttrain.rollout.rewards import BatchScores
from posttrain.train.metrics import read_metrics
from rl_toy import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path: Path, name: str, **overrides) -> tuple[list[dict], list[dict]]:
    values = dict(model="tiny-random", prompts=str(rl_toy.write_prompts(tmp_path)), output_dir=str(tmp_path / name),
                  num_samples=4, prompts_per_step=2, max_new_tokens=8, learning_rate=1e-2, max_steps=3,
                  micro_batch_size=16, kl_coef=0.0, progress=False)
    values.update(overrides)
    train_grpo(GRPOConfig(**values), {"lowercase": rl_toy.lowercase_even})
    out = Path(values["output_dir"])
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    return read_metrics(out / "metrics.jsonl"), rollouts


def _sample(score: float) -> Sample:
    return Sample(0, 0, [1], [2], "x", "eos", score=score)


def test_uniform_group_means_every_score_equal():
    assert uniform_group([_sample(0.0), _sample(0.0), _sample(0.0)])
    assert uniform_group([_sample(1.0)])
    assert not uniform_group([_sample(0.0), _sample(0.0), _sample(0.5)])


def test_batch_scores_concat_keeps_row_order_and_sums():
    a = BatchScores([1.0], {"f": [1.0]}, {"f": [None]}, {"f": 0.5}, {"f": 1.0}, None)
    b = BatchScores([0.0, 2.0], {"f": [0.0, 2.0]}, {"f": ["x", None]}, {"f": 0.25}, {"f": 1.0}, 1)
    both = BatchScores.concat([a, b])
    assert both.total == [1.0, 0.0, 2.0] and both.scores["f"] == [1.0, 0.0, 2.0]
    assert both.reasons["f"] == [None, "x", None] and both.seconds["f"] == 0.75
    assert both.sandbox_violations == 1


def test_dynamic_sampling_trains_on_groups_with_signal(tmp_path):
    """Odd-id prompts always score 0 (uniform groups). Without dynamic sampling about half the
    trained groups are such; with it, extra rounds replace them and the rollouts of the extra
    rounds are kept in rollouts.jsonl without an advantage."""
    plain_rows, plain_rollouts = _run(tmp_path, "plain")
    rows, rollouts = _run(tmp_path, "dynamic", dynamic_sampling=3)
    assert "dynamic/rounds" not in plain_rows[-1]
    assert len(plain_rollouts) == 3 * 2 * 4 and all("advantage" in r for r in plain_rollouts)

    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3
    trained = [r for r in rollouts if "advantage" in r]
    assert len(trained) == 3 * 2 * 4  # still prompts_per_step groups of G per step
    assert len(rollouts) > len(trained)  # extra rounds were sampled
    for step in (1, 2, 3):
        groups: dict[int, list[float]] = {}
        for r in trained:
            if r["step"] == step:
                groups.setdefault(r["id"], []).append(r["reward"])
        assert len(groups) == 2 and all(len(g) == 4 for g in groups.values())
        # every trained group is informative (an even id with rewards that differ) ...
        for prompt_id, rewards in groups.items():
            assert prompt_id % 2 == 0 and len(set(rewards)) > 1, (step, prompt_id, rewards)
        # ... and no prompt was sampled twice in one step
        sampled = [r["id"] for r in rollouts if r["step"] == step and r["sample"] == 0]
        assert len(sampled) == len(set(sampled))
    for row in steps:
        assert row["dynamic/uniform_in_batch"] == 0.0
        assert row["dynamic/rounds"] >= 1 or row["dynamic/informative_fraction"] == 1.0
        assert 0.0 < row["dynamic/informative_fraction"] <= 1.0
        assert row["groups_zero_std"] == 0.0


def test_rounds_that_run_out_fill_the_batch_with_uniform_groups(tmp_path):
    """A reward that is always 0 gives no informative group at all: the rounds run out, the step
    still trains on prompts_per_step (uniform) groups, and nothing breaks."""
    rows, rollouts = _run(tmp_path, "zero", dynamic_sampling=2, max_steps=1,
                          prompts=str(_odd_prompts(tmp_path)))
    step = [r for r in rows if "loss" in r][0]
    assert step["dynamic/rounds"] == 2.0 and step["dynamic/uniform_in_batch"] == 1.0
    assert step["dynamic/informative_fraction"] == 0.0
    assert sum("advantage" in r for r in rollouts) == 2 * 4
    assert len(rollouts) == 3 * 2 * 4  # three rounds of two prompts


def _odd_prompts(directory: Path, count: int = 8) -> Path:
    path = directory / f"odd{count}.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say {i}", "id": 2 * i + 1}) + "\n" for i in range(count)))
    return path


def test_a_round_with_every_prompt_already_sampled_is_empty(tmp_path):
    """Two prompts, both sampled in the first round: every extra round finds nothing new and
    samples nothing (a process whose round is empty still takes part in it)."""
    rows, rollouts = _run(tmp_path, "two", dynamic_sampling=3, max_steps=1, prompts=str(_odd_prompts(tmp_path, 2)))
    step = [r for r in rows if "loss" in r][0]
    assert step["dynamic/rounds"] == 3.0 and step["dynamic/groups_sampled"] == 2.0
    assert len(rollouts) == 2 * 4


def test_dynamic_sampling_flag_from_the_cli_is_range_checked(tmp_path, capsys):
    from posttrain.cli import main as cli

    code = cli(["grpo", "--model", "tiny-random", "--prompts", str(rl_toy.write_prompts(tmp_path)),
                "--dynamic-sampling", "-1", "--output-dir", str(tmp_path / "x")])
    assert code == 2
    assert "dynamic_sampling" in capsys.readouterr().err
