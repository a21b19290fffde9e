"""The one reference concept (train/reference.py): every strategy answers both shapes the losses
need, per-token log-probs (online recipes) and per-sequence sums (preference recipes), and the
two shapes agree with each other."""
from __future__ import annotations

import pytest
import torch

from posttrain.models import load_model
from posttrain.models.peft import apply_peft
from posttrain.rl.rollouts import Sample, collate
from posttrain.train.preference_batch import BatchLayout
from posttrain.train.preference_data import PairExample
from posttrain.train.reference import (
    CachedReference,
    adapter_reference,
    copy_reference,
    reference_for_policy,
)

PAD = 3


def ids(generator, n):
    return torch.randint(4, 260, (n,), generator=generator).tolist()


def pairs_and_samples():
    generator = torch.Generator().manual_seed(7)
    examples = [PairExample(ids(generator, 5 + i), ids(generator, 3 + i), ids(generator, 6 - i), index=i) for i in range(3)]
    # The same sequences as rollouts: chosen ones first, then rejected ones (the pair batch's order).
    samples = [Sample(i, 0, list(e.prompt_ids), list(response), "", "eos")
               for response_of in (lambda e: e.chosen_ids, lambda e: e.rejected_ids)
               for i, e in enumerate(examples) for response in [response_of(e)]]
    return examples, samples


def lora_policy():
    policy = apply_peft(load_model("tiny-random", seed=3), "lora", r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)  # the policy has moved away from its base
    return policy.train()


@pytest.mark.parametrize("strategy", ["copy", "adapter"])
def test_token_logprobs_summed_are_the_sequence_logps(strategy):
    examples, samples = pairs_and_samples()
    policy = lora_policy()
    reference = (copy_reference(load_model("tiny-random", seed=3)) if strategy == "copy"
                 else adapter_reference(policy))
    batch = collate(samples, PAD)
    tokens = reference.token_logprobs(batch)
    summed = torch.where(batch["response_mask"], tokens, 0.0).sum(-1)
    sequences = reference.sequence_logps(BatchLayout(PAD).pairs(examples), (0, 1))
    torch.testing.assert_close(summed, sequences, rtol=0, atol=1e-4)
    assert policy.training  # scoring restored the policy's mode


def test_adapter_off_and_frozen_copy_are_the_same_reference():
    _, samples = pairs_and_samples()
    policy = lora_policy()
    batch = collate(samples, PAD)
    base = copy_reference(load_model("tiny-random", seed=3)).token_logprobs(batch, temperature=0.7)
    online = reference_for_policy(policy, lambda: policy)  # a PEFT policy: the adapter switched off
    assert online.name == "adapter"
    torch.testing.assert_close(online.token_logprobs(batch, temperature=0.7), base, rtol=0, atol=1e-6)
    full = load_model("tiny-random", seed=3)
    assert reference_for_policy(full, lambda: full).name == "copy"


def test_the_cache_holds_sequence_sums_only():
    examples, _ = pairs_and_samples()
    table = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])
    cached = CachedReference(table)
    batch = BatchLayout(PAD).pairs(examples)
    assert cached.sequence_logps(batch, (0, 1)).tolist() == [-1.0, -3.0, -5.0, -2.0, -4.0, -6.0]
    assert cached.sequence_logps(batch, (1,)).tolist() == [-2.0, -4.0, -6.0]
    with pytest.raises(NotImplementedError):
        cached.token_logprobs(collate(pairs_and_samples()[1], PAD))
