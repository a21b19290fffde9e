"""A toy verifiable task for the online-RL tests (tests/test_rl_*.py).

`tiny-random` writes random bytes; the reward is the fraction of lowercase ASCII letters in
the response (about 0.1 at the start), something a policy-gradient method can push up in
a couple of dozen steps on one CPU core.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest


def lowercase(prompt: str, response: str, **extra) -> float:
    """Fraction of the response's characters that are a-z (0 for an empty response)."""
    if not response:
        return 0.0
    return sum("a" <= c <= "z" for c in response) / len(response)


def lowercase_even(prompt: str, response: str, id: int = 0, **extra) -> float:
    """`lowercase` for prompts with an even id, 0 for the others: half the groups carry no signal."""
    return lowercase(prompt, response) if int(id) % 2 == 0 else 0.0


def short(prompt: str, response: str) -> float:
    """1 for responses of at most 4 characters (a second reward for weighted sums)."""
    return float(len(response) <= 4)


def write_prompts(directory: Path, count: int = 16) -> Path:
    path = Path(directory) / "prompts.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps({"prompt": f"Say something {i}", "id": i}) + "\n")
    return path


def early_late(rows: list[dict], key: str = "reward", k: int = 5) -> tuple[float, float]:
    """Mean of `key` over the first k and the last k training rows (rows with that key)."""
    values = [r[key] for r in rows if key in r]
    return sum(values[:k]) / k, sum(values[-k:]) / k


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with `count` intra-op torch threads, then restore the previous number."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models run far faster on one intra-op thread (no thread start-up or spinning per op,
    which on a busy machine costs more than the matmuls themselves)."""
    with torch_threads(1):
        yield


def crash_on_call(function, call_number: int):
    """`function`, except that call number `call_number` raises (a crash in the middle of a run)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call_number:
            raise RuntimeError("simulated crash")
        return function(*args, **kwargs)
    return wrapped
