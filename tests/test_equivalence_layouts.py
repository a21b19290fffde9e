"""Speed techniques give the plain path's loss AND gradients (float tolerance), on tiny-random.

- SFT: logits only at response positions (`nll_sum`) == the model's own full-logits
  cross-entropy; packing (block mask or restarting position ids) and one padding-free
  row == one padded row per example.
- Reward model: the prompt computed once per group (`shared_prompt`) == one padded row
  per (prompt, response).
- DPO: cached reference log-probs == a live frozen reference, with the batch's examples
  out of order (the cache is read by example index).
(DPO padding-free and prefix sharing: tests/test_dpo_batch.py; chunked log-probs:
tests/test_models_logprobs.py; gradient checkpointing: test_equivalence_checkpointing.py.)
"""
from __future__ import annotations

import pytest
import torch

from posttrain.data import TokenizedExample, pack_examples, packed_collate, pad_collate, padding_free_collate
from posttrain.models import ScalarHeadModel, load_model
from posttrain.train.sft import nll_sum


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def loss_and_grads(model, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), grads(model)


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    assert max(g.abs().max() for g in grads_a.values()) > 1e-3  # not two zero gradients


def random_ids(generator, n):
    return torch.randint(4, 260, (n,), generator=generator).tolist()


# --------------------------------------------------------------------------- SFT


@pytest.fixture(scope="module")
def sft_examples():
    generator = torch.Generator().manual_seed(0)
    out = []
    for prompt, response in ((5, 3), (9, 7), (2, 11), (14, 4), (6, 6)):
        ids = random_ids(generator, prompt + response)
        out.append(TokenizedExample(ids, [-100] * prompt + ids[prompt:]))
    return out


def test_sft_response_only_logits_equal_full_logits_cross_entropy(sft_examples):
    model = load_model("tiny-random", seed=1)
    batch = pad_collate(sft_examples, pad_id=3)
    count = int((batch["labels"][:, 1:] != -100).sum())

    def full_logits():  # the model's own loss: logits at every position, mean over label tokens
        return model(**batch, use_cache=False).loss * count

    assert_same(loss_and_grads(model, lambda: nll_sum(model, batch).loss_sum), loss_and_grads(model, full_logits))


@pytest.mark.parametrize("layout", ["packed-4d", "packed-position-ids", "padding-free-4d", "padding-free-position-ids"])
def test_sft_packing_and_padding_free_equal_padded_loss_and_gradients(sft_examples, layout):
    model = load_model("tiny-random", seed=2)
    attention = "4d" if layout.endswith("4d") else "position_ids"
    if layout.startswith("packed"):
        packs = pack_examples(sft_examples, max_length=24)
        assert 1 < len(packs) < len(sft_examples)
        batch = packed_collate(packs, pad_id=3, attention=attention)
    else:
        batch = padding_free_collate(sft_examples, attention=attention)
        assert batch["input_ids"].shape == (1, sum(len(e) for e in sft_examples))
    padded = pad_collate(sft_examples, pad_id=3)
    assert_same(loss_and_grads(model, lambda: nll_sum(model, batch).loss_sum),
                loss_and_grads(model, lambda: nll_sum(model, padded).loss_sum))


# --------------------------------------------------------------------------- reward model


def reward_groups():
    from posttrain.train.reward_batch import RewardGroup

    generator = torch.Generator().manual_seed(4)
    ids = lambda n: random_ids(generator, n)  # noqa: E731
    return [RewardGroup(ids(6), [ids(3), ids(5)], ranks=[0, 1]),
            RewardGroup(ids(2), [ids(7), ids(2), ids(4)], ranks=[2, 0, 1]),
            RewardGroup(ids(9), [ids(1), ids(6)], ranks=[1, 0], margin=0.5)]


@pytest.mark.parametrize("use_margin", [False, True])
def test_reward_shared_prompt_equals_padded_loss_and_gradients(use_margin):
    from posttrain.train.reward import RMConfig, make_loss
    from posttrain.train.reward_batch import collate_groups

    model = ScalarHeadModel.from_causal_lm(load_model("tiny-random", seed=5), seed=5)
    compute = make_loss(RMConfig(model="tiny-random", use_margin=use_margin))
    groups = reward_groups()
    shared, padded = collate_groups(groups, "shared_prompt", 3), collate_groups(groups, "padded", 3)
    assert shared["input_ids"].shape[0] == len(groups) and padded["input_ids"].shape[0] == 7
    assert_same(loss_and_grads(model, lambda: compute(model, shared).loss_sum),
                loss_and_grads(model, lambda: compute(model, padded).loss_sum))


# --------------------------------------------------------------------------- DPO cached reference


def test_dpo_cached_reference_equals_live_reference_loss_and_gradients():
    from posttrain.train.dpo import make_loss
    from posttrain.train.preference_batch import BatchLayout
    from posttrain.train.preference_data import PairExample
    from posttrain.train.reference import CachedReference, CopyReference

    generator = torch.Generator().manual_seed(6)
    ids = lambda n: random_ids(generator, n)  # noqa: E731
    examples = [PairExample(ids(3 + i), ids(2 + i % 3), ids(5 - i % 2), index=i) for i in range(5)]
    reference_model = load_model("tiny-random", seed=7)
    policy = load_model("tiny-random", seed=7)
    with torch.no_grad():  # the policy has moved away from the reference
        for param in policy.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    layout = BatchLayout(pad_id=3, padding_free=True)
    live = CopyReference(reference_model)
    # The cache: one row per example, [chosen, rejected], computed once in example order.
    table = live.logps(None, layout.pairs(examples), (0, 1)).view(2, -1).T
    cached = CachedReference(table)
    batch = layout.pairs([examples[i] for i in (3, 0, 4)])  # a micro-batch out of order
    components = {"sigmoid": 1.0}
    with_live = make_loss(components, {"sigmoid": {"beta": 0.5}}, live)
    with_cache = make_loss(components, {"sigmoid": {"beta": 0.5}}, cached)
    torch.testing.assert_close(cached.logps(policy, batch, (0, 1)), live.logps(policy, batch, (0, 1)),
                               rtol=1e-6, atol=1e-5)
    assert_same(loss_and_grads(policy, lambda: with_cache(policy, batch).loss_sum),
                loss_and_grads(policy, lambda: with_live(policy, batch).loss_sum))
