"""Per-sample seeded sampling (`rollout.seeded`, `generate(..., prompt_seeds=...)`): what makes
online RL on N processes sample what one process samples."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from posttrain.rollout.generation import SamplingParams, generate
from posttrain.rollout.seeded import SeededSampler


@pytest.fixture(scope="module")
def tiny():
    from posttrain.models import load_model, load_tokenizer

    return load_model("tiny-random", seed=1), load_tokenizer("tiny-random", padding_side="left")


def test_a_prompts_samples_do_not_depend_on_its_batch(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode(f"Say something {i} " * (1 + i % 3)) for i in range(6)]  # mixed lengths: padding
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.95, top_k=50, n=3)
    seeds = [100 + i for i in range(6)]
    together = generate(model, tokenizer, prompts, params, batch_size=4, share_prompt=True, prompt_seeds=seeds)
    alone = generate(model, tokenizer, prompts[3:], params, batch_size=2, share_prompt=False, prompt_seeds=seeds[3:])
    assert [g.response_ids for g in together[9:]] == [g.response_ids for g in alone]
    assert len({tuple(g.response_ids) for g in together}) == 18  # n samples of a prompt differ
    other = generate(model, tokenizer, prompts[3:], params, batch_size=2, prompt_seeds=[7, 8, 9])
    assert [g.response_ids for g in other] != [g.response_ids for g in alone]


def test_seeded_sampler_samples_the_warped_distribution():
    """The processor's pick ~ p: token frequencies over many seeded rows match softmax(logits / T)
    after top-k (chi-square, 5 degrees of freedom)."""
    from scipy.stats import chisquare

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -0.5, 3.0, -4.0])
    rows, temperature, top_k = 20_000, 0.7, 6
    sampler = SeededSampler(range(rows), temperature=temperature, top_k=top_k)
    picks = sampler(torch.zeros((rows, 1), dtype=torch.long), logits.expand(rows, -1).clone()).argmax(-1)
    kept = logits.topk(top_k).indices
    probs = torch.softmax(logits[kept].double() / temperature, -1)
    counts = torch.bincount(picks, minlength=len(logits))
    assert counts.sum() == counts[kept].sum()  # nothing outside the top k
    assert chisquare(counts[kept].double().numpy(), (probs * rows).numpy()).pvalue > 1e-3
    # The same seeds draw the same tokens; other seeds other tokens.
    again = SeededSampler(range(rows), temperature=temperature, top_k=top_k)
    assert torch.equal(again(torch.zeros((rows, 1), dtype=torch.long), logits.expand(rows, -1).clone()).argmax(-1), picks)


def test_seeded_sampler_with_top_p_never_picks_a_filtered_token():
    """top-p leaves a few tokens; every pick is one of them, also for the uniforms closest to 1."""
    logits = torch.tensor([5.0, 4.0, -3.0, -3.0, -6.0, -8.0])
    rows = 5_000
    sampler = SeededSampler(range(rows), temperature=1.0, top_p=0.9)
    out = sampler(torch.zeros((rows, 1), dtype=torch.long), logits.expand(rows, -1).clone())
    picks = out.argmax(-1)
    assert set(picks.tolist()) <= {0, 1}
    assert torch.isinf(out).sum(-1).eq(len(logits) - 1).all()  # exactly one finite entry per row



def test_shared_prompt_generation_uses_the_current_cache_name():
    """transformers 5.2x renamed `past_key_values` to `cache` and logs a deprecation line for the
    old name; a run should not print it (users read it as our bug). A fresh process: the line is
    logged once per process, and pytest's own capture hides the library's handler."""
    script = ("from posttrain.models import load_model, load_tokenizer\n"
              "from posttrain.rollout.generation import SamplingParams, generate\n"
              "m = load_model('tiny-random', seed=1); t = load_tokenizer('tiny-random', padding_side='left')\n"
              "out = generate(m, t, [t.encode('Say something')], SamplingParams(max_new_tokens=4, n=2),\n"
              "               share_prompt=True, prompt_seeds=[1])\n"
              "assert len(out) == 2\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecated" not in done.stderr, done.stderr[-2000:]
