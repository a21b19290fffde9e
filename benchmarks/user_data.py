"""Chat-style text data for the "as users run it" benchmark (benchmarks/defaults.py).

Both frameworks read the same JSONL file and tokenise it themselves, as a user's run does:
- preference rows `{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}` (DPO,
  reward model), prompts of `prompt_words` words, responses of `response_words` words
  (uniform in each range);
- SFT rows `{"prompt": [user], "completion": [assistant]}` of mixed lengths (the same draws).
Conversational on purpose: both frameworks then apply the model's chat template, and TRL's
default loss for prompt/completion rows is on the completion only, as posttrain's.
Words come from `benchmarks.data.WORDS`; a fixed seed makes the file reproducible.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from .data import synthetic_text


def words_between(rng: random.Random, bounds: tuple[int, int]) -> str:
    return synthetic_text(rng, rng.randint(*bounds))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def preference_rows(n: int, prompt_words=(10, 40), response_words=(30, 90), seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": user(words_between(rng, prompt_words)), "chosen": assistant(words_between(rng, response_words)),
             "rejected": assistant(words_between(rng, response_words))} for _ in range(n)]


def sft_rows(n: int, prompt_words=(10, 40), response_words=(30, 90), seed: int = 0) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["chosen"]}
            for r in preference_rows(n, prompt_words, response_words, seed)]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
