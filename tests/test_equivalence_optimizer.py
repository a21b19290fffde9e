"""The training optimizer (torch's fused AdamW where the kernel exists) makes the same updates as
the plain per-tensor AdamW loop, weight-decay groups included, to float rounding."""
from __future__ import annotations

import torch

from posttrain.train.args import TrainArgs
from posttrain.train.optim import build_optimizer, fused_supported


def model_and_grads(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    generator = torch.Generator().manual_seed(seed + 1)
    grads = [[torch.randn(p.shape, generator=generator) for p in model.parameters()] for _ in range(4)]
    return model, grads


def train(model, optimizer, grads):
    for step in grads:
        for param, grad in zip(model.parameters(), step):
            param.grad = grad.clone()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


def test_build_optimizer_matches_the_plain_adamw_loop():
    args = TrainArgs(learning_rate=3e-2, weight_decay=0.1)
    model, grads = model_and_grads(0)
    optimizer = build_optimizer(model, args)
    assert optimizer.defaults["fused"] is True  # float32 parameters on the CPU (torch >= 2.4 here)
    got = train(model, optimizer, grads)

    reference, _ = model_and_grads(0)
    params = list(reference.parameters())
    plain = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                               {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                              lr=3e-2, foreach=False)
    expected = train(reference, plain, grads)
    for a, b, start in zip(got, expected, model_and_grads(0)[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(a, start.detach())  # the parameters moved


def test_fused_only_for_plain_floating_tensors():
    assert fused_supported([torch.nn.Parameter(torch.zeros(2))])
    assert not fused_supported([torch.nn.Parameter(torch.zeros(2, dtype=torch.int8), requires_grad=False)])
