"""Training FLOPs and model FLOPs utilisation (MFU).

Convention (PaLM, Chowdhery et al. 2022, appendix B; the one torchtitan and Megatron use):
a training step (forward + backward) over a sequence of S tokens costs

    FLOPs(S) = 6 * N * S  +  12 * L * d_attn * S**2

- `N`: parameters that take part in a matmul per token: every weight of the transformer
  blocks plus the output head (`vocab x hidden`, counted even when tied to the input
  embedding, because the projection is computed). The input embedding is a lookup, not a
  matmul, so an untied input embedding is left out. 6 = 2 (multiply + add) x 3 (forward,
  and backward for activations and for weights).
- `12 * L * d_attn * S**2`: attention scores `Q K^T` and the weighted sum `A V`, each
  `2 * S**2 * d_attn` per layer forward, times 3 for training; `L` layers,
  `d_attn = num_heads * head_dim`. No discount for the causal mask (the convention).

FLOPs are counted from the DATA, not from what a framework chose to compute: every
sequence (prompt + response, standalone, no padding, no shared prefix) counts with its
own length S. Both frameworks are therefore credited with the same FLOPs for the same
batch, and MFU is proportional to tokens/s; a framework that skips work (logits only on
response tokens, a prompt computed once for two responses) shows up as higher MFU.
For a DPO pair, both sequences (prompt + chosen, prompt + rejected) count; a reference
forward (when not cached) is not counted (it is 2 * N * S more per sequence, no backward).

MFU = achieved FLOPs/s / peak FLOPs/s of the device (dense bf16 tensor-core peak, no
sparsity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

# Dense (no 2:4 sparsity) bf16 peak, FLOP/s, from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP formula needs from a decoder-only config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool = True  # Llama's SwiGLU: gate, up and down projections

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(hidden=config.hidden_size, layers=config.num_hidden_layers, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   intermediate=config.intermediate_size, vocab=config.vocab_size)

    @property
    def block_params(self) -> int:
        """Matmul weights of one transformer block (norms and biases are negligible and left out)."""
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return q_and_o + k_and_v + mlp

    @property
    def matmul_params(self) -> int:
        """N of the formula: all blocks plus the output head."""
        return self.layers * self.block_params + self.vocab * self.hidden

    @property
    def attention_width(self) -> int:
        return self.heads * self.head_dim


def training_flops(shape: ModelShape, sequence_lengths: Iterable[int]) -> float:
    """Forward + backward FLOPs of one pass over sequences of these lengths (see the module doc)."""
    lengths = list(sequence_lengths)
    linear = 6 * shape.matmul_params * sum(lengths)
    attention = 12 * shape.layers * shape.attention_width * sum(s * s for s in lengths)
    return float(linear + attention)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device from its name, or None when unknown.

    Longest matching key wins, so "NVIDIA H100 80GB HBM3" -> "H100 SXM" needs the
    SXM/PCIe/NVL hint in the name; a plain "H100" is taken as SXM (the common server part).
    """
    name = device_name.upper()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if all(part.upper() in name for part in key.split()):
            return PEAK_BF16_FLOPS[key]
    if "H100" in name:
        return PEAK_BF16_FLOPS["H100 SXM"]
    return None


def mfu(flops: float, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over peak FLOP/s."""
    if seconds <= 0 or peak <= 0:
        raise ValueError("seconds and peak must be positive")
    return flops / seconds / peak
