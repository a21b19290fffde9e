"""Speed techniques give the plain path's loss AND gradients (float tolerance), on tiny-random.

- SFT: logits only at response positions (`nll_sum`) == the model's own full-logits
  cross-entropy; packing (block mask or restarting position ids) and one padding-free
  row == one padded row per example.
- Reward model: the prompt computed once per group (`shared_prompt`) == one padded row
  per (prompt, response).
- DPO: cached reference log-probs == a live frozen reference, with the batch's examples
  out of order (the cache is read by example index).
- The defaults (`--layout auto`): DPO picks shared_prompt_padding_free on short pairs, SFT
  padding_free, the RM shared_prompt; each fast layout (with its float 4D mask) == padded,
  full and LoRA; the fused, chunked head (response_logprobs' default) == the unfused head.
(More DPO layout checks: tests/test_dpo_batch.py; chunked log-probs:
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


def assert_same(a, b, rtol=1e-5, atol=1e-6, grad_atol=1e-6):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=grad_atol, msg=lambda m: f"{name}: {m}")
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
    from posttrain.train.reference import CachedReference, copy_reference

    generator = torch.Generator().manual_seed(6)
    ids = lambda n: random_ids(generator, n)  # noqa: E731
    examples = [PairExample(ids(3 + i), ids(2 + i % 3), ids(5 - i % 2), index=i) for i in range(5)]
    reference_model = load_model("tiny-random", seed=7)
    policy = load_model("tiny-random", seed=7)
    with torch.no_grad():  # the policy has moved away from the reference
        for param in policy.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    layout = BatchLayout(pad_id=3, padding_free=True)
    live = copy_reference(reference_model)
    # The cache: one row per example, [chosen, rejected], computed once in example order.
    table = live.sequence_logps(layout.pairs(examples), (0, 1)).view(2, -1).T
    cached = CachedReference(table)
    batch = layout.pairs([examples[i] for i in (3, 0, 4)])  # a micro-batch out of order
    components = {"sigmoid": 1.0}
    with_live = make_loss(components, {"sigmoid": {"beta": 0.5}}, live)
    with_cache = make_loss(components, {"sigmoid": {"beta": 0.5}}, cached)
    torch.testing.assert_close(cached.sequence_logps(batch, (0, 1)), live.sequence_logps(batch, (0, 1)),
                               rtol=1e-6, atol=1e-5)
    assert_same(loss_and_grads(policy, lambda: with_cache(policy, batch).loss_sum),
                loss_and_grads(policy, lambda: with_live(policy, batch).loss_sum))


# --------------------------------------------------------------------------- the default layouts


def dpo_pairs(seed=8, count=5):
    from posttrain.train.preference_data import PairExample

    generator = torch.Generator().manual_seed(seed)
    ids = lambda n: random_ids(generator, n)  # noqa: E731
    return [PairExample(ids(3 + 2 * i), ids(2 + i % 3), ids(6 - i % 2), index=i) for i in range(count)]


def test_dpo_default_layout_is_chosen_automatically_and_is_the_fast_one():
    from posttrain.train.dpo import DPOConfig
    from posttrain.train.layout_cost import ATTENTION_SLOWDOWN, CostModel
    from posttrain.train.preference_batch import LAYOUTS, layout_name, pair_layout_cost, resolve_layout

    model = load_model("tiny-random", seed=9)
    padding_free, prefix_sharing, line = resolve_layout(DPOConfig(model="tiny-random", batch_size=4), model, dpo_pairs())
    assert prefix_sharing and line.startswith(f"layout: {layout_name(padding_free, prefix_sharing)} (auto: estimated")
    # SmolLM2-135M's costs (6 x 106.2M block weights per token; 12 x 30 layers x 576 x ATTENTION_SLOWDOWN per
    # query-key pair): on short pairs every fast layout beats padded and the fastest is the default
    smollm2 = CostModel(linear=6 * 106_168_320, attention=12 * 30 * 576 * ATTENTION_SLOWDOWN)
    relative = {name: pair_layout_cost(smollm2, name, dpo_pairs()) / pair_layout_cost(smollm2, "padded", dpo_pairs())
                for name in LAYOUTS}
    assert min(relative, key=relative.get) == "shared_prompt_padding_free"
    assert relative["padded"] == 1.0 and all(value < 1.0 for name, value in relative.items() if name != "padded")
    # the plain path on request, and the older flags
    assert resolve_layout(DPOConfig(layout="padded"), model, dpo_pairs())[:2] == (False, False)
    assert resolve_layout(DPOConfig(padding_free=True), model, dpo_pairs())[:2] == (True, False)
    # flash-attention cannot take a 4D mask: padding-free rows by position ids, no prompt sharing
    flash = DPOConfig(model="tiny-random", batch_size=4, attn_implementation="flash_attention_2")
    assert resolve_layout(flash, model, dpo_pairs())[:2] == (True, False)


def test_layout_rule_prefers_padded_rows_when_one_dense_row_would_be_quadratic():
    from posttrain.train.layout_cost import CostModel, choose_layout, padded_cost, padding_free_cost

    costs = CostModel(linear=600.0, attention=1.0)  # one token costs as much as 600 query-key pairs
    candidates = {"padded": lambda rows: padded_cost(costs, rows), "padding_free": lambda rows: padding_free_cost(costs, rows)}
    # short rows of mixed length: padding costs more than the dense mask
    assert choose_layout(candidates, [40, 100, 60, 80], 4, "padded")[0] == "padding_free"
    # long rows of equal length: no padding to save, the N^2 mask only costs
    name, relative = choose_layout(candidates, [2000, 2000, 2000, 2000], 4, "padded")
    assert name == "padded" and relative["padding_free"] > 1.5


@pytest.mark.parametrize("peft", [None, "lora"])
@pytest.mark.parametrize("name", ["padding_free", "shared_prompt", "shared_prompt_padding_free"])
def test_dpo_layouts_equal_padded_loss_and_gradients(name, peft):
    from posttrain.models import apply_peft
    from posttrain.train.dpo import make_loss
    from posttrain.train.preference_batch import LAYOUTS, BatchLayout
    from posttrain.train.reference import copy_reference

    model = load_model("tiny-random", seed=10)
    if peft:
        model = apply_peft(model, "lora", r=4, dropout=0.0)
        with torch.no_grad():  # LoRA B starts at zero: move it so the adapter's gradients are not trivially equal
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    reference = copy_reference(load_model("tiny-random", seed=11))
    loss = make_loss({"sigmoid": 1.0}, {"sigmoid": {"beta": 0.5}}, reference)
    examples = dpo_pairs()
    padding_free, prefix_sharing = LAYOUTS[name]
    fast = BatchLayout(pad_id=3, padding_free=padding_free, prefix_sharing=prefix_sharing, mask_style="float").pairs(examples)
    plain = BatchLayout(pad_id=3).pairs(examples)
    assert plain["attention_mask"].dim() == 2 and fast["attention_mask"].dtype == torch.float32
    assert_same(loss_and_grads(model, lambda: loss(model, fast).loss_sum),
                loss_and_grads(model, lambda: loss(model, plain).loss_sum))


def test_sft_default_layout_equals_padded_loss_and_gradients(sft_examples):
    from posttrain.train.sft import SFTConfig, collate_fn, resolve_layout

    model = load_model("tiny-random", seed=12)
    tokenizer = type("Tok", (), {"pad_token_id": 3})()
    padding_free, line = resolve_layout(SFTConfig(model="tiny-random", batch_size=5), model, sft_examples)
    assert padding_free and line.startswith("layout: padding_free (auto:")
    fast = collate_fn(tokenizer, False, padding_free, "sdpa", torch.float32)(sft_examples)
    assert fast["input_ids"].shape[0] == 1 and fast["attention_mask"].dtype == torch.float32  # one float mask for all layers
    plain = collate_fn(tokenizer, False, False)(sft_examples)
    assert_same(loss_and_grads(model, lambda: nll_sum(model, fast).loss_sum),
                loss_and_grads(model, lambda: nll_sum(model, plain).loss_sum))


@pytest.mark.parametrize("peft", [None, "lora"])
def test_fused_head_default_equals_unfused_head_loss_and_gradients(sft_examples, peft):
    """response_logprobs' default (fused, chunked head; with a frozen head the hidden-state
    gradient is made in forward) == projecting every response row at once (chunk_size=None)."""
    from posttrain.models import apply_peft, response_logprobs

    model = load_model("tiny-random", seed=13)
    if peft:
        torch.manual_seed(13)  # the adapter's init, whatever ran before in this process
        model = apply_peft(model, "lora", r=4, dropout=0.0)
    batch = pad_collate(sft_examples, pad_id=3)
    mask = batch["labels"] != -100
    weights = torch.linspace(0.5, 1.5, mask.numel()).reshape(mask.shape)

    def loss(chunk_size):
        out = response_logprobs(model, batch["input_ids"], batch["attention_mask"], response_mask=mask,
                                chunk_size=chunk_size, return_entropy=True)
        return (out.logprobs * weights).sum() + 0.1 * out.entropy.sum()

    # float32 summation order differs (the hidden-state gradient is formed in forward): 1e-5 on gradients of ~1e-2
    assert_same(loss_and_grads(model, lambda: loss("auto")), loss_and_grads(model, lambda: loss(None)), grad_atol=1e-5)
    assert_same(loss_and_grads(model, lambda: loss(2)), loss_and_grads(model, lambda: loss(None)), grad_atol=1e-5)


def test_reward_model_default_layout_is_shared_prompt():
    from posttrain.train.reward_batch import resolve_layout

    model = ScalarHeadModel.from_causal_lm(load_model("tiny-random", seed=5), seed=5)
    assert resolve_layout("auto", "sdpa", model) == "shared_prompt"
    assert resolve_layout("auto", "flash_attention_2", model) == "padded"
