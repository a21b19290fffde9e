"""Shared pytest fixtures. Each area adds its own fixture in its own block."""
from __future__ import annotations

import os
import tempfile

# Tests use tiny models, where a second intra-op thread costs more than it gives, and the
# multi-process tests would oversubscribe the CI machine's 2 cores. Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
# posttrain's caches (reference log-probs, converted models) go to a fresh folder per session,
# never into the user's ~/.cache/posttrain.
os.environ.setdefault("POSTTRAIN_CACHE", tempfile.mkdtemp(prefix="posttrain-test-cache-"))

import pytest


# --- judge: a real OpenAI-compatible HTTP server on 127.0.0.1 (see tests/openai_stub.py) ---
@pytest.fixture
def openai_stub():
    """A running `OpenAIStub`; script replies with `openai_stub.script(...)` or set `.handler`."""
    from openai_stub import OpenAIStub

    with OpenAIStub() as stub:
        yield stub


# --- dpo / kto: small synthetic preference and unpaired files with a visible preference ---
def _write_rows(path, rows):
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def preference_file(tmp_path):
    """`preference_file(n=16, seed=0, name="pairs.jsonl")`: pairs whose chosen starts with "YES " and
    rejected with "NO! ", followed by the same random letters (so only the marker separates them)."""
    import random

    def make(n: int = 16, seed: int = 0, name: str = "pairs.jsonl"):
        rng = random.Random(seed)
        rows = []
        for i in range(n):
            body = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 9)))
            rows.append({"prompt": f"Q{seed}-{i}: say it", "chosen": "YES " + body, "rejected": "NO! " + body})
        return _write_rows(tmp_path / name, rows)
    return make


@pytest.fixture
def unpaired_file(tmp_path):
    """`unpaired_file(n=16, seed=0)`: KTO rows, desirable ones start with "YES ", undesirable with "NO! "."""
    import random

    def make(n: int = 16, seed: int = 0, name: str = "unpaired.jsonl"):
        rng = random.Random(seed)
        rows = []
        for i in range(n):
            body = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 9)))
            good = i % 2 == 0
            rows.append({"prompt": f"Q{seed}-{i}: say it", "completion": ("YES " if good else "NO! ") + body, "label": good})
        return _write_rows(tmp_path / name, rows)
    return make
