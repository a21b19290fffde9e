"""Packing and collation: positions restart, attention stays inside each example, and the
loss of a packed batch equals the loss of the same examples run one by one."""
from __future__ import annotations

import pytest
import torch

from posttrain.data.collate import block_causal_mask, packed_collate, pad_collate, padding_free_collate, segment_ids
from posttrain.data.packing import pack_examples, packing_efficiency
from posttrain.data.tokenize import IGNORE_INDEX, TokenizedExample
from posttrain.errors import PosttrainError


def example(n: int, start: int = 10, trained_from: int = 0) -> TokenizedExample:
    ids = list(range(start, start + n))
    return TokenizedExample(ids, [IGNORE_INDEX] * trained_from + ids[trained_from:])


def test_first_fit_decreasing_packs_and_positions_restart():
    examples = [example(3, 10), example(6, 20), example(2, 30), example(5, 40)]
    packs = pack_examples(examples, max_length=8)
    # Longest first: 6 -> pack A, 5 -> pack B, 3 -> B (8), 2 -> A (8).
    assert [p.lengths for p in packs] == [[6, 2], [5, 3]]
    assert packs[0].input_ids == list(range(20, 26)) + [30, 31]
    assert packs[0].position_ids == [0, 1, 2, 3, 4, 5, 0, 1]
    # The first token of each packed example is never a target.
    assert packs[0].labels == [IGNORE_INDEX] + list(range(21, 26)) + [IGNORE_INDEX, 31]
    assert packing_efficiency(packs, 8) == 1.0


def test_sequential_packing_keeps_order():
    packs = pack_examples([example(3), example(6), example(2), example(5)], 8, strategy="sequential")
    assert [p.lengths for p in packs] == [[3], [6, 2], [5]]


def test_too_long_example_is_an_error():
    long = TokenizedExample(list(range(9)), list(range(9)), source="d.jsonl:4")
    with pytest.raises(PosttrainError, match=r"^d.jsonl:4: example of 9 tokens does not fit in a pack of 8"):
        pack_examples([long], 8)


def test_pad_collate():
    batch = pad_collate([example(3, trained_from=1), example(1)], pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12], [10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 11, 12], [10, IGNORE_INDEX, IGNORE_INDEX]]
    assert pad_collate([example(3)], 0, pad_to_multiple_of=4)["input_ids"].shape == (1, 4)


def test_segments_and_block_causal_mask():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert segment_ids(positions).tolist() == [[1, 1, 1, 2, 2, 3]]
    allowed = block_causal_mask(positions)[0, 0] == 0
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_packed_collate_pads_rows_with_their_own_segment():
    packs = pack_examples([example(5), example(2), example(2)], 5, strategy="sequential")
    batch = packed_collate(packs, pad_id=0, attention="position_ids")
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 0]]
    assert batch["input_ids"].tolist()[1] == [10, 11, 10, 11, 0]
    assert batch["labels"].tolist()[1] == [IGNORE_INDEX, 11, IGNORE_INDEX, 11, IGNORE_INDEX]
    assert packed_collate(packs, 0)["attention_mask"].shape == (2, 1, 5, 5)


# --- packed loss == separate losses on the tiny model ------------------------------------------


def token_logprob_sum(model, batch) -> tuple[torch.Tensor, int]:
    """Sum of log p(label) over trained positions, and how many there are."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (logprobs * mask).sum(), int(mask.sum())


@pytest.fixture(scope="module")
def model():
    from posttrain.models import load_model

    return load_model("tiny-random").eval()


@pytest.fixture(scope="module")
def examples():
    generator = torch.Generator().manual_seed(0)
    out = []
    for n in (7, 12, 5, 9, 3, 11):
        ids = torch.randint(4, 260, (n,), generator=generator).tolist()
        out.append(TokenizedExample(ids, [IGNORE_INDEX] * (n // 3) + ids[n // 3:]))
    return out


@pytest.mark.parametrize("attention", ["4d", "position_ids"])
def test_packed_loss_equals_separate_losses(model, examples, attention):
    with torch.no_grad():
        separate = [token_logprob_sum(model, pad_collate([e], pad_id=3)) for e in examples]
        packs = pack_examples(examples, max_length=20)
        assert len(packs) < len(examples)
        packed_sum, packed_count = token_logprob_sum(model, packed_collate(packs, pad_id=3, attention=attention))
        free_sum, free_count = token_logprob_sum(model, padding_free_collate(examples, attention=attention))
    expected_sum = sum(s for s, _ in separate)
    expected_count = sum(c for _, c in separate)
    assert packed_count == free_count == expected_count
    torch.testing.assert_close(packed_sum, expected_sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(free_sum, expected_sum, rtol=1e-5, atol=1e-4)
    # The model's own loss (token mean over the batch) matches too.
    batch = packed_collate(packs, pad_id=3, attention=attention)
    with torch.no_grad():
        hf_loss = model(**batch, use_cache=False).loss
    torch.testing.assert_close(hf_loss, -expected_sum / expected_count, rtol=1e-5, atol=1e-5)


def test_without_a_boundary_the_examples_would_leak(model, examples):
    """Control: the same packed row with plain causal attention gives a different loss,
    so the equality above really depends on the block-diagonal attention."""
    packs = pack_examples(examples, max_length=20)
    batch = packed_collate(packs, pad_id=3, attention="position_ids")
    leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]))
    with torch.no_grad():
        good, _ = token_logprob_sum(model, batch)
        bad, _ = token_logprob_sum(model, leaky)
    assert not torch.allclose(good, bad, atol=1e-3)
