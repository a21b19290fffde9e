"""Log-prob gathering: equal to the naive full log-softmax path, in values and gradients."""
import pytest
import torch

from posttrain.models import (
    apply_peft,
    entropy_from_logits,
    fused_linear_logprobs,
    load_model,
    response_logprobs,
    selective_log_softmax,
)
from posttrain.models.logprobs import naive_response_logprobs


def _batch(seed=0, batch=3, length=14):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 260, (batch, length), generator=gen)
    attention = torch.ones_like(ids)
    attention[0, :4] = 0  # left padding
    ids[0, :4] = 3
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, 8:] = True
    response[2, 12:] = False  # a shorter response
    return ids, attention, response


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_selective_log_softmax_matches_log_softmax_gather():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 37, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 37, (2, 5), generator=gen)
    weights = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    ours = selective_log_softmax(logits, index, chunk_size=3)
    naive = torch.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1)
    assert ours.dtype == torch.float64 and ours.shape == (2, 5)
    assert torch.allclose(ours, naive, atol=1e-12)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    (g_naive,) = torch.autograd.grad((naive * weights).sum(), logits)
    assert torch.allclose(g_ours, g_naive, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: selective_log_softmax(z, index, 4), (logits,))


def test_selective_log_softmax_low_precision_is_computed_in_float32():
    logits = torch.randn(4, 1000, dtype=torch.float32) * 5
    index = torch.randint(0, 1000, (4,))
    ours = selective_log_softmax(logits.bfloat16(), index)
    naive = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, index[:, None]).squeeze(-1)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, naive, atol=1e-5)


def test_entropy_matches_definition():
    logits = torch.randn(3, 4, 11, dtype=torch.float64)
    log_p = torch.log_softmax(logits, -1)
    expected = -(log_p.exp() * log_p).sum(-1)
    assert torch.allclose(entropy_from_logits(logits, chunk_size=5), expected, atol=1e-12)
    uniform = torch.zeros(1, 8)
    assert entropy_from_logits(uniform).item() == pytest.approx(torch.log(torch.tensor(8.0)).item())


def test_fused_linear_logprobs_gradcheck():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 9, (5,), generator=gen)
    assert torch.autograd.gradcheck(lambda h, w, b: fused_linear_logprobs(h, w, b, target, 0.7, 2)[:2],
                                    (hidden, weight, bias))
    logprob, entropy, mean = fused_linear_logprobs(hidden, weight, bias, target, 0.7, 2)
    logits = (hidden @ weight.T + bias) / 0.7
    log_p = torch.log_softmax(logits, -1)
    assert torch.allclose(logprob, log_p.gather(-1, target[:, None]).squeeze(-1))
    assert torch.allclose(entropy, -(log_p.exp() * log_p).sum(-1))
    assert torch.allclose(mean, (hidden @ weight.T + bias).mean(-1)) and not mean.requires_grad


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_response_logprobs_equal_naive_values_and_gradients(chunk_size):
    model = load_model("tiny-random", dtype=torch.float64)
    ids, attention, response = _batch()
    weights = torch.arange(ids.numel(), dtype=torch.float64).reshape(ids.shape) / 10

    naive = naive_response_logprobs(model, ids, attention, response_mask=response, temperature=0.8)
    (naive * weights).sum().backward()
    expected_grads = _grads(model)
    model.zero_grad()

    out = response_logprobs(model, ids, attention, response_mask=response, temperature=0.8, chunk_size=chunk_size,
                            return_entropy=True, return_mean_logits=True)
    assert out.logprobs.shape == ids.shape and out.logprobs.dtype == torch.float64
    assert torch.allclose(out.logprobs, naive, atol=1e-10)
    assert (out.logprobs[~response] == 0).all() and (out.logprobs[response] < 0).all()
    (out.logprobs * weights).sum().backward()
    grads = _grads(model)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], expected_grads[name], atol=1e-10), name

    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention,
                       position_ids=(attention.cumsum(-1) - 1).clamp(min=0)).logits[:, :-1] / 0.8
    log_p = torch.log_softmax(logits, -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    assert torch.allclose(out.entropy[:, 1:][response[:, 1:]], entropy[response[:, 1:]], atol=1e-10)
    assert torch.allclose(out.mean_logits[:, 1:][response[:, 1:]], (logits * 0.8).mean(-1)[response[:, 1:]], atol=1e-10)


def test_entropy_gradient_through_response_logprobs():
    model = load_model("tiny-random", dtype=torch.float64)
    ids, attention, response = _batch(seed=3)
    chunked = response_logprobs(model, ids, attention, response_mask=response, chunk_size=4, return_entropy=True)
    chunked.entropy.sum().backward()
    fused = _grads(model)
    model.zero_grad()
    plain = response_logprobs(model, ids, attention, response_mask=response, return_entropy=True)
    plain.entropy.sum().backward()
    for name, grad in _grads(model).items():
        assert torch.allclose(fused[name], grad, atol=1e-10), name


def test_left_padding_does_not_change_logprobs():
    model = load_model("tiny-random", dtype=torch.float64)
    ids, attention, response = _batch()
    padded = response_logprobs(model, ids, attention, response_mask=response).logprobs[0]
    row = attention[0].bool()
    alone = response_logprobs(model, ids[:1, row], attention[:1, row], response_mask=response[:1, row]).logprobs[0]
    assert torch.allclose(padded[row], alone, atol=1e-10)


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_peft_wrapped_model(method):
    model = apply_peft(load_model("tiny-random", dtype=torch.float64), method, r=4, dropout=0.0, num_virtual_tokens=3)
    if method == "lora":
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.3)
    ids, attention, response = _batch(seed=2)
    naive = naive_response_logprobs(model, ids, attention, response_mask=response)
    naive.sum().backward()
    expected = _grads(model)
    model.zero_grad()
    ours = response_logprobs(model, ids, attention, response_mask=response, chunk_size=4).logprobs
    assert torch.allclose(ours, naive, atol=1e-10)
    ours.sum().backward()
    grads = _grads(model)
    assert grads.keys() == expected.keys() and len(grads) > 0
    for name in grads:
        assert torch.allclose(grads[name], expected[name], atol=1e-10), name
