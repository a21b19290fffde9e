"""Shared pytest fixtures. Each area adds its own fixture in its own block."""
from __future__ import annotations

import pytest


# --- judge: a real OpenAI-compatible HTTP server on 127.0.0.1 (see tests/openai_stub.py) ---
@pytest.fixture
def openai_stub():
    """A running `OpenAIStub`; script replies with `openai_stub.script(...)` or set `.handler`."""
    from openai_stub import OpenAIStub

    with OpenAIStub() as stub:
        yield stub
