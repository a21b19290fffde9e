"""The combined objective (GRPO + DPO on rollout pairs + behaviour cloning), rl/combined.py.

Pure pieces with hand values; the DPO surrogate's gradient against the direct DPO loss on
tiny-random; and whole GRPO steps: weight 0 equals plain GRPO exactly, and each term moves the
weights when its weight changes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rl_toy
from posttrain.cli import main as cli
from posttrain.losses import dpo_loss
from posttrain.losses.combined import dpo_sequence_coefficients, group_best_worst_pairs
from posttrain.rl.combined import dpo_surrogate
from posttrain.rl.grpo import GRPOConfig, train_grpo
from posttrain.train.metrics import read_metrics
from rl_toy import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_group_best_worst_pairs():
    rewards = torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 1.0], [0.2, 0.0, 0.0]])
    chosen, rejected = group_best_worst_pairs(rewards)
    assert chosen.tolist() == [1, 6] and rejected.tolist() == [0, 7]  # group 2: no signal, no pair
    with pytest.raises(ValueError, match=r"must be \[P, G\]"):
        group_best_worst_pairs(torch.zeros(4))


def test_dpo_sequence_coefficients_by_hand_and_by_autograd():
    beta = 0.5
    # At the reference (margin 0): dL/dlogp_w = -beta * sigma(0) = -0.25, dL/dlogp_l = +0.25.
    loss, coef = dpo_sequence_coefficients(torch.zeros(4), torch.zeros(4), torch.tensor([0]), torch.tensor([2]), beta)
    assert coef.tolist() == [-0.25, 0.0, 0.25, 0.0]
    assert loss.item() == pytest.approx(0.6931471805599453)  # log 2
    logps = torch.tensor([-3.0, -5.0, -2.0, -4.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-3.5, -4.0, -2.5, -3.0], dtype=torch.float64)
    chosen, rejected = torch.tensor([0, 2]), torch.tensor([1, 1])  # sample 1 is in two pairs
    direct = dpo_loss(logps[chosen], logps[rejected], ref[chosen], ref[rejected], beta=beta).losses.sum()
    (expected,) = torch.autograd.grad(direct, logps)
    loss, coef = dpo_sequence_coefficients(logps.detach(), ref, chosen, rejected, beta)
    assert loss.item() == pytest.approx(direct.item())
    assert torch.allclose(coef, expected)
    assert coef[3] == 0.0


def test_dpo_surrogate_gives_the_dpo_gradient_across_micro_batches():
    """sum_i c_i logp_i(theta), backpropagated one sample at a time, equals the gradient of the
    DPO loss computed directly on all four sequences at once."""
    from posttrain.models import load_model
    from posttrain.rl.online import batch_logprobs
    from posttrain.rl.rollouts import Sample, collate

    torch.manual_seed(0)
    model = load_model("tiny-random")
    samples = [Sample(0, i, prompt_ids=[1, 5, 9], response_ids=[10 + i, 20 + 2 * i, 7], text="", finish_reason="eos")
               for i in range(4)]
    chosen, rejected, beta = torch.tensor([0, 3]), torch.tensor([1, 2]), 0.2
    ref = torch.tensor([-20.0, -21.0, -19.5, -22.0])

    def seq_logps(batch):
        out = batch_logprobs(model, batch, 1.0).logprobs
        return torch.where(batch["response_mask"], out, 0.0).sum(-1)

    model.zero_grad()
    lp = seq_logps(collate(samples, 0))
    dpo_loss(lp[chosen], lp[rejected], ref[chosen], ref[rejected], beta=beta).losses.sum().backward()
    direct = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    _, coef = dpo_sequence_coefficients(lp.detach(), ref, chosen, rejected, beta)
    model.zero_grad()
    for i, sample in enumerate(samples):
        batch = collate([sample], 0)
        out = batch_logprobs(model, batch, 1.0).logprobs
        dpo_surrogate(out, batch["response_mask"], coef[i:i + 1]).backward()
    assert direct and all(torch.allclose(p.grad, direct[n], atol=1e-6) for n, p in model.named_parameters()
                          if n in direct)


# ------------------------------------------------------------------------ whole steps


def _demos(tmp_path: Path) -> Path:
    path = tmp_path / "demos.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(6):
            handle.write(json.dumps({"prompt": f"Say something {i}", "completion": "hello there friend"}) + "\n")
    return path


def _step(tmp_path: Path, name: str, steps: int = 1, **overrides) -> dict[str, torch.Tensor]:
    values = dict(model="tiny-random", prompts=str(rl_toy.write_prompts(tmp_path)),
                  output_dir=str(tmp_path / name), num_samples=4, prompts_per_step=4, max_new_tokens=8,
                  learning_rate=1e-2, max_steps=steps, micro_batch_size=8, kl_coef=0.0, progress=False)
    values.update(overrides)
    train_grpo(GRPOConfig(**values), {"lowercase": rl_toy.lowercase})
    return load_file(str(tmp_path / name / "final" / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_term_changes_the_update_and_weight_zero_is_plain_grpo(tmp_path):
    demos = str(_demos(tmp_path))
    plain = _step(tmp_path, "plain")
    zeros = _step(tmp_path, "zeros", dpo_coef=0.0, bc_coef=0.0, bc_data=demos, policy_coef=1.0)
    assert _same(plain, zeros)  # weight 0: bit-for-bit plain GRPO
    with_dpo = _step(tmp_path, "dpo", dpo_coef=0.3)
    with_more_dpo = _step(tmp_path, "dpo2", dpo_coef=0.6)
    with_bc = _step(tmp_path, "bc", bc_coef=0.5, bc_data=demos)
    half_policy = _step(tmp_path, "half", policy_coef=0.7)
    for other in (with_dpo, with_more_dpo, with_bc, half_policy):
        assert not _same(plain, other)
    assert not _same(with_dpo, with_more_dpo)
    rows = read_metrics(tmp_path / "dpo" / "metrics.jsonl")
    train_row = next(r for r in rows if "loss" in r)
    # pi_old is the DPO reference here (kl_coef 0), so at the only update the margin is 0: log 2.
    assert train_row["dpo_loss"] == pytest.approx(0.6931, abs=1e-4) and train_row["dpo_pairs"] >= 1


def test_dpo_with_a_reference_and_two_epochs_runs_and_reports(tmp_path):
    _step(tmp_path, "ref", steps=2, dpo_coef=0.3, kl_coef=0.05, ppo_epochs=2)
    rows = [r for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if "dpo_loss" in r]
    assert len(rows) == 2 and all(r["dpo_loss"] > 0 for r in rows)


def test_behaviour_cloning_alone_lowers_the_expert_nll(tmp_path):
    """policy_coef 0 and bc_coef 1: the run is SFT on the expert rows, and their NLL falls."""
    _step(tmp_path, "bc_only", steps=6, policy_coef=0.0, bc_coef=1.0, bc_data=str(_demos(tmp_path)),
          bc_batch_size=4)
    nll = [r["bc_nll"] for r in read_metrics(tmp_path / "bc_only" / "metrics.jsonl") if "bc_nll" in r]
    assert len(nll) == 6 and nll[-1] < nll[0] - 0.5, nll


@pytest.mark.parametrize("flags, message", [
    (["--bc-coef", "0.1"], "config field 'bc_data': bc_coef > 0 needs expert data"),
    (["--dpo-coef", "0.3", "--num-minibatches", "2"], "config field 'dpo_coef': the DPO term pairs samples"),
    (["--dpo-coef", "-1"], "config field 'dpo_coef': must be 0 or more, got -1"),
    (["--policy-coef", "0"], "config field 'policy_coef': every loss weight is 0"),
])
def test_bad_combined_settings_are_one_line_errors(tmp_path, capsys, flags, message):
    prompts = rl_toy.write_prompts(tmp_path)
    code = cli(["grpo", "--model", "tiny-random", "--prompts", str(prompts), "--output-dir", str(tmp_path / "x"),
                "--reward", "answer_format", "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_bad_expert_row_names_file_and_line(tmp_path, capsys):
    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    code = cli(["grpo", "--model", "tiny-random", "--prompts", str(rl_toy.write_prompts(tmp_path)),
                "--output-dir", str(tmp_path / "x"), "--reward", "answer_format", "--no-progress",
                "--bc-coef", "0.1", "--bc-data", str(demos)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"{demos}:2" in err and "completion" in err and len(err.splitlines()) == 1, err
