"""The preference batch path: hand-checked masks and positions; every layout gives the same
per-sequence log-probs, loss and gradients as scoring each sequence alone."""
from __future__ import annotations

import pytest
import torch

from posttrain.losses import dpo_loss
from posttrain.models import load_model
from posttrain.models.logprobs import naive_response_logprobs
from posttrain.train.preference_batch import BatchLayout, layout_batch, plain_group, sequence_logps, shared_prompt_group
from posttrain.train.preference_data import PairExample


def test_shared_prompt_layout_mask_and_positions_by_hand():
    group = shared_prompt_group([10, 11, 12], [[20, 21], [30]], [0, 1])
    batch = layout_batch([group], 2, pad_id=3, padding_free=True)
    # [10 11 | 12 20 21 | 12 30]: the last prompt token opens each branch at position 2.
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 12, 30]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3]]
    assert batch["sequence_index"].tolist() == [[-1, -1, -1, 0, 0, -1, 1]]
    assert batch["lengths"].tolist() == [2, 1]
    expected = [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],  # last prompt token, chosen branch
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 0],  # its copy opens the rejected branch: sees the shared head, not chosen
        [1, 1, 0, 0, 0, 1, 1],
    ]
    assert batch["attention_mask"][0, 0].int().tolist() == expected


def test_padding_free_row_is_two_blocks_and_has_no_padding():
    groups = [plain_group([5, 6], [7], 0), plain_group([8], [9, 10], 1)]
    batch = layout_batch(groups, 2, pad_id=3, padding_free=True, mask_style="float")
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2]]
    allowed = batch["attention_mask"][0, 0] == 0
    assert allowed[3].tolist() == [False, False, False, True, False, False]  # a new sequence sees only itself
    assert batch["tokens"] == 6
    padded = layout_batch(groups, 2, pad_id=3)
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]] and padded["tokens"] == 6


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random", seed=3)


def pairs():
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(4, 260, (n,), generator=g).tolist()  # noqa: E731
    return [PairExample(ids(4 + 3 * i), ids(2 + 2 * i), ids(6 - i), index=i) for i in range(3)]


def alone(model, prompt, response):
    """Reference: one sequence, full logits, full log-softmax."""
    ids = torch.tensor([prompt + response])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, len(prompt):] = True
    return naive_response_logprobs(model, ids, torch.ones_like(ids), response_mask=mask).sum()


LAYOUTS = [dict(), dict(padding_free=True), dict(prefix_sharing=True), dict(padding_free=True, prefix_sharing=True),
           dict(prefix_sharing=True, mask_style="float")]


def run(model, layout, examples):
    model.zero_grad()
    out = sequence_logps(model, layout.pairs(examples), mean_logits=True)
    b = len(examples)
    ref = torch.linspace(-40, -20, 2 * b)  # any fixed reference log-probs
    loss = dpo_loss(out.logps[:b], out.logps[b:], ref[:b], ref[b:], beta=0.5).losses.sum()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return out, loss.detach(), grads


@pytest.mark.parametrize("options", LAYOUTS, ids=lambda o: "-".join(k for k in o if o[k] is True) or o.get("mask_style", "padded"))
def test_every_layout_equals_scoring_each_sequence_alone(model, options):
    examples = pairs()
    expected = torch.stack([alone(model, e.prompt_ids, e.chosen_ids) for e in examples]
                           + [alone(model, e.prompt_ids, e.rejected_ids) for e in examples]).detach()
    out, _, _ = run(model, BatchLayout(pad_id=3, **options), examples)
    torch.testing.assert_close(out.logps.detach(), expected, rtol=1e-5, atol=1e-4)
    assert out.lengths.tolist() == [len(e.chosen_ids) for e in examples] + [len(e.rejected_ids) for e in examples]


@pytest.mark.parametrize("options", LAYOUTS[1:], ids=["padding_free", "prefix_sharing", "both", "prefix_float_mask"])
def test_layouts_give_the_same_loss_and_gradients_as_the_padded_path(model, options):
    examples = pairs()
    base_out, base_loss, base_grads = run(model, BatchLayout(pad_id=3), examples)
    out, loss, grads = run(model, BatchLayout(pad_id=3, **options), examples)
    torch.testing.assert_close(loss, base_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mean_logits, base_out.mean_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads, base_grads, rtol=1e-4, atol=1e-6)
    assert base_grads.abs().max() > 1e-3  # the comparison is not between two zero vectors


def test_prefix_sharing_puts_fewer_tokens_through_the_model():
    examples = pairs()
    plain, shared = BatchLayout(pad_id=3), BatchLayout(pad_id=3, prefix_sharing=True)
    assert shared.pairs(examples)["tokens"] == sum(shared.pair_tokens(e) for e in examples)
    assert plain.pairs(examples)["tokens"] - shared.pairs(examples)["tokens"] == sum(len(e.prompt_ids) - 1 for e in examples)
