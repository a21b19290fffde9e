"""Per-token log-probabilities without materialising more logits than needed.

Every preference and RL method needs log π(y_t | x, y_<t) for the response tokens
only. The naive path, `log_softmax(model(ids).logits).gather(...)`, builds two
(B, T, V) float tensors; with V = 49k that dominates memory. Here:

1. `selective_log_softmax(logits, index)`: log p(index) = logits[index] - logsumexp(logits),
   row-chunked, as an autograd Function that saves only the logits it was given
   and a (N,) logsumexp, and builds the softmax gradient chunk by chunk.
2. `response_logprobs(model, input_ids, ..., response_mask)`: runs the backbone
   once, gathers the hidden states of the positions that predict response tokens,
   and projects only those through `lm_head`. With `chunk_size` the projection is
   fused with the log-softmax and recomputed in backward, so at most
   `chunk_size x V` logits exist at any time, in forward or backward.

Conventions: `logprobs[b, j] = log π(input_ids[b, j] | input_ids[b, :j])` where
`response_mask[b, j]` is true, and 0 elsewhere (position 0 has no prediction and is
always 0). Results are float32 (float64 for a float64 model), whatever the model dtype.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

DEFAULT_ROW_CHUNK = 1024  # rows of logits handled at once inside the softmax kernels


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for float32/bf16/fp16 inputs, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class TokenLogprobs(NamedTuple):
    """Per-token results of `response_logprobs`, each (B, T) float32, 0 outside the mask."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None  # H(π(· | x, y_<t)), differentiable
    mean_logits: torch.Tensor | None = None  # mean over the vocabulary, detached (a metric)


# --------------------------------------------------------------------------- selective log-softmax

class _SelectiveLogSoftmax(torch.autograd.Function):
    """logits (N, V), index (N,) -> log_softmax(logits)[index] (N,) float32.

    Backward: d/dlogits = g * (onehot(index) - softmax(logits)), built per chunk.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor, chunk: int) -> torch.Tensor:
        n, acc = logits.shape[0], _acc(logits.dtype)
        lse = torch.empty(n, dtype=acc, device=logits.device)
        for start in range(0, n, chunk):
            lse[start:start + chunk] = torch.logsumexp(logits[start:start + chunk].to(acc), dim=-1)
        picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1).to(acc)
        ctx.save_for_backward(logits, index, lse)
        ctx.chunk = chunk
        return picked - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, index, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            probs = torch.exp(logits[rows].to(lse.dtype) - lse[rows, None])
            part = -grad[rows, None] * probs
            part.scatter_add_(-1, index[rows, None], grad[rows, None])
            grad_logits[rows] = part.to(logits.dtype)
        return grad_logits, None, None


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_size: int = DEFAULT_ROW_CHUNK) -> torch.Tensor:
    """`log_softmax(logits, -1).gather(-1, index)` without a full log-softmax tensor.

    Shapes: logits (..., V), index (...) integer -> (...) float32.
    Memory beyond the inputs: one `chunk_size x V` float32 block and an (N,) vector.
    """
    shape = index.shape
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_index = index.reshape(-1).long()
    return _SelectiveLogSoftmax.apply(flat_logits, flat_index, chunk_size).reshape(shape)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = DEFAULT_ROW_CHUNK) -> torch.Tensor:
    """H = logsumexp(z) - sum softmax(z) * z, per row: (..., V) -> (...) float32, differentiable."""
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start:start + chunk_size].to(_acc(flat.dtype))
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        parts.append(lse.squeeze(-1) - (torch.exp(z - lse) * z).sum(-1))
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=_acc(flat.dtype))
    return out.reshape(logits.shape[:-1])


# --------------------------------------------------------------------------- fused head + log-softmax

class _LinearLogProb(torch.autograd.Function):
    """hidden (N, H), weight (V, H), bias (V,)|None, target (N,) ->
    (logprob (N,), entropy (N,), mean_logit (N,)) of z = (hidden @ weight.T + bias) / temperature.

    Only `chunk x V` logits exist at a time; backward recomputes them. With
    p = softmax(z): d logprob/dz = onehot(target) - p, d entropy/dz = -p * (log p + H).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, temperature: float, chunk: int):
        n, acc = hidden.shape[0], _acc(hidden.dtype)
        out = hidden.new_empty((3, n), dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            z = _chunk_logits(hidden[rows], weight, bias, temperature)
            lse[rows] = torch.logsumexp(z, dim=-1)
            out[0, rows] = z.gather(-1, target[rows, None]).squeeze(-1) - lse[rows]
            out[1, rows] = lse[rows] - (torch.exp(z - lse[rows, None]) * z).sum(-1)
            out[2, rows] = z.mean(-1) * temperature
        logprob, entropy, mean = out.unbind(0)
        ctx.save_for_backward(hidden, weight, bias, target, lse, entropy)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(mean)  # a metric
        return logprob, entropy, mean

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy, _grad_mean):
        hidden, weight, bias, target, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        acc = lse.dtype
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_bias else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            z = _chunk_logits(hidden[rows], weight, bias, ctx.temperature)
            log_p = z - lse[rows, None]
            probs = torch.exp(log_p)
            grad_z = torch.zeros_like(z)
            if grad_logprob is not None:
                grad_z -= grad_logprob[rows, None] * probs
                grad_z.scatter_add_(-1, target[rows, None], grad_logprob[rows, None])
            if grad_entropy is not None:
                grad_z -= grad_entropy[rows, None] * probs * (log_p + entropy[rows, None])
            grad_z /= ctx.temperature
            if need_hidden:
                grad_hidden[rows] = (grad_z.to(hidden.dtype) @ weight.to(hidden.dtype)).to(hidden.dtype)
            if need_weight:
                grad_weight += grad_z.T @ hidden[rows].to(acc)
            if need_bias:
                grad_bias += grad_z.sum(0)
        return (grad_hidden,
                grad_weight.to(weight.dtype) if need_weight else None,
                grad_bias.to(bias.dtype) if need_bias else None,
                None, None, None)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """float32 (float64) logits of a block of rows; the matmul runs in the hidden states' dtype."""
    dtype = hidden.dtype
    z = F.linear(hidden, weight.to(dtype), None if bias is None else bias.to(dtype))
    return z.to(_acc(dtype)) / temperature


def fused_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                          temperature: float = 1.0, chunk_size: int = DEFAULT_ROW_CHUNK):
    """(logprob, entropy, mean_logit), each (N,) float32, of `linear(hidden) / temperature` at `target`.

    hidden (N, H), weight (V, H), target (N,). Peak extra memory: `chunk_size x V` floats.
    """
    return _LinearLogProb.apply(hidden, weight, bias, target.long(), float(temperature), int(chunk_size))


# --------------------------------------------------------------------------- model-level entry point

def split_causal_lm(model) -> tuple[Any, Any] | None:
    """(backbone, lm_head) of a causal LM, also through a PEFT wrapper; None when the
    backbone cannot be called on its own (prompt-learning PEFT methods inject
    virtual tokens in the wrapper's forward)."""
    if getattr(model, "peft_config", None) is not None and hasattr(model, "get_base_model"):
        config = model.peft_config.get(getattr(model, "active_adapter", "default"))
        if config is not None and getattr(config, "is_prompt_learning", False):
            return None
        model = model.get_base_model()
    prefix = getattr(model, "base_model_prefix", None)
    backbone = getattr(model, prefix, None) if prefix else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if backbone is None or head is None or backbone is model:
        return None
    return backbone, head


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 after left padding, the same ones `generate` uses."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                      response_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                      temperature: float = 1.0, chunk_size: int | None = None,
                      return_entropy: bool = False, return_mean_logits: bool = False,
                      **model_kwargs: Any) -> TokenLogprobs:
    """Log-probs of the response tokens under `model`: hidden states once, logits only where needed.

    input_ids (B, T); attention_mask (B, T) or None (e.g. packed rows with
    `position_ids`); response_mask (B, T) bool, true at the tokens to score.
    `temperature` divides the logits (use the sampling temperature in RL).
    `chunk_size` rows of logits at a time through a fused, recomputing head
    (least memory); None projects all response rows at once (fastest).
    Extra keyword arguments go to the backbone.
    Returns `TokenLogprobs` of (B, T) float32 tensors, 0 outside `response_mask`.
    """
    if position_ids is None and attention_mask is not None:
        position_ids = default_position_ids(attention_mask)
    targets_mask = response_mask[:, 1:].bool()  # (B, T-1): which next-token predictions count
    targets = input_ids[:, 1:][targets_mask]  # (N,)
    parts = split_causal_lm(model)

    if parts is None:  # prompt-learning PEFT: full forward, then select
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False, **model_kwargs).logits
        picked = logits[:, :-1][targets_mask] / temperature  # (N, V)
        logprob = selective_log_softmax(picked, targets)
        entropy = entropy_from_logits(picked) if return_entropy else None
        mean = picked.detach().mean(-1).to(logprob.dtype) * temperature if return_mean_logits else None
    else:
        backbone, head = parts
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, **model_kwargs).last_hidden_state
        picked_hidden = hidden[:, :-1][targets_mask]  # (N, H)
        if chunk_size is not None and isinstance(head, torch.nn.Linear):
            logprob, entropy, mean = fused_linear_logprobs(picked_hidden, head.weight, head.bias, targets,
                                                           temperature, chunk_size)
            entropy = entropy if return_entropy else None
            mean = mean if return_mean_logits else None
        else:
            logits = head(picked_hidden) / temperature  # (N, V), response rows only
            logprob = selective_log_softmax(logits, targets)
            entropy = entropy_from_logits(logits) if return_entropy else None
            mean = logits.detach().mean(-1).to(logprob.dtype) * temperature if return_mean_logits else None

    def scatter(values: torch.Tensor | None) -> torch.Tensor | None:
        if values is None:
            return None
        full = values.new_zeros(input_ids.shape)
        full[:, 1:] = full[:, 1:].masked_scatter(targets_mask, values)
        return full

    return TokenLogprobs(scatter(logprob), scatter(entropy), scatter(mean.detach() if mean is not None else None))


def naive_response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                            response_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Reference implementation (full logits, full log-softmax); for tests and benchmarks only."""
    position_ids = default_position_ids(attention_mask) if attention_mask is not None else None
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits
    logits = logits.to(_acc(logits.dtype)) / temperature
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    full = torch.zeros(input_ids.shape, dtype=logp.dtype, device=logp.device)
    full[:, 1:] = logp * response_mask[:, 1:]
    return full
