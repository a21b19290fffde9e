"""posttrain's own decoding loop: rows leave the batch as soon as they finish.

`transformers`' `generate` keeps every row of a batch in every decoding step until the
longest one ends: a row that wrote its eos token after 12 of 32 tokens still pays for 20
more forward passes. This loop drops each finished row from the batch and from the KV cache
(`Cache.batch_select_indices`) before the next step. What that saves depends on how much the
lengths of a batch spread: nothing measurable on the arithmetic warm-up model's answers
(15.5 tokens on average, the longest 17-19; docs/benchmarks.md), more where a few long
answers hold many short ones. Otherwise it does what `generate` does for the settings
posttrain uses: greedy decoding, or sampling through one logits processor
(`rollout.seeded.SeededSampler`: the row-seeded sampler; RL always samples with it) or with
temperature/top-k/top-p and `torch.multinomial`; eos ids; stop strings; the raw logits'
log-probabilities. tests/test_rollout_decode.py checks that greedy and seeded sampling give
the same tokens and log-probabilities as `generate`.

`can_decode` says when it applies: a generation config without the processors this loop does
not implement (repetition penalty, n-gram blocking, suppressed or forced tokens, a minimum
length). Otherwise `generate` runs. A cache that cannot drop rows keeps them, as `generate`
does, and their tokens after the end are ignored.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

# generation_config settings that add logits processors or stopping rules this loop does not
# implement, with the value that means "off".
UNSUPPORTED_WHEN_SET = {
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "sequence_bias": (None,), "exponential_decay_length_penalty": (None,),
    "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "typical_p": (None, 1.0), "min_p": (None,),
    "renormalize_logits": (None, False), "watermarking_config": (None,), "guidance_scale": (None, 1.0),
}


def can_decode(model) -> bool:
    """True when `decode` reproduces `generate` for this model (see the module docstring)."""
    config = getattr(model, "generation_config", None)
    for name, off in UNSUPPORTED_WHEN_SET.items():
        if getattr(config, name, None) not in off:
            return False
    return not getattr(getattr(model, "config", None), "is_encoder_decoder", False)


class TokenPicker:
    """The next token of each active row: greedy, one processor's argmax, or multinomial sampling."""

    def __init__(self, processor=None, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0):
        self.processor = processor
        self.warpers = None
        if processor is None and temperature > 0:
            from transformers.generation.logits_process import (
                LogitsProcessorList,
                TemperatureLogitsWarper,
                TopKLogitsWarper,
                TopPLogitsWarper,
            )
            warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
            warpers += [TopKLogitsWarper(top_k)] if top_k else []
            warpers += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
            self.warpers = LogitsProcessorList(warpers)

    def __call__(self, history: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """history [A, T] ids so far, logits [A, V] float32, rows [A] the rows' indices in the
        original batch -> [A] token ids."""
        if self.processor is not None:
            pick = getattr(self.processor, "pick_rows", None)
            scores = pick(history, logits, rows) if pick is not None else self.processor(history, logits)
            return scores.argmax(-1)
        if self.warpers is None:
            return logits.argmax(-1)
        probs = torch.softmax(self.warpers(history, logits), dim=-1)
        return torch.multinomial(probs, 1).squeeze(-1)


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos_ids: set[int],
           picker: TokenPicker, cache=None, cache_kwarg: str = "cache", return_logprobs: bool = False,
           stop: Sequence[str] = (), decode_text: Callable[[list[int]], str] | None = None
           ) -> tuple[list[list[int]], list[list[float]] | None]:
    """New tokens for each row of `ids` [R, T] (left-padded, `mask` [R, T]).

    `cache`: the KV cache of every token but the last of each row (the shared-prompt prefill),
    or None to prefill here. A row ends after an eos id, after `max_new_tokens`, or when its
    text contains a stop string (the caller cuts the text). Returns the token lists (eos
    included) and, with `return_logprobs`, log p(token) under the raw logits (temperature 1).
    """
    rows_total = ids.shape[0]
    out_tokens: list[list[int]] = [[] for _ in range(rows_total)]
    out_logps: list[list[float]] | None = [[] for _ in range(rows_total)] if return_logprobs else None
    active = torch.arange(rows_total, device=ids.device)
    history = ids
    attention = mask
    if cache is not None:
        step_ids = ids[:, -1:]
    else:
        step_ids = ids
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=ids.device)
    done = torch.zeros(rows_total, dtype=torch.bool, device=ids.device)  # rows kept only because the cache cannot drop them
    for _ in range(max_new_tokens):
        positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
        kwargs = {cache_kwarg: cache} if cache is not None else {}
        out = model(input_ids=step_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **kwargs)
        cache = out[cache_kwarg] if cache_kwarg in out else out.past_key_values
        logits = out.logits[:, -1, :].float()
        tokens = picker(history, logits, active)
        if out_logps is not None:
            logps = (logits.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)).tolist()
        finished = torch.isin(tokens, eos) | done
        for j, (row, token) in enumerate(zip(active.tolist(), tokens.tolist())):
            if done[j]:  # (a cache that cannot drop rows: this row ended earlier, its token is ignored)
                continue
            out_tokens[row].append(token)
            if out_logps is not None:
                out_logps[row].append(logps[j])
            if stop and decode_text is not None and not finished[j] and _has_stop(out_tokens[row], decode_text, stop):
                finished[j] = True
        history = torch.cat([history, tokens[:, None]], dim=1)
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
        if bool(finished.all()):
            break
        if not hasattr(cache, "batch_select_indices"):
            done = finished
        elif bool(finished.any()):
            keep = (~finished).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, history, attention, tokens = active[keep], history[keep], attention[keep], tokens[keep]
            done = done[keep]
        step_ids = tokens[:, None]
    return out_tokens, out_logps


def _has_stop(tokens: list[int], decode_text: Callable[[list[int]], str], stop: Sequence[str]) -> bool:
    """The text of the row's last few tokens contains a stop string (a stop string is short;
    looking at the tail keeps this cheap)."""
    tail = decode_text(tokens[-16:])
    return any(s and s in tail for s in stop)
