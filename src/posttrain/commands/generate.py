"""`posttrain generate`: batched sampling from one or more models over a prompts file.

Each output row holds the prompt (messages), the response, the
model it came from, the sample index and why generation stopped, plus the input
row's other fields (so a reference `answer` travels on to judges and verifiers).
With several `--model`s every prompt is answered by every model, which is the
first step of building preference data from several models' responses.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from ..config import help_field, parse_config
from ..data import get_template
from ..data.options import DataArgs, read_kwargs
from ..data.prompts import load_prompts
from ..data.tokenize import encode
from ..errors import ConfigError
from ..jsonl import write_jsonl
from ..rollout.progress import progress_logger


@dataclass
class GenerateConfig(DataArgs):
    model: list[str] = help_field(["smollm2-135m"], "one or more models (hub id, directory, run directory, .gguf, alias)")
    prompts: str = help_field("", "prompts file (prompt / messages / instruction / question rows)")
    output: str = help_field("generations.jsonl", "output JSONL (written atomically)")
    template: str = help_field("auto", "prompt template", choices=["auto", "chat", "basic", "conversational", "with_input", "alpaca"])
    num_samples: int = help_field(1, "samples per prompt", aliases=["n", "samples"])
    max_new_tokens: int = help_field(256, "longest response in tokens", aliases=["max_tokens"])
    temperature: float = help_field(0.7, "sampling temperature (0: greedy)")
    top_p: float = help_field(1.0, "nucleus sampling threshold")
    top_k: int = help_field(0, "sample from the k most likely tokens (0: off)")
    stop: list[str] = help_field([], "stop strings (cut from the response)")
    batch_size: int = help_field(16, "prompts per generation batch")
    seed: int = help_field(0, "sampling seed")
    dtype: str = help_field("auto", "weights dtype")
    limit: int = help_field(0, "only the first N prompts (0: all)")


def render_prompts(prompts, tokenizer, template_name: str) -> list[list[int]]:
    template = get_template(template_name, tokenizer)
    return [encode(tokenizer, template.prompt(p.prompt, p.extra)) for p in prompts]


def generate_rows(model_name: str, prompts, cfg: GenerateConfig) -> list[dict[str, Any]]:
    """Load one model and answer every prompt `cfg.num_samples` times (a progress line per batch on stderr)."""
    from ..models import load_model, load_tokenizer
    from ..rollout.generation import SamplingParams, generate

    tokenizer = load_tokenizer(model_name, padding_side="left")
    model = load_model(model_name, dtype=cfg.dtype, device="auto")
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            top_k=cfg.top_k, n=cfg.num_samples, stop=cfg.stop, seed=cfg.seed)
    started = time.perf_counter()
    on_batch = progress_logger(model_name, len(prompts), lambda line: print(line, file=sys.stderr, flush=True))
    outputs = generate(model, tokenizer, render_prompts(prompts, tokenizer, cfg.template), params, cfg.batch_size,
                       on_batch=on_batch)
    seconds = time.perf_counter() - started
    new_tokens = sum(len(o.response_ids) for o in outputs)
    print(f"{model_name}: {len(outputs)} responses, {new_tokens} tokens in {seconds:.1f}s "
          f"({new_tokens / max(seconds, 1e-9):.0f} tokens/s)")
    return [{**prompts[o.prompt_index].extra, "prompt": prompts[o.prompt_index].prompt, "response": o.text,
             "model": model_name, "sample": o.sample_index, "finish_reason": o.finish_reason} for o in outputs]


def run_generate(cfg: GenerateConfig) -> list[dict[str, Any]]:
    if not cfg.prompts:
        raise ConfigError("prompts", "give a prompts file (--prompts FILE)")
    if cfg.num_samples < 1:
        raise ConfigError("num_samples", "must be at least 1")
    prompts = load_prompts(cfg.prompts, limit=cfg.limit or None, **read_kwargs(cfg))
    rows = [row for name in cfg.model for row in generate_rows(name, prompts, cfg)]
    write_jsonl(cfg.output, rows)
    print(f"wrote {len(rows)} rows to {cfg.output}")
    return rows


def main(argv: list[str]) -> int:
    run_generate(parse_config(GenerateConfig, argv, prog="posttrain generate", description=__doc__.splitlines()[0]))
    return 0
