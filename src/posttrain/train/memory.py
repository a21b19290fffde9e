"""Give freed memory back to the system during training (glibc malloc).

Why: a training step allocates and frees gigabytes of activations, mostly blocks of 1 to
30 MB. glibc serves blocks above its mmap threshold from their own mappings, which go
back to the system when freed, but it raises that threshold (up to 32 MB) each time such
a block is freed, so after the first step the activations come from the heap instead,
where freed blocks stay mapped and fragment. Measured on SmolLM2-135M cut to 8 layers,
LoRA, 4 DPO pairs (~960 tokens) per step, 4 steps: peak RSS 1,893 MB by default, 1,425 MB
with the threshold fixed at 1 MiB; `MALLOC_ARENA_MAX=1` 1,870 MB and `malloc_trim` after
every step 1,835 MB barely helped (docs/benchmarks.md, "Where the memory goes").

But it costs time: every large block is then a fresh mapping whose pages the kernel
faults in and zeroes. The same run took 64.7 s instead of 43.6 s (+48%; 8 MiB: 1,653 MB,
+27%), so the recipes do NOT call `keep_heap_small()` by default; it is here for a
memory-bound run (call it first) and for the benchmarks. `trim()` (malloc_trim, cheap) is
called after DPO's reference pre-pass, and after every micro-batch with `--trim-memory`
(SFT LoRA, 8 examples of ~256 tokens per step: peak 3.2 -> 2.0 GB, +15% time). Both do nothing
off glibc. The better fix is another allocator: `posttrain.allocator` runs the model commands
under jemalloc when the machine has it (the same SFT run: 1.74 GB in the same time).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


@lru_cache(maxsize=1)
def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_heap_small() -> bool:
    """Serve blocks of 1 MiB and more from their own mappings for the rest of the process.
    Returns whether the setting was applied."""
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim() -> None:
    """Return the heap's free pages to the system."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
