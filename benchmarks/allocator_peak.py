"""Peak RSS over a few DPO LoRA steps on SmolLM2 cut to L layers, under glibc allocator variants.

    .venv/bin/python benchmarks/allocator_peak.py VARIANT LAYERS STEPS [auto|none]
    VARIANT: default | mmap (M_MMAP_THRESHOLD fixed at 1 MiB, what posttrain's recipes do) |
             trim (malloc_trim after every step); MALLOC_ARENA_MAX=1 in the environment for arenas.
    The last argument: the fused, chunked head (auto, the default) or the unfused one (none).
Random token ids, 4 pairs per step (prompts 30-60, responses 90-131 tokens), shared-prompt
padding-free rows, LoRA r16 (the recipe's batch path: BatchLayout + sequence_logps).
"""
import ctypes
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM

from posttrain.train.preference_batch import BatchLayout, sequence_logps
from posttrain.train.preference_data import PairExample

variant, layers, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = sys.argv[4] if len(sys.argv) > 4 else "auto"
libc = ctypes.CDLL("libc.so.6")
if variant == "mmap":
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB (fixed)
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
from posttrain.models.gguf import smollm2_checkpoint

model = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(), dtype=torch.float32)
model.model.layers = model.model.layers[:layers]; model.config.num_hidden_layers = layers
from peft import LoraConfig, get_peft_model

model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
g = torch.Generator().manual_seed(0)
ids = lambda n: torch.randint(10, 40000, (n,), generator=g).tolist()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
layout = BatchLayout(2, padding_free=True, prefix_sharing=True, mask_style="float")
import posttrain.models.logprobs as lp

orig = lp.response_logprobs
lp.response_logprobs = lambda *a, **k: orig(*a, **{**k, "chunk_size": None if chunk == "none" else "auto"})
t0 = time.time(); base = rss()
for step in range(steps):
    ex = [PairExample(ids(30 + 10 * i), ids(90 + 7 * i), ids(110 - 5 * i), index=i) for i in range(4)]
    batch = layout.pairs(ex)
    out = sequence_logps(model, batch, mean_logits=True)
    (-(out.logps[:4] - out.logps[4:]).sigmoid().log().sum()).backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    del out, batch
    if variant == "trim":
        libc.malloc_trim(0)
    print(f"step {step} rss {rss():.0f}", flush=True)
print(f"{variant} chunk={chunk} L={layers} base {base:.0f} peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MB final {rss():.0f} {time.time()-t0:.1f}s")
