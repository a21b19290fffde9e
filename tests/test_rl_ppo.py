"""PPO on tiny-random with a toy verifiable reward (tests/rl_toy.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rl_toy
from posttrain.rl.ppo import ActorCritic, PPOConfig, compute_advantages, train_ppo
from posttrain.rl.rollouts import Sample
from posttrain.train.metrics import read_metrics
from rl_toy import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, **overrides):
    values = dict(model="tiny-random", prompts=str(rl_toy.write_prompts(tmp_path)), output_dir=str(tmp_path / "run"),
                  prompts_per_step=16, max_new_tokens=12, learning_rate=5e-3, max_steps=15, micro_batch_size=16,
                  ppo_epochs=2, kl_coef=0.01, progress=False)
    values.update(overrides)
    return PPOConfig(**values)


def test_ppo_raises_the_reward(tmp_path):
    cfg = _config(tmp_path, value_model="shared", vf_coef=0.5)
    train_ppo(cfg, {"lowercase": rl_toy.lowercase})
    rows = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    early, late = rl_toy.early_late(rows)
    assert late > early + 0.2, (early, late)
    for key in ("reward", "kl", "kl_coef", "non_score_reward", "rlhf_reward", "entropy", "clip_fraction",
                "value_loss", "value_clip_fraction", "policy_loss", "explained_variance", "approx_kl",
                "response_length", "tokens_per_s", "time/generate", "time/train", "values_mean", "returns_mean"):
        assert key in rows[-1], key
    assert (Path(cfg.output_dir) / "final" / "config.json").is_file()
    assert (Path(cfg.output_dir) / "value_head.pt").is_file()


def test_separate_value_model_and_adaptive_kl(tmp_path):
    cfg = _config(tmp_path, max_steps=3, kl_controller="adaptive", kl_coef=0.1, kl_target=0.5, kl_horizon=16,
                  value_learning_rate=1e-3)
    train_ppo(cfg, {"lowercase": rl_toy.lowercase})
    rows = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "kl_coef" in r]
    # beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon), with n = 16 samples per step
    for before, after in zip(rows, rows[1:]):
        error = min(max(before["kl"] / 0.5 - 1, -0.2), 0.2)
        assert after["kl_coef"] == pytest.approx(before["kl_coef"] * (1 + error * 16 / 16), rel=1e-5)
    assert rows[0]["kl_coef"] == pytest.approx(0.1)
    assert (Path(cfg.output_dir) / "value_model" / "value_head.json").is_file()


def test_values_are_those_of_the_state_before_each_token():
    from posttrain.models import load_model
    from posttrain.models.heads import ScalarHeadModel

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    response = torch.tensor([[False, False, True, True, True]])
    critic = ScalarHeadModel.from_causal_lm(load_model("tiny-random", seed=1))
    separate = ActorCritic(load_model("tiny-random"), critic=critic)
    with torch.no_grad():
        logps, entropy, values = separate({"input_ids": ids, "attention_mask": mask, "response_mask": response})
        state_values = critic(ids, mask)
    assert torch.allclose(values[:, 1:], state_values[:, :-1])  # V(s_t) is read at position t - 1
    assert values[0, 0] == 0

    policy = load_model("tiny-random")
    head = torch.nn.Linear(64, 1)
    shared = ActorCritic(policy, value_head=head)
    with torch.no_grad():
        _, _, values = shared({"input_ids": ids, "attention_mask": mask, "response_mask": response})
        hidden = policy.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(values[:, 1:], head(hidden).squeeze(-1)[:, :-1], atol=1e-6)


def test_the_score_reaches_every_token_through_gae(tmp_path):
    """Zero values, no KL, gamma = lambda = 1, no whitening: every advantage is the score."""
    from types import SimpleNamespace

    samples = []
    for score, length in ((1.0, 3), (-2.0, 2)):
        sample = Sample(0, 0, [1, 2], [4] * length, "", "eos", score=score)
        sample.tokens = {"old_logps": torch.zeros(length), "ref_logps": torch.zeros(length),
                         "old_values": torch.zeros(length)}
        samples.append(sample)
    cfg = _config(tmp_path, gamma=1.0, lam=1.0, whiten_advantages=False)
    run = SimpleNamespace(world=1, accelerator=SimpleNamespace(num_processes=1))
    stats = compute_advantages(run, samples, 0, cfg, kl_coef=0.0)
    assert samples[0].tokens["advantages"].tolist() == [1.0, 1.0, 1.0]
    assert samples[1].tokens["advantages"].tolist() == [-2.0, -2.0]
    assert samples[0].tokens["returns"].tolist() == [1.0, 1.0, 1.0]
    assert stats["kl"] == 0.0
    # With a KL penalty: the per-token rewards are -beta * kl_t, plus the score at the last token.
    samples[0].tokens["old_logps"] = torch.tensor([-1.0, -1.0, -1.0])
    samples[0].tokens["ref_logps"] = torch.tensor([-2.0, -2.0, -2.0])  # k1 = 1 per token
    compute_advantages(run, samples, 0, cfg, kl_coef=0.1)
    assert samples[0].tokens["advantages"].tolist() == pytest.approx([0.7, 0.8, 0.9])


def test_resume_restores_the_adaptive_kl_coefficient(tmp_path, monkeypatch):
    import posttrain.rl.ppo as ppo

    reward = {"lowercase": rl_toy.lowercase}
    options = dict(max_steps=3, kl_controller="adaptive", kl_coef=0.1, kl_target=0.01, kl_horizon=4,
                   value_model="shared")
    full = _config(tmp_path, output_dir=str(tmp_path / "full"), **options)
    train_ppo(full, reward)

    real = ppo.ppo_update
    monkeypatch.setattr(ppo, "ppo_update", rl_toy.crash_on_call(real, 3))
    broken = _config(tmp_path, output_dir=str(tmp_path / "broken"), save_every=2, **options)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_ppo(broken, reward)
    monkeypatch.setattr(ppo, "ppo_update", real)
    broken.resume = True
    train_ppo(broken, reward)
    a = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "kl_coef" in r]
    b = [r for r in read_metrics(tmp_path / "broken" / "metrics.jsonl") if "kl_coef" in r]
    assert a[2]["kl_coef"] != pytest.approx(0.1)  # the controller moved it
    assert [r["kl_coef"] for r in b] == pytest.approx([r["kl_coef"] for r in a])
    assert [r["reward"] for r in b] == [r["reward"] for r in a]


def test_a_trained_reward_model_as_reward_and_value_model(tmp_path):
    """`posttrain rm` output -> `--reward rm:DIR` (weighted with a function) and `--value-model-path DIR`."""
    from posttrain.cli import main as cli
    from posttrain.data import demo_data_path

    rm_dir = tmp_path / "rm"
    assert cli(["rm", "--model", "tiny-random", "--data", str(demo_data_path("sample_preference.jsonl")),
                "--output-dir", str(rm_dir), "--max-steps", "1", "--batch-size", "4", "--no-progress"]) == 0
    toy = str(Path(rl_toy.__file__).resolve())
    cfg = _config(tmp_path, max_steps=1, prompts_per_step=4, reward=[f"rm:{rm_dir}", f"{toy}:lowercase:0.5"],
                  value_model_path=str(rm_dir))
    train_ppo(cfg)
    row = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "reward" in r][0]
    assert row["reward"] == pytest.approx(row[f"reward/rm:{rm_dir}"] + 0.5 * row[f"reward/{toy}:lowercase"], abs=1e-6)
    assert row["values_mean"] != 0


def _zero(prompt: str, response: str, **extra) -> float:
    return 0.0


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_a_batch_without_reward_signal_leaves_the_policy_alone(tmp_path, value_model):
    """Every sample scores 0 and there is no KL term: nothing says which way to move, so the
    first update must not move the policy. A random fresh value head (the old init) made the
    advantages its own TD errors, whitened to unit variance: the policy took a full-size step
    in a random direction every such step, which is how PPO wrecked SmolLM2 (docs/ppo.md)."""
    from posttrain.models import load_model

    cfg = _config(tmp_path, value_model=value_model, kl_coef=0.0, max_steps=1, prompts_per_step=8, micro_batch_size=8)
    train_ppo(cfg, {"zero": _zero})
    start = load_model("tiny-random", seed=cfg.seed).state_dict()
    trained = load_model(str(Path(cfg.output_dir) / "final")).state_dict()
    assert trained.keys() == start.keys()
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert moved == []
    row = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "reward" in r][0]
    assert row["reward"] == 0.0
    assert row["values_mean"] == 0.0  # a fresh head predicts exactly 0
    assert row["advantages_whitened"] == 0.0


def test_advantages_are_not_whitened_when_every_score_is_the_same(tmp_path):
    """Equal scores: whitening would turn the critic's errors into unit-size advantages."""
    from types import SimpleNamespace

    def samples_with(scores):
        out = []
        for score in scores:
            sample = Sample(0, 0, [1, 2], [4, 4], "", "eos", score=score)
            sample.tokens = {"old_logps": torch.zeros(2), "ref_logps": torch.zeros(2),
                             "old_values": torch.tensor([0.01, -0.02])}
            out.append(sample)
        return out

    cfg = _config(tmp_path, gamma=1.0, lam=1.0)  # whiten_advantages is on by default
    run = SimpleNamespace(world=1, accelerator=SimpleNamespace(num_processes=1))
    same = samples_with([0.0, 0.0])
    stats = compute_advantages(run, same, 0, cfg, kl_coef=0.0)
    assert stats["advantages_whitened"] == 0.0
    # Raw GAE with gamma = lambda = 1: A_t = score - V_t.
    assert same[0].tokens["advantages"].tolist() == pytest.approx([-0.01, 0.02])
    differ = samples_with([1.0, 0.0])
    stats = compute_advantages(run, differ, 0, cfg, kl_coef=0.0)
    assert stats["advantages_whitened"] == 1.0
    values = torch.cat([s.tokens["advantages"] for s in differ])
    assert float(values.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(values.std()) == pytest.approx(1.0, abs=1e-4)


def test_value_warmup_trains_only_the_value_head(tmp_path):
    cfg = _config(tmp_path, value_model="shared", max_steps=1, prompts_per_step=8, micro_batch_size=8,
                  value_warmup_steps=1, vf_coef=0.0)
    from posttrain.models import load_model

    train_ppo(cfg, {"lowercase": rl_toy.lowercase})
    start = load_model("tiny-random", seed=cfg.seed).state_dict()
    trained = load_model(str(Path(cfg.output_dir) / "final")).state_dict()
    assert all(torch.equal(start[k], trained[k]) for k in start)  # no policy loss, no value loss: nothing moved
    head = torch.load(Path(cfg.output_dir) / "value_head.pt")
    assert float(head["weight"].abs().sum()) == 0.0


def test_micro_batching_does_not_change_the_ppo_update(tmp_path):
    """PPO runs on the shared update skeleton (`loop.update_passes`): the loss denominator is that
    of the whole minibatch, so micro-batches of 3 give the update of one forward over all 16."""
    rows = {}
    for size in (16, 3):
        cfg = _config(tmp_path, max_steps=2, micro_batch_size=size, value_model="shared", learning_rate=1e-3,
                      num_minibatches=2, output_dir=str(tmp_path / f"mb{size}"))
        train_ppo(cfg, {"lowercase": rl_toy.lowercase})
        rows[size] = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "loss" in r]
    assert len(rows[16]) == 2
    for whole, split in zip(rows[16], rows[3]):
        assert split["reward"] == pytest.approx(whole["reward"], abs=1e-6)
        for key in ("loss", "policy_loss", "value_loss", "entropy", "grad_norm", "explained_variance"):
            assert split[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key


def test_kl_coef_zero_loads_no_reference_model(tmp_path, monkeypatch):
    import posttrain.train.reference as reference

    def forbidden(*args, **kwargs):
        raise AssertionError("a reference model was built")

    monkeypatch.setattr(reference.ModelReference, "__init__", forbidden)
    cfg = _config(tmp_path, kl_coef=0.0, max_steps=1, prompts_per_step=8, micro_batch_size=8, value_model="shared")
    train_ppo(cfg, {"lowercase": rl_toy.lowercase})
    row = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "kl" in r][0]
    assert row["kl"] == 0.0


def _ptx_file(tmp_path) -> Path:
    path = tmp_path / "ptx.jsonl"
    rows = [{"prompt": "say hi", "completion": "hello there"}, {"prompt": "count", "completion": "one two three"},
            {"prompt": "spell", "completion": "a b c d"}, {"text": "plain pre-training text, every token counts"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ptx_adds_its_coefficient_times_the_nll_gradient(tmp_path, monkeypatch):
    """PPO-ptx: the step's gradient is grad L_ppo + ptx_coef * grad NLL(ptx rows). Two runs from the
    same weights and seed sample the same rollouts, so their policy gradients (taken just before the
    optimizer step) differ by exactly ptx_coef times the token-mean NLL gradient of the ptx rows,
    computed here with a plain forward and cross-entropy; the value head gets nothing from it."""
    import posttrain.rl.combined as combined
    from posttrain.models import load_model
    from posttrain.rl.loop import OnlineRun

    grads: dict[str, dict[str, torch.Tensor]] = {}
    seen_rows: list = []
    original_step, original_nll = OnlineRun.optimizer_step, combined.nll_backward

    def capture_step(self, step, loss):
        module = self.accelerator.unwrap_model(self.model)
        grads[self.cfg.output_dir] = {k: p.grad.detach().clone() for k, p in module.named_parameters()
                                      if p.grad is not None}
        return original_step(self, step, loss)

    def capture_nll(run, rows, *args, **kwargs):
        seen_rows.append(list(rows))
        return original_nll(run, rows, *args, **kwargs)

    monkeypatch.setattr(OnlineRun, "optimizer_step", capture_step)
    monkeypatch.setattr(combined, "nll_backward", capture_nll)
    coef, ptx = 0.5, str(_ptx_file(tmp_path))
    common = dict(value_model="shared", max_steps=1, ppo_epochs=1, prompts_per_step=6, micro_batch_size=3,
                  ptx_data=ptx, ptx_batch_size=8)
    off, on = (_config(tmp_path, ptx_coef=c, output_dir=str(tmp_path / f"ptx{c}"), **common) for c in (0.0, coef))
    train_ppo(off, {"lowercase": rl_toy.lowercase})
    assert seen_rows == []  # ptx_coef 0: no ptx pass at all
    train_ppo(on, {"lowercase": rl_toy.lowercase})
    assert len(seen_rows) == 1 and len(seen_rows[0]) == 4  # every row (batch size 8 > 4 rows), incl. the text row

    model = load_model("tiny-random", seed=on.seed)
    model.eval()
    nll, tokens = 0.0, 0
    for row in seen_rows[0]:
        ids = torch.tensor([row.prompt_ids + row.response_ids])
        logits = model(input_ids=ids).logits[0].float()
        start = len(row.prompt_ids)
        nll = nll + torch.nn.functional.cross_entropy(logits[start - 1:-1], ids[0, start:], reduction="sum")
        tokens += len(row.response_ids)
    (nll / tokens).backward()
    expected = {f"policy.{k}": p.grad for k, p in model.named_parameters() if p.grad is not None}

    g_off, g_on = grads[off.output_dir], grads[on.output_dir]
    assert set(expected) <= set(g_on)
    moved = 0.0
    for name, grad in expected.items():
        torch.testing.assert_close(g_on[name] - g_off[name], coef * grad, rtol=1e-3, atol=1e-6)
        moved += float(grad.abs().sum())
    assert moved > 0
    torch.testing.assert_close(g_on["value_head.weight"], g_off["value_head.weight"], rtol=0, atol=0)
    row = [r for r in read_metrics(Path(on.output_dir) / "metrics.jsonl") if "ptx_nll" in r][0]
    assert row["ptx_nll"] == pytest.approx(float(nll.detach()) / tokens, rel=1e-4)


def test_ptx_without_data_is_a_one_line_error(tmp_path, capsys):
    from posttrain.cli import main as cli

    code = cli(["ppo", "--model", "tiny-random", "--prompts", str(rl_toy.write_prompts(tmp_path)),
                "--output-dir", str(tmp_path / "x"), "--reward", "answer_format", "--no-progress", "--ptx-coef", "0.1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "ptx_coef > 0 needs data" in err and len(err.splitlines()) == 1, err
