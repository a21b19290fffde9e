"""train/memory.py: the glibc setting is applied once asked, and left alone when the user set it."""

import pytest

from posttrain.train import memory


@pytest.mark.skipif(memory._glibc() is None, reason="not glibc")
def test_keep_heap_small_applies_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert memory.keep_heap_small() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert memory.keep_heap_small() is False
    memory.trim()  # callable, returns nothing


def test_without_glibc_nothing_happens(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.keep_heap_small() is False
    assert memory.trim() is None
