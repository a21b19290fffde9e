"""Per-token log-probabilities without materialising more logits than needed.

Every preference and RL method needs log π(y_t | x, y_<t) for the response tokens
only. The naive path, `log_softmax(model(ids).logits).gather(...)`, builds two
(B, T, V) float tensors; with V = 49k that dominates memory. Here:

1. `selective_log_softmax(logits, index)`: log p(index) = logits[index] - logsumexp(logits),
   row-chunked, as an autograd Function that saves only the logits it was given
   and a (N,) logsumexp, and builds the softmax gradient chunk by chunk.
2. `response_logprobs(model, input_ids, ..., response_mask)`: runs the backbone
   once, gathers the hidden states of the positions that predict response tokens,
   and projects only those through `lm_head`, by default fused with the log-softmax
   (`chunk_size`): at most a chunk of `chunk_size x V` logits exists at any time, in
   forward or backward; with a frozen head the gradient for the hidden states is made in
   forward, so nothing is recomputed.

Conventions: `logprobs[b, j] = log π(input_ids[b, j] | input_ids[b, :j])` where
`response_mask[b, j]` is true, and 0 elsewhere (position 0 has no prediction and is
always 0). Results are float32 (float64 for a float64 model), whatever the model dtype.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule

DEFAULT_ROW_CHUNK = 1024  # rows of logits handled at once inside the softmax kernels
HEAD_CHUNK_ELEMENTS = 1 << 23  # logits per chunk of the fused head by default (chunk_size="auto")


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
    (logprob (N,), entropy (N,)|None, mean_logit (N,)|None) of z = (hidden @ weight.T + bias) / temperature.

    Only `chunk x V` logits exist at a time. With p = softmax(z):
    d logprob/dz = onehot(target) - p and d entropy/dz = -p * (log p + H). Both are a
    per-row vector times the upstream gradient of that row, so when the weight is frozen
    (LoRA, a frozen head) the gradient for `hidden` is computed here, in forward, chunk by
    chunk, and backward only scales it: no logits are kept and none are recomputed, the same
    FLOPs as the unfused path. When the weight (or bias) trains, backward recomputes each
    chunk's logits for its gradient (one extra `N x H x V` matmul).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, temperature: float, chunk: int, want_entropy: bool, want_mean: bool):
        n, acc = hidden.shape[0], _acc(hidden.dtype)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        recompute = need_weight or need_bias
        logprob = hidden.new_empty(n, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        entropy = hidden.new_empty(n, dtype=acc) if want_entropy else None
        mean = hidden.new_empty(n, dtype=acc) if want_mean else None
        # d logprob / d hidden and d entropy / d hidden, per row, for a frozen weight (see the class doc)
        early = need_hidden and not recompute
        d_logprob = torch.empty_like(hidden) if early else None
        d_entropy = torch.empty_like(hidden) if early and want_entropy else None
        w = weight.to(hidden.dtype) if early else None
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            z = _chunk_logits(hidden[rows], weight, bias, temperature)
            if want_mean:
                mean[rows] = z.mean(-1) * temperature
            row_lse = torch.logsumexp(z, dim=-1)
            lse[rows] = row_lse
            logprob[rows] = z.gather(-1, target[rows, None]).squeeze(-1) - row_lse
            if not (want_entropy or early):
                continue
            log_p = z.sub_(row_lse[:, None])  # z is not needed any more
            probs = torch.exp(log_p)
            if want_entropy:
                entropy[rows] = -(probs * log_p).sum(-1)
            if early:
                if want_entropy:  # -p * (log p + H), in place of log_p
                    d_entropy[rows] = (log_p.add_(entropy[rows, None]).mul_(probs).neg_() / temperature).to(hidden.dtype) @ w
                grad_z = probs.neg_()  # onehot - p
                grad_z.scatter_add_(-1, target[rows, None], torch.ones_like(row_lse[:, None]))
                d_logprob[rows] = (grad_z / temperature).to(hidden.dtype) @ w
        ctx.save_for_backward(hidden if recompute else None, weight if recompute else None, bias if recompute else None,
                              target, lse, entropy, d_logprob, d_entropy)
        ctx.temperature, ctx.chunk, ctx.recompute = temperature, chunk, recompute
        ctx.set_materialize_grads(False)  # an output nobody uses gets None, not a tensor of zeros
        if mean is not None:
            ctx.mark_non_differentiable(mean)  # a metric
        return logprob, entropy, mean

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy, _grad_mean):
        hidden, weight, bias, target, lse, entropy, d_logprob, d_entropy = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if not ctx.recompute:  # the gradient for hidden was computed in forward: scale it per row
            grad_hidden = None
            if need_hidden and grad_logprob is not None:
                grad_hidden = d_logprob * grad_logprob[:, None].to(d_logprob.dtype)
            if need_hidden and grad_entropy is not None:
                part = d_entropy * grad_entropy[:, None].to(d_entropy.dtype)
                grad_hidden = part if grad_hidden is None else grad_hidden + part
            return grad_hidden, None, None, None, None, None, None, None
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        acc = lse.dtype
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_bias else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            log_p = _chunk_logits(hidden[rows], weight, bias, ctx.temperature).sub_(lse[rows, None])
            probs = torch.exp(log_p)
            if grad_entropy is not None:  # -g_H * p * (log p + H), in place of log_p
                grad_z = log_p.add_(entropy[rows, None]).mul_(probs).mul_(-grad_entropy[rows, None])
            else:
                grad_z = log_p.zero_()
            if grad_logprob is not None:  # g * (onehot - p)
                grad_z.addcmul_(probs, grad_logprob[rows, None], value=-1.0)
                grad_z.scatter_add_(-1, target[rows, None], grad_logprob[rows, None].to(acc))
            del probs
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
                None, None, None, None, None)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """float32 (float64) logits of a block of rows; the matmul runs in the hidden states' dtype."""
    dtype = hidden.dtype
    z = F.linear(hidden, weight.to(dtype), None if bias is None else bias.to(dtype))
    return z.to(_acc(dtype)) / temperature


def fused_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                          temperature: float = 1.0, chunk_size: int = DEFAULT_ROW_CHUNK, *, entropy: bool = True,
                          mean: bool = True):
    """(logprob, entropy, mean_logit), each (N,) float32, of `linear(hidden) / temperature` at `target`
    (entropy / mean_logit are None when not asked for, and then not computed).

    hidden (N, H), weight (V, H), target (N,). Peak extra memory: two `chunk_size x V` blocks
    (and an `N x H` gradient per output when the weight is frozen).
    """
    return _LinearLogProb.apply(hidden, weight, bias, target.long(), float(temperature), int(chunk_size),
                                bool(entropy), bool(mean))


def head_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk of the fused head: about `HEAD_CHUNK_ELEMENTS` logits (32 MB in float32)."""
    return max(16, HEAD_CHUNK_ELEMENTS // max(vocab_size, 1))


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
                      temperature: float = 1.0, chunk_size: int | str | None = "auto",
                      return_entropy: bool = False, return_mean_logits: bool = False,
                      **model_kwargs: Any) -> TokenLogprobs:
    """Log-probs of the response tokens under `model`: hidden states once, logits only where needed.

    input_ids (B, T); attention_mask (B, T) or None (e.g. packed rows with
    `position_ids`); response_mask (B, T) bool, true at the tokens to score.
    `temperature` divides the logits (use the sampling temperature in RL).
    `chunk_size` rows of logits at a time through the fused head (`fused_linear_logprobs`:
    no `N x V` logits are ever kept; the default "auto" picks about 8M logits per chunk);
    None projects all response rows at once and keeps their logits for backward (the
    plain path; tests compare the two).
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
        # The fused head reads the weight without running the head's forward; an FSDP2 unit of its
        # own (PEFT's wrap policy makes the frozen head one) gathers its weight only in that forward.
        if chunk_size is not None and isinstance(head, torch.nn.Linear) and not isinstance(head, FSDPModule):
            rows = head_chunk_rows(head.weight.shape[0]) if chunk_size == "auto" else int(chunk_size)
            logprob, entropy, mean = fused_linear_logprobs(picked_hidden, head.weight, head.bias, targets,
                                                           temperature, rows, entropy=return_entropy,
                                                           mean=return_mean_logits)
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
