"""Where an evaluation's responses come from: a model that generates them, or a file.

    responder = ModelResponder("smollm2-135m", batch_size=16, max_new_tokens=256)
    responses = responder.respond(items, n=1, temperature=0.0, label="task")
    responses[i][j].text       # item i, sample j

- `ModelResponder` loads the model once (lazily, on first use), renders each
  prompt with the chat template (or a plain template for base models), and
  samples with `rollout.generation.generate`. Prompts are sorted by length and
  generated in batches; after each batch a progress line with tokens/s goes to
  stderr. `model_and_tokenizer()` hands the loaded model to scoring code
  (perplexity) so it is loaded only once.
- `OutputsResponder` answers from generation files written earlier (by
  `posttrain eval`, `posttrain generate`, or anything with `prompt` and
  `response` fields), matched by prompt. This evaluates existing generations
  without a model, and replays an evaluation's scoring exactly.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..data import encode, get_template
from ..data.prompts import parse_prompt
from ..data.readers import read_rows
from ..errors import ConfigError, InputError, PosttrainError
from ..records import Message, prompt_text
from ..rollout.progress import GenerationStats  # noqa: F401 - also imported from here


@dataclass
class EvalItem:
    """One prompt to answer. `id` names it in results (per-item values are paired by id)."""

    id: str
    prompt: list[Message]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Response:
    text: str
    finish_reason: str = "unknown"  # "eos", "stop", "length", or "file" for given outputs
    tokens: int | None = None


def prompt_key(messages: Sequence[Message]) -> str:
    """A canonical string for a prompt (its messages), used to match responses to prompts."""
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def log_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class ModelResponder:
    """Generates responses with a local model (alias, directory, run directory, .gguf or hub id)."""

    def __init__(self, model: str, *, batch_size: int = 16, max_new_tokens: int = 256, top_p: float = 1.0,
                 template: str = "auto", dtype: str = "auto", device: str = "auto", seed: int = 0,
                 log: Callable[[str], None] = log_err):
        self.name, self.batch_size, self.max_new_tokens, self.top_p = model, batch_size, max_new_tokens, top_p
        self.template_name, self.dtype, self.device, self.seed, self.log = template, dtype, device, seed, log
        self._model = self._tokenizer = None
        self.stats: dict[str, GenerationStats] = {}

    def model_and_tokenizer(self):
        if self._model is None:
            from ..models import load_model, load_tokenizer

            started = time.perf_counter()
            self._tokenizer = load_tokenizer(self.name, padding_side="left")
            self._model = load_model(self.name, dtype=self.dtype, device=self.device)
            self.log(f"loaded {self.name} in {time.perf_counter() - started:.1f}s")
        return self._model, self._tokenizer

    def render(self, items: Sequence[EvalItem]) -> list[list[int]]:
        """Prompt token ids: the generation prompt of the chat (or plain) template."""

        _, tokenizer = self.model_and_tokenizer()
        template = get_template(self.template_name, tokenizer)
        return [encode(tokenizer, template.prompt(item.prompt, item.extra)) for item in items]

    def respond(self, items: Sequence[EvalItem], n: int = 1, temperature: float = 0.0,
                label: str = "") -> list[list[Response]]:
        """`n` responses per item (greedy when temperature is 0), with progress and tokens/s."""
        from ..rollout.generation import SamplingParams, generate

        model, tokenizer = self.model_and_tokenizer()
        prompts = self.render(items)
        # Sort by length once for the whole set, so each batch pads as little as possible.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[list[Response]] = [[] for _ in prompts]
        stats = self.stats.setdefault(label, GenerationStats())
        started = time.perf_counter()
        for number, start in enumerate(range(0, len(order), self.batch_size)):
            chunk = order[start:start + self.batch_size]
            params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=temperature, top_p=self.top_p,
                                    n=n, seed=self.seed + number)
            for g in generate(model, tokenizer, [prompts[i] for i in chunk], params, batch_size=len(chunk)):
                out[chunk[g.prompt_index]].append(Response(g.text, g.finish_reason, len(g.response_ids)))
                stats.tokens += len(g.response_ids)
                stats.responses += 1
            stats.seconds = time.perf_counter() - started
            done = min(start + self.batch_size, len(order))
            self.log(stats.line(label or self.name, done, len(order)))
        return out


class OutputsResponder:
    """Answers from generation files: rows with a prompt (any prompt shape) and a `response`.

    Responses are pooled by prompt, in file order (a file with `sample` fields gives
    each prompt's samples in that order). When the rows name several models
    (`model` field), `model` picks one; without it that is an error rather than a mix.
    """

    def __init__(self, paths: Sequence[str], model: str | None = None, option: str = "outputs"):
        self.paths, self.option = list(paths), option
        rows = []
        for path in self.paths:
            for where, raw in read_rows(path):
                response = raw.get("response", raw.get("completion"))
                if not isinstance(response, str):
                    file, _, line = where.rpartition(":")
                    raise InputError(file, int(line) if line.isdigit() else None, "response",
                                     "missing or not a string (a generations file needs a 'response' per row)")
                rows.append((raw.get("model"), raw.get("sample", 0), parse_prompt(raw, where).prompt, response,
                             raw.get("finish_reason")))
        models = sorted({str(m) for m, *_ in rows if m is not None})
        if len(models) > 1:
            if model not in models:
                raise ConfigError(option, f"{', '.join(self.paths)} holds responses from several models "
                                          f"({', '.join(models)}); name one with "
                                          f"--{'baseline-model' if option.startswith('baseline') else 'model'}")
            rows = [r for r in rows if r[0] == model]
        self.name = model or (models[0] if models else f"outputs:{self.paths[0]}")
        self.pool: dict[str, list[tuple[Any, Response]]] = {}
        for _, sample, prompt, response, reason in rows:
            self.pool.setdefault(prompt_key(prompt), []).append((sample, Response(response, reason or "file")))
        self.stats: dict[str, GenerationStats] = {}

    def respond(self, items: Sequence[EvalItem], n: int = 1, temperature: float = 0.0,
                label: str = "") -> list[list[Response]]:
        out = self.lookup(items, n)
        self.stats[label] = GenerationStats(responses=sum(len(r) for r in out))
        return out

    def lookup(self, items: Sequence[EvalItem], n: int = 1) -> list[list[Response]]:
        """The first `n` responses to each item's prompt; a missing one is a one-line error."""
        out = []
        for item in items:
            found = self.pool.get(prompt_key(item.prompt))
            if not found:
                raise PosttrainError(f"--{self.option.replace('_', '-')}: no response for item {item.id!r} "
                                     f"(prompt {prompt_text(item.prompt)[:60]!r}) in {', '.join(self.paths)}")
            if len(found) < n:
                raise PosttrainError(f"--{self.option.replace('_', '-')}: item {item.id!r} has {len(found)} "
                                     f"response(s), but {n} samples per prompt were asked for")
            ordered = sorted(found, key=lambda pair: pair[0] if isinstance(pair[0], int) else 0)  # stable
            out.append([response for _, response in ordered[:n]])
        return out
