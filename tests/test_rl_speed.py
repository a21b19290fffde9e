"""The online-RL speed levers, each against the plain path (docs/benchmarks.md, "Online RL")."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rl_toy
from posttrain.rl.grpo import GRPOConfig, train_grpo
from posttrain.rl.rollouts import Sample, collate
from posttrain.train.metrics import read_metrics
from rl_toy import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tree_samples(tokenizer):
    """Two prompts with 3 and 2 samples of different lengths (one of 1 token), interleaved, and a singleton."""
    a, b, c = (tokenizer(t)["input_ids"] for t in ("What is 2 + 2?", "Sort 3 1 2 please", "x"))
    rows = [(a, [5, 6, 7, 8]), (b, [9, 10]), (a, [11]), (c, [12, 13, 14]), (a, [15, 16, 17, 18, 19, 2]), (b, [20, 21, 22])]
    return [Sample(i, i, list(p), list(r), "", "eos") for i, (p, r) in enumerate(rows)]


@pytest.mark.parametrize("peft", ["none", "lora"])
@pytest.mark.parametrize("layout", ["shared_prompt", "shared_prompt_padding_free"])
def test_shared_prompt_layout_equals_the_plain_path(peft, layout):
    """The training forward with each prompt computed once (`tree_layout`) gives the plain padded
    forward's per-token log-probs, entropies and parameter gradients, full and LoRA."""
    from posttrain.models import load_model, load_tokenizer
    from posttrain.models.peft import apply_peft
    from posttrain.rl.online import batch_logprobs
    from posttrain.rl.rollouts import tree_layout, tree_logprobs

    torch.manual_seed(0)
    model, tokenizer = load_model("tiny-random"), load_tokenizer("tiny-random", padding_side="left")
    if peft == "lora":
        model = apply_peft(model, "lora", r=4, dropout=0.0)
        for name, p in model.named_parameters():  # LoRA B starts at 0: make the adapter matter
            if "lora_B" in name:
                p.data.normal_(0, 0.1)
    samples = _tree_samples(tokenizer)
    batch = collate(samples, tokenizer.pad_token_id)
    tree = {**batch, **tree_layout(samples, tokenizer.pad_token_id, layout.endswith("padding_free"))}
    assert tree["tree_input_ids"].numel() < batch["input_ids"].numel()  # fewer tokens than the padded rows
    weights = torch.randn(batch["input_ids"].shape)
    results = []
    for run in (lambda: batch_logprobs(model, batch, 0.7, entropy=True), lambda: tree_logprobs(model, tree, 0.7, True)):
        model.zero_grad(set_to_none=True)
        out = run()
        ((out.logprobs * weights).sum() + out.entropy.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.logprobs.detach(), out.entropy.detach(), grads))
    (plain_lp, plain_h, plain_g), (tree_lp, tree_h, tree_g) = results
    assert torch.allclose(tree_lp, plain_lp, atol=1e-5) and torch.allclose(tree_h, plain_h, atol=1e-5)
    assert torch.equal(tree_lp != 0, batch["response_mask"])
    assert plain_g.keys() == tree_g.keys() and plain_g
    for name in plain_g:
        assert torch.allclose(tree_g[name], plain_g[name], atol=1e-5, rtol=1e-4), name


def test_layout_choice_prefers_sharing_long_prompts():
    from posttrain.rl.rollouts import choose_tree_layout, tree_row_lengths
    from posttrain.train.layout_cost import CostModel

    costs = CostModel(linear=6e6, attention=1e3)
    group = [Sample(0, i, list(range(50)), [1] * 20, "", "eos") for i in range(4)]
    assert tree_row_lengths(group, True) == [50 + 4 * 21] and tree_row_lengths(group, False) == [70] * 4
    assert choose_tree_layout(group, costs) != "padded"
    lonely = [Sample(i, 0, list(range(50 + i)), [1] * 20, "", "eos") for i in range(4)]  # no prompt shared
    assert choose_tree_layout(lonely, CostModel(linear=6e6, attention=1e7)) == "padded"


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_grpo_run_with_shared_prompts_equals_the_padded_run(tmp_path, peft):
    """Whole runs: the shared-prompt layout takes the plain layout's updates (same metrics step by step)."""
    rows = {}
    for layout in ("padded", "shared_prompt_padding_free"):
        cfg = GRPOConfig(model="tiny-random", prompts=str(rl_toy.write_prompts(tmp_path)), num_samples=4,
                         prompts_per_step=4, max_new_tokens=8, learning_rate=1e-3, max_steps=3, micro_batch_size=6,
                         kl_coef=0.1, peft=peft, rollout_layout=layout, output_dir=str(tmp_path / f"{peft}-{layout}"),
                         progress=False)
        train_grpo(cfg, {"lowercase": rl_toy.lowercase})
        rows[layout] = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "loss" in r]
    assert len(rows["padded"]) == 3
    for plain, shared in zip(rows["padded"], rows["shared_prompt_padding_free"]):
        assert shared["reward"] == pytest.approx(plain["reward"], abs=1e-6)
        for key in ("loss", "kl", "entropy", "grad_norm"):
            assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_ppo_actor_critic_on_the_shared_prompt_layout_equals_the_plain_path(value_model):
    """PPO's forward (log-probs, entropies and V of the state before each token) over the
    shared-prompt layout gives the plain padded forward's values and gradients, for a value head
    on the policy's backbone and for a separate critic."""
    from posttrain.models import load_model, load_tokenizer
    from posttrain.models.heads import ScalarHeadModel
    from posttrain.rl.ppo import ActorCritic
    from posttrain.rl.rollouts import tree_layout

    torch.manual_seed(0)
    tokenizer = load_tokenizer("tiny-random", padding_side="left")
    policy = load_model("tiny-random")
    if value_model == "shared":
        model = ActorCritic(policy, value_head=torch.nn.Linear(64, 1))
    else:
        model = ActorCritic(policy, critic=ScalarHeadModel.from_causal_lm(load_model("tiny-random", seed=1)))
    samples = _tree_samples(tokenizer)
    batch = collate(samples, tokenizer.pad_token_id)
    mask = batch["response_mask"]
    weights = torch.randn(3, *mask.shape) * mask  # the losses read response tokens only
    results = []
    for padding_free in (None, False, True):
        layout = {} if padding_free is None else tree_layout(samples, tokenizer.pad_token_id, padding_free)
        model.zero_grad(set_to_none=True)
        outputs = model({**batch, **layout}, 0.7)
        sum((out * w).sum() for out, w in zip(outputs, weights)).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(([out.detach() for out in outputs], grads))
    (plain, plain_grads), *trees = results
    for outputs, grads in trees:
        for got, want in zip(outputs, plain):
            assert torch.allclose(got[mask], want[mask], atol=1e-5)
        assert grads.keys() == plain_grads.keys()
        for name in plain_grads:
            assert torch.allclose(grads[name], plain_grads[name], atol=1e-5, rtol=1e-4), name


def test_ppo_run_with_shared_prompts_equals_the_padded_run(tmp_path, monkeypatch):
    """Whole PPO runs (G samples a prompt, two epochs, two minibatches drawn by whole groups): the
    shared-prompt layout takes the plain layout's updates (same metrics step by step)."""
    import posttrain.rl.ppo as ppo
    from posttrain.rl.ppo import PPOConfig, train_ppo

    tree_forwards = []
    original = ppo.tree_to_plain
    monkeypatch.setattr(ppo, "tree_to_plain", lambda batch: tree_forwards.append(1) or original(batch))
    rows, calls = {}, {}
    for layout in ("padded", "shared_prompt_padding_free"):
        cfg = PPOConfig(model="tiny-random", prompts=str(rl_toy.write_prompts(tmp_path)), num_samples=4,
                        prompts_per_step=4, max_new_tokens=8, learning_rate=1e-3, max_steps=3, micro_batch_size=6,
                        kl_coef=0.1, value_model="shared", ppo_epochs=2, num_minibatches=2, rollout_layout=layout,
                        output_dir=str(tmp_path / layout), progress=False)
        train_ppo(cfg, {"lowercase": rl_toy.lowercase})
        rows[layout] = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if "loss" in r]
        calls[layout] = len(tree_forwards)
    # 16 samples a step: 3 micro-batches of 6 in the rollout pass, 2 epochs x 2 minibatches of 8 x 2
    # micro-batches in the update; 3 steps: every forward of the second run went through the tree layout
    assert calls == {"padded": 0, "shared_prompt_padding_free": 3 * (3 + 2 * 2 * 2)}
    assert len(rows["padded"]) == 3
    for plain, shared in zip(rows["padded"], rows["shared_prompt_padding_free"]):
        assert shared["reward"] == pytest.approx(plain["reward"], abs=1e-6)
        for key in ("loss", "policy_loss", "value_loss", "kl", "entropy", "grad_norm", "explained_variance"):
            assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key


def test_minibatches_keep_a_prompts_samples_together():
    """`update_passes` shuffles whole groups, so every minibatch holds complete groups (the
    shared-prompt layout then computes each prompt once); with group size 1 it is the plain shuffle."""
    import random
    from types import SimpleNamespace

    from posttrain.rl.loop import update_passes

    seen = []
    run = SimpleNamespace(model=SimpleNamespace(train=lambda: None), scale=lambda d: 1.0, global_sum=lambda x: x,
                          backward_micro_batches=lambda collated, objective, last_syncs: [0.0],
                          optimizer_step=lambda step, loss: 0.0)
    samples = [(prompt, k) for prompt in range(6) for k in range(4)]
    for group_size in (4, 1):
        seen.clear()
        update_passes(run, samples, 3, epochs=2, minibatches=3, micro_batch_size=5, seed=0,
                      collate_micro=lambda micro: micro, denominator=lambda b: len(b),
                      micro_objective=None, group_size=group_size,
                      before_step=lambda plan: seen.append(plan.samples))
        assert len(seen) == 6 and all(len(m) == 8 for m in seen)
        if group_size == 4:
            for minibatch in seen:
                prompts = {p for p, _ in minibatch}
                assert len(prompts) == 2 and sorted(minibatch) == [(p, k) for p in sorted(prompts) for k in range(4)]
        else:  # the order of the old per-sample shuffle
            rng = random.Random(0 * 7_919 + 3)
            first = list(samples)
            rng.shuffle(first)
            assert seen[0] + seen[1] + seen[2] == first


def test_busy_cores_reads_proc_stat_deltas():
    from posttrain.rollout.threads import busy_cores, cpu_times

    assert busy_cores((100, 1000), (150, 1100), 2) == pytest.approx(1.0)  # half the jiffies busy on 2 cores
    assert busy_cores((100, 1000), (100, 1000), 2) == 0.0
    reading = cpu_times()
    assert reading is None or 0 <= reading[0] <= reading[1]


def test_thread_policy_leaves_busy_cores_alone(monkeypatch):
    from posttrain.rollout.threads import choose_cpu_threads, threads_for_load

    assert [threads_for_load(2, load) for load in (0.0, 0.9, 1.2, 10.5)] == [2, 2, 1, 1]
    assert threads_for_load(16, 4.3) == 12 and threads_for_load(1, 0.0) == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (50.0, 0.0, 0.0))
    monkeypatch.setattr("posttrain.rollout.threads.busy_cores_now", lambda cores: 2.0)
    with rl_toy.torch_threads(2):
        assert choose_cpu_threads()[0] == 1 and torch.get_num_threads() == 1
    # A load average left by a job that just ended, with the cores idle now: both threads.
    monkeypatch.setattr("posttrain.rollout.threads.busy_cores_now", lambda cores: 0.1)
    with rl_toy.torch_threads(2):
        assert choose_cpu_threads()[0] == 2
    # Off Linux (no /proc/stat) the load average alone decides.
    monkeypatch.setattr("posttrain.rollout.threads.busy_cores_now", lambda cores: None)
    with rl_toy.torch_threads(2):
        assert choose_cpu_threads()[0] == 1
    with rl_toy.torch_threads(1):  # never raised above what the caller set
        monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
        assert choose_cpu_threads()[0] == 1
        assert choose_cpu_threads(2)[0] == 2 and torch.get_num_threads() == 2  # --threads 2 is taken as given
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with rl_toy.torch_threads(2):
        assert choose_cpu_threads() == (2, "OMP_NUM_THREADS")
