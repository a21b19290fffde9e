"""Activation checkpointing (`--gradient-checkpointing`) gives the same loss and gradients, and
really recomputes: every decoder layer runs again during backward.

Each recipe's model is built as the recipe builds it (`load_trainable_model`, the reward
model's `build_model`), checkpointing switched on as the engine switches it on
(`enable_gradient_checkpointing`), and a micro-batch goes through the recipe's loss.
"""
from __future__ import annotations

import pytest
import torch

from posttrain.train.engine import enable_gradient_checkpointing


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def decoder_layers(model):
    return [m for name, m in model.named_modules() if type(m).__name__ == "LlamaDecoderLayer"]


def count_calls(module, calls: list) -> None:
    """Count `module.forward` calls. (A forward hook would not do: the recompute in backward
    does not fire module hooks.)"""
    original = module.forward

    def forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    module.forward = forward


def run(model, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, gradients, and how many decoder-layer MLPs ran again during backward (recompute)."""
    calls: list = []
    for layer in decoder_layers(model):
        count_calls(layer.mlp, calls)
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    forward_calls = len(calls)
    assert forward_calls == len(decoder_layers(model))
    loss.backward()
    return loss.detach(), grads(model), len(calls) - forward_calls


def check(build, loss_fn):
    plain_model, checkpointed_model = build(False), build(True)
    loss, plain_grads, plain_recomputes = run(plain_model, loss_fn)
    loss_ckpt, ckpt_grads, recomputes = run(checkpointed_model, loss_fn)
    assert plain_recomputes == 0
    assert recomputes == len(decoder_layers(checkpointed_model)) > 0  # every layer recomputed in backward
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-6)
    assert ckpt_grads.keys() == plain_grads.keys() and plain_grads
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert max(g.abs().max() for g in plain_grads.values()) > 1e-4


def policy_builder(peft: str):
    from posttrain.train.setup import load_trainable_model
    from posttrain.train.sft import SFTConfig

    def build(checkpointing: bool):
        cfg = SFTConfig(model="tiny-random", peft=peft, lora_r=4, lora_dropout=0.0, gradient_checkpointing=checkpointing)
        model = load_trainable_model(cfg, seed=0, gradient_checkpointing=checkpointing, quiet=True)
        if peft != "none":  # an adapter that starts at zero would hide gradient differences in the base
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        if checkpointing:
            enable_gradient_checkpointing(model)  # what run_training does with --gradient-checkpointing
        return model.train()
    return build


def ids(generator, n):
    return torch.randint(4, 260, (n,), generator=generator).tolist()


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_sft_loss_and_gradients_unchanged_by_checkpointing(peft):
    from posttrain.data import TokenizedExample, pad_collate
    from posttrain.train.sft import nll_sum

    generator = torch.Generator().manual_seed(0)
    examples = []
    for prompt, response in ((4, 6), (8, 3), (3, 9)):
        row = ids(generator, prompt + response)
        examples.append(TokenizedExample(row, [-100] * prompt + row[prompt:]))
    batch = pad_collate(examples, pad_id=3)
    check(policy_builder(peft), lambda model: nll_sum(model, batch).loss_sum)


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_dpo_loss_and_gradients_unchanged_by_checkpointing(peft):
    from posttrain.train.dpo import make_loss
    from posttrain.train.preference_batch import BatchLayout
    from posttrain.train.preference_data import PairExample
    from posttrain.train.reference import CachedReference

    generator = torch.Generator().manual_seed(1)
    examples = [PairExample(ids(generator, 5 + i), ids(generator, 3), ids(generator, 4 + i), index=i) for i in range(3)]
    batch = BatchLayout(pad_id=3, padding_free=True, prefix_sharing=True).pairs(examples)
    reference = CachedReference(torch.tensor([[-30.0, -25.0], [-28.0, -31.0], [-40.0, -33.0]]))
    loss = make_loss({"sigmoid": 1.0}, {"sigmoid": {"beta": 0.5}}, reference)
    check(policy_builder(peft), lambda model: loss(model, batch).loss_sum)


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_reward_model_loss_and_gradients_unchanged_by_checkpointing(peft):
    from posttrain.train.reward import RMConfig, build_model, make_loss
    from posttrain.train.reward_batch import RewardGroup, collate_groups

    def build(checkpointing: bool):
        cfg = RMConfig(model="tiny-random", peft=peft, lora_r=4, lora_dropout=0.0, gradient_checkpointing=checkpointing)
        model = build_model(cfg)
        if checkpointing:
            enable_gradient_checkpointing(model)
        return model

    generator = torch.Generator().manual_seed(2)
    groups = [RewardGroup(ids(generator, 6), [ids(generator, 3), ids(generator, 5)], ranks=[0, 1]),
              RewardGroup(ids(generator, 3), [ids(generator, 4), ids(generator, 2)], ranks=[1, 0])]
    batch = collate_groups(groups, "shared_prompt", 3)
    compute = make_loss(RMConfig(model="tiny-random"))
    check(build, lambda model: compute(model, batch).loss_sum)
