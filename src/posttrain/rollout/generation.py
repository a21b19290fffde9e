"""Batched generation with the KV cache: left padding, n samples per prompt, stop strings.

Works on token ids, so callers decide how prompts are rendered (chat template or
a plain template) and RL recipes get the exact ids they will train on.
Prompts are sorted by length before batching so each batch pads as little as
possible; results come back in the original order.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from .decode import TokenPicker, can_decode, decode

# The KV cache's keyword: `cache` from transformers 5.2x on (the old `past_key_values` still
# works there but logs a deprecation warning), `past_key_values` before.
ENGINES = ("auto", "posttrain", "transformers")
CACHE_KWARG = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class Generation:
    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including eos; cut after a stop string
    text: str  # decoded response without special tokens, cut before a stop string
    finish_reason: str  # "eos", "stop" or "length"
    logprobs: list[float] | None = None  # log p(token) under the model at temperature 1


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a [B, T] id tensor and its attention mask (generation continues on the right)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids, mask


def cut_at_eos(tokens: list[int], eos_ids: set[int], pad_id: int) -> tuple[list[int], bool]:
    """Keep tokens up to and including the first eos; drop right padding after it."""
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1], True
    while tokens and tokens[-1] == pad_id and pad_id not in eos_ids:
        tokens = tokens[:-1]
    return tokens, False


def cut_at_stop(tokens: list[int], decode: Callable[[list[int]], str], stop: list[str]) -> tuple[list[int], str, bool]:
    """Shortest token prefix whose text contains a stop string; the text is cut before it."""
    text = decode(tokens)
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if not hits:
        return tokens, text, False
    position, _ = min(hits)
    for end in range(1, len(tokens) + 1):  # responses are short; a linear scan is fine
        if any(s in decode(tokens[:end]) for s in stop if s):
            return tokens[:end], text[:position], True
    return tokens, text[:position], True


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(value)
    return ids


def shared_prompt_cache(model, ids: torch.Tensor, mask: torch.Tensor, n: int):
    """Run the prompts once (all but their last token) and copy the KV cache n times.

    `generate` with `num_return_sequences=n` would prefill every prompt n times; with
    this cache it only processes each copy's last prompt token, then samples as usual.
    Returns the cache, or None when the model gives none back.
    """
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids[:, :-1],
                use_cache=True, logits_to_keep=1)
    cache = out.get(CACHE_KWARG)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(n)
    return cache


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[Sequence[int]], params: SamplingParams,
             batch_size: int = 8, return_logprobs: bool = False, share_prompt: bool = False,
             prompt_seeds: Sequence[int] | None = None,
             on_batch: Callable[[int, list[Generation]], None] | None = None,
             engine: str = "auto") -> list[Generation]:
    """Sample `params.n` responses for each prompt (token ids). Returns prompt-major order.

    `engine`: "posttrain" decodes with `rollout.decode` (finished rows leave the batch),
    "transformers" with `model.generate`; "auto" (default) takes the first when `can_decode`.

    `on_batch(prompts_done, generations_of_the_batch)` is called after each batch, for
    progress display (`rollout.progress.progress_logger`).

    `share_prompt`: with n > 1, compute each prompt's KV cache once and copy it to its n
    samples (`shared_prompt_cache`) instead of prefilling the prompt n times.
    `prompt_seeds`: one seed per prompt; each sample then draws from its own random stream
    (`rollout.seeded`), so a prompt's samples do not depend on the batch it is in.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = eos_token_ids(model, tokenizer)
    greedy = params.temperature <= 0
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    own = engine == "posttrain" or (engine == "auto" and can_decode(model))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[tuple[int, int], Generation] = {}
    was_training = model.training
    model.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(params.seed)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ids, mask = left_pad([prompts[i] for i in chunk], pad_id)
            kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=not greedy, pad_token_id=pad_id,
                          eos_token_id=sorted(eos), num_return_sequences=params.n,
                          return_dict_in_generate=True, output_logits=return_logprobs)
            if not greedy:
                kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if params.stop:
                kwargs.update(stop_strings=params.stop, tokenizer=tokenizer)
            ids, mask = ids.to(device), mask.to(device)
            seeded = prompt_seeds is not None and not greedy
            if seeded:  # greedy decoding of a row-seeded sample = sampling (rollout/seeded.py)
                from .seeded import SeededSampler, sample_seed

                rows = [sample_seed(prompt_seeds[i], s) for i in chunk for s in range(params.n)]
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                              logits_processor=[SeededSampler(rows, params.temperature, params.top_p, params.top_k)])
            if share_prompt and params.n > 1 and ids.shape[1] > 1 and bool(mask[:, :-1].any(-1).all()):
                cache = shared_prompt_cache(model, ids, mask, params.n)
                if cache is not None:
                    ids, mask = ids.repeat_interleave(params.n, 0), mask.repeat_interleave(params.n, 0)
                    kwargs.update({CACHE_KWARG: cache, "num_return_sequences": 1})
            if (seeded or own) and kwargs["num_return_sequences"] > 1:  # one sequence per row
                ids, mask = ids.repeat_interleave(params.n, 0), mask.repeat_interleave(params.n, 0)
                kwargs.update(num_return_sequences=1)
            if own:
                processor = kwargs["logits_processor"][0] if seeded else None
                picker = TokenPicker(processor, 0.0 if greedy else params.temperature, params.top_p, params.top_k)
                new_tokens, token_logprobs = decode(
                    model, ids, mask, params.max_new_tokens, eos, picker, cache=kwargs.get(CACHE_KWARG),
                    cache_kwarg=CACHE_KWARG, return_logprobs=return_logprobs, stop=params.stop,
                    decode_text=lambda t: tokenizer.decode(t, skip_special_tokens=True))
            else:
                new_tokens, token_logprobs = _generate_with_transformers(model, ids, mask, kwargs, return_logprobs)
            batch = []
            for row, tokens in enumerate(new_tokens):
                prompt_index, sample_index = chunk[row // params.n], row % params.n
                results[(prompt_index, sample_index)] = _finish(
                    prompt_index, sample_index, list(prompts[prompt_index]), tokens, tokenizer, eos, pad_id,
                    params, None if token_logprobs is None else token_logprobs[row])
                batch.append(results[(prompt_index, sample_index)])
            if on_batch is not None:
                on_batch(start + len(chunk), batch)
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return [results[(p, s)] for p in range(len(prompts)) for s in range(params.n)]


def _generate_with_transformers(model, ids: torch.Tensor, mask: torch.Tensor, kwargs: dict,
                                return_logprobs: bool) -> tuple[list[list[int]], list[list[float]] | None]:
    """`model.generate` on the prepared batch -> (new tokens per row, log-probs per row or None)."""
    out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    new_tokens = out.sequences[:, ids.shape[1]:].tolist()
    if not return_logprobs:
        return new_tokens, None
    logits = torch.stack(out.logits, dim=1).float()  # [B*n, new, V]
    chosen = out.sequences[:, ids.shape[1]:].unsqueeze(-1)
    return new_tokens, (logits.gather(-1, chosen).squeeze(-1) - torch.logsumexp(logits, dim=-1)).tolist()


def _finish(prompt_index, sample_index, prompt_ids, tokens, tokenizer, eos, pad_id, params, logprobs) -> Generation:
    tokens, hit_eos = cut_at_eos(tokens, eos, pad_id)
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)
    tokens, text, hit_stop = cut_at_stop(tokens, decode, params.stop) if params.stop else (tokens, decode(tokens), False)
    reason = "stop" if hit_stop else "eos" if hit_eos else "length"
    return Generation(prompt_index, sample_index, prompt_ids, tokens, text, reason,
                      None if logprobs is None else logprobs[: len(tokens)])
