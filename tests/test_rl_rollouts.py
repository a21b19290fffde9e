"""Rollout batches, prompt schedule and reward specs of posttrain.rl."""
from __future__ import annotations

import json

import pytest
import torch

from posttrain.errors import ConfigError, InputError
from posttrain.rl.loop import merge_repeated_flags, step_prompt_indices
from posttrain.rl.rewards import RewardScorerSet, RewardSpec, parse_reward_spec, parse_reward_specs, scorer_reward
from posttrain.rl.rollouts import Sample, collate, scoring_batches, split_even, store_tokens
from rl_toy import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sample(prompt, response, **tokens):
    return Sample(0, 0, list(prompt), list(response), "", "eos",
                  tokens={k: torch.tensor(v, dtype=torch.float32) for k, v in tokens.items()})


def test_collate_masks_exactly_the_response_tokens():
    samples = [_sample([5, 6, 7], [8, 9], old=[0.5, 0.25]),
               _sample([5], [10, 11, 12, 2], old=[1.0, 2.0, 3.0, 4.0])]
    samples[0].scalars["advantage"], samples[1].scalars["advantage"] = 1.5, -0.5
    batch = collate(samples, pad_id=3, token_fields=["old"], scalar_fields=["advantage"])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["response_mask"].tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    assert batch["old"].tolist() == [[0, 0, 0, 0.5, 0.25], [0, 1, 2, 3, 4]]
    assert batch["advantage"].tolist() == [1.5, -0.5]

    short = collate([_sample([5, 6], [8]), _sample([5, 6, 7, 7], [9, 9])], pad_id=3)
    assert short["input_ids"].tolist() == [[5, 6, 8, 3, 3, 3], [5, 6, 7, 7, 9, 9]]
    assert short["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    # Padding is neither attended to nor trained on; the prompt is attended to but not trained on.
    assert short["response_mask"].tolist() == [[False, False, True, False, False, False],
                                               [False, False, False, False, True, True]]


def test_store_tokens_is_the_inverse_of_collate():
    samples = [_sample([1, 2], [3, 4, 5]), _sample([1], [6])]
    batch = collate(samples, pad_id=0)
    values = torch.arange(batch["input_ids"].numel(), dtype=torch.float32).view(batch["input_ids"].shape)
    store_tokens(samples, "v", values, batch["response_mask"])
    assert samples[0].tokens["v"].tolist() == [2.0, 3.0, 4.0]
    assert samples[1].tokens["v"].tolist() == [6.0]
    again = collate(samples, pad_id=0, token_fields=["v"])
    assert torch.equal(again["v"], torch.where(batch["response_mask"], values, 0.0))


def test_scoring_batches_run_in_eval_mode_without_gradients_and_restore_the_mode():
    class Run:  # the two attributes scoring_batches reads
        model = torch.nn.Dropout(0.5)
        device = torch.device("cpu")

    run = Run()
    samples = [_sample([1, 2], [3]), _sample([4], [5, 6]), _sample([7], [8])]
    seen = []
    for micro, batch in scoring_batches(run, samples, 2, lambda micro: collate(micro, pad_id=0)):
        assert not run.model.training and not torch.is_grad_enabled()
        seen.append((len(micro), tuple(batch["input_ids"].shape)))
    assert seen == [(2, (2, 3)), (1, (1, 2))]
    assert run.model.training and torch.is_grad_enabled()
    for _ in scoring_batches(run, samples, 1, lambda micro: collate(micro, pad_id=0)):
        break  # leaving early restores the mode too
    assert run.model.training and torch.is_grad_enabled()
    run.model.eval()
    list(scoring_batches(run, samples, 2, lambda micro: collate(micro, pad_id=0)))
    assert not run.model.training  # an eval-mode model stays in eval mode


def test_training_logprobs_line_up_with_the_sampled_tokens():
    """Log-probs of a collated (right-padded) batch equal the sampler's own (left-padded, KV cache)."""
    from posttrain.models import load_model, load_tokenizer
    from posttrain.rl.online import batch_logprobs
    from posttrain.rl.rollouts import samples_from_generations
    from posttrain.rollout.generation import SamplingParams, generate

    model, tokenizer = load_model("tiny-random"), load_tokenizer("tiny-random", padding_side="left")
    prompts = [tokenizer("hello there")["input_ids"], tokenizer("a")["input_ids"], tokenizer("xyz 123 ok")["input_ids"]]
    generations = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=6, n=2, seed=3),
                           return_logprobs=True)
    samples = samples_from_generations(generations, [10, 11, 12])
    assert [s.prompt_index for s in samples] == [10, 10, 11, 11, 12, 12]
    batch = collate(samples, tokenizer.pad_token_id)
    with torch.no_grad():
        logps = batch_logprobs(model, batch, temperature=1.0).logprobs
    for row, (sample, generation) in enumerate(zip(samples, generations)):
        ours = logps[row][batch["response_mask"][row]]
        assert ours.shape[0] == sample.length
        assert torch.allclose(ours, torch.tensor(generation.logprobs), atol=1e-4)


def test_sharing_the_prompt_cache_gives_the_same_samples():
    """share_prompt: each prompt prefilled once, its KV cache copied to the n samples; the
    random draws and the model's numbers are those of prefilling it n times."""
    from posttrain.models import load_model, load_tokenizer
    from posttrain.rollout.generation import SamplingParams, generate

    model, tokenizer = load_model("tiny-random"), load_tokenizer("tiny-random", padding_side="left")
    prompts = [tokenizer("What is 2 + 2?" + " x" * i)["input_ids"] for i in range(5)] + [tokenizer("a")["input_ids"]]
    params = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.95, n=3, seed=11)
    plain = generate(model, tokenizer, prompts, params, batch_size=4, return_logprobs=True)
    shared = generate(model, tokenizer, prompts, params, batch_size=4, return_logprobs=True, share_prompt=True)
    assert [g.response_ids for g in shared] == [g.response_ids for g in plain]
    for a, b in zip(plain, shared):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_prompt_schedule_is_deterministic_and_disjoint_across_processes():
    steps = [[step_prompt_indices(10, 2, 2, rank, seed=1, step=s) for rank in (0, 1)] for s in range(4)]
    assert steps == [[step_prompt_indices(10, 2, 2, rank, seed=1, step=s) for rank in (0, 1)] for s in range(4)]
    first_epoch = [i for s in steps[:2] for part in s for i in part]
    assert len(first_epoch) == len(set(first_epoch)) == 8  # 10 // 4 = 2 steps per epoch, no repeats
    assert steps[2] != steps[0]  # a new epoch reshuffles
    with pytest.raises(ConfigError, match="prompts_per_step"):
        step_prompt_indices(3, 2, 2, 0, seed=0, step=0)


def test_split_even_and_repeated_flags():
    assert split_even(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_even([1, 2], 5) == [[1], [2]]
    argv = ["--reward", "a", "--n", "2", "--reward", "b:0.5", "c", "--reward=d"]
    assert merge_repeated_flags(argv, "--reward") == ["--n", "2", "--reward", "a", "b:0.5", "c", "d"]


def test_prompt_length_policy(tmp_path):
    from posttrain.data.prompts import load_prompts
    from posttrain.models import load_tokenizer
    from posttrain.rl.rollouts import render_prompt_ids

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"prompt": "x" * 200}) + "\n")
    prompts, tokenizer = load_prompts(path), load_tokenizer("tiny-random")
    ids, kept = render_prompt_ids(prompts, tokenizer, "auto", 64, "drop")
    assert kept == [0]
    ids, kept = render_prompt_ids(prompts, tokenizer, "auto", 64, "truncate")
    assert kept == [0, 1] and len(ids[1]) == 64
    with pytest.raises(InputError, match=r"p.jsonl:2: field 'prompt'"):
        render_prompt_ids(prompts, tokenizer, "auto", 64, "error")


# --------------------------------------------------------------------------- reward specs


def test_reward_spec_parsing():
    assert parse_reward_spec("math") == RewardSpec("math", 1.0)
    assert parse_reward_spec("math:0.5") == RewardSpec("math", 0.5)
    assert parse_reward_spec("pkg.mod:fn") == RewardSpec("pkg.mod:fn", 1.0)
    assert parse_reward_spec("pkg.mod:fn:-2") == RewardSpec("pkg.mod:fn", -2.0)
    assert parse_reward_spec("rm:runs/rm") == RewardSpec("rm:runs/rm", 1.0)
    assert parse_reward_spec("rm:runs/rm:0.25") == RewardSpec("rm:runs/rm", 0.25)
    specs = parse_reward_specs(["math:1"], {"answer_format": 0.2})
    assert specs == [RewardSpec("math", 1.0), RewardSpec("answer_format", 0.2)]
    with pytest.raises(ConfigError, match="more than once"):
        parse_reward_specs(["math", "math:2"])
    with pytest.raises(ConfigError, match="at least one reward"):
        parse_reward_specs([])


def test_weighted_rewards_total_and_components():
    from rl_toy import lowercase, short

    scorer = RewardScorerSet([RewardSpec("lower", 2.0), RewardSpec("short", 0.5)], {"lower": lowercase, "short": short})
    rows = [{"prompt": [{"role": "user", "content": "q"}], "response": "ab", "id": 1},
            {"prompt": [{"role": "user", "content": "q"}], "response": "aB#zzz", "id": 2}]
    result = scorer.score(rows)
    assert result.scores["lower"] == [1.0, 4 / 6]
    assert result.scores["short"] == [1.0, 0.0]
    assert result.total == pytest.approx([2.0 + 0.5, 2 * 4 / 6])


def test_reward_model_through_the_adapter_with_a_fake_scorer(tmp_path):
    """A reward model (anything with a batched `score(prompts, responses)`) gets whole conversations."""
    seen = {}

    class FakeScorer:
        def score(self, prompts, responses):
            seen["prompts"], seen["responses"] = prompts, responses
            return [float(len(r)) for r in responses]

    loaded = []

    def loader(path):
        loaded.append(path)
        return FakeScorer()

    (tmp_path / "rm").mkdir()
    scorer = RewardScorerSet([RewardSpec("rm:some/dir", 1.0), RewardSpec(str(tmp_path / "rm"), 0.5)],
                             scorer_loader=loader)
    assert loaded == ["some/dir", str(tmp_path / "rm")]
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    result = scorer.score([{"prompt": prompt, "response": "abc"}, {"prompt": prompt, "response": "a"}])
    assert result.total == [3.0 + 1.5, 1.0 + 0.5]
    assert seen["prompts"][0] == prompt  # the system turn reaches the reward model
    # A plain callable scorer(messages, response) works too.
    single = scorer_reward(lambda messages, response: len(messages) * 10 + len(response))
    assert single("q", "xy") == 12.0
