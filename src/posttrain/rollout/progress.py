"""Progress of batched generation: counts, tokens/s, and the one line every sampling command prints.

    on_batch = progress_logger("round 1", total=len(prompts), log=log_err)
    generate(model, tokenizer, prompts, params, on_batch=on_batch)
    # stderr: generate round 1: 32/192 prompts, 128 responses, 2400 tokens, 41.3 tokens/s

Kept free of torch so that commands which only read results can import it cheaply.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class GenerationStats:
    """What a generation run cost so far; `tokens_per_s` is new tokens over wall time."""

    responses: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"responses": self.responses, "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.tokens_per_s, 1)}

    def line(self, label: str, done: int, total: int) -> str:
        """The progress line every sampling command prints after each batch."""
        return (f"generate {label}: {done}/{total} prompts, {self.responses} responses, "
                f"{self.tokens} tokens, {self.tokens_per_s:.1f} tokens/s")


def progress_logger(label: str, total: int, log: Callable[[str], None]) -> Callable[[int, list], None]:
    """An `on_batch` for `generate` that logs `GenerationStats.line` after each batch of prompts."""
    stats, started = GenerationStats(), time.perf_counter()

    def on_batch(done: int, batch: list) -> None:
        stats.responses += len(batch)
        stats.tokens += sum(len(g.response_ids) for g in batch)
        stats.seconds = time.perf_counter() - started
        log(stats.line(label, done, total))

    return on_batch
