"""The flags of the offline preference recipes `dpo`, `kto` and `rm`: their config dataclasses.

They live apart from the recipes (`dpo.py`, `kto.py`, `reward.py`), whose modules import torch
at their top (seconds), so that `posttrain dpo --help` and a bad flag answer at once:
`commands.py` parses the flags with these classes and imports a recipe only to run it. The
recipes re-export their class (`from posttrain.train.dpo import DPOConfig` still works).

A few choices come from tables kept in torch modules (the losses, the reference strategies,
the batch layouts). They are spelled out here, in the tables' order;
tests/test_habits_startup.py checks that each names exactly its table's entries.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import help_field
from .args import ModelArgs, TrainArgs
from .preference_data import INVALID_POLICIES

# The keys of `posttrain.losses.PREFERENCE_LOSSES` (losses/preference.py).
PREFERENCE_LOSS_CHOICES = ("sigmoid", "cdpo", "robust", "ipo", "ipo_sum", "hinge", "rpo", "simpo", "orpo")
# `posttrain.losses.RANKING_LOSSES` (losses/reward.py).
RANKING_LOSS_CHOICES = ("pairwise", "plackett_luce")
# `train/reference.py` STRATEGIES.
REFERENCE_CHOICES = ("auto", "copy", "adapter", "cached")
# `train/preference_batch.py` LAYOUT_CHOICES: auto, then its LAYOUTS.
PREFERENCE_LAYOUT_CHOICES = ("auto", "padded", "padding_free", "shared_prompt", "shared_prompt_padding_free")
# `train/reward_batch.py` LAYOUTS.
REWARD_LAYOUT_CHOICES = ("auto", "shared_prompt", "padded")


@dataclass
class DPOConfig(ModelArgs, TrainArgs):
    output_dir: str = help_field("runs/dpo", "run directory: config, metrics.jsonl, checkpoints/, final/")
    learning_rate: float = help_field(1e-6, "peak learning rate (LoRA usually wants 5e-6 to 5e-5)")
    data: list[str] = help_field([], "preference data (prompt, chosen, rejected): one or more files, dataset "
                                     "directories or hub ids (concatenated)")
    eval_data: str | None = help_field(None, "validation pairs (default: eval_fraction of the training data)")
    limit: int = help_field(0, "use only the first N rows of each file (0: all)")
    loss: list[str] = help_field(["sigmoid"], "loss, or several to mix (see docs/dpo.md)", choices=list(PREFERENCE_LOSS_CHOICES))
    loss_weights: list[float] = help_field([], "one weight per --loss when mixing (default: 1 each)")
    beta: float | None = help_field(None, "temperature of the implicit reward (default: 0.1; 2.0 for simpo)")
    label_smoothing: float = help_field(0.1, "cdpo/robust: assumed rate of flipped labels")
    simpo_gamma: float = help_field(1.0, "simpo: target reward margin")
    orpo_lambda: float = help_field(0.1, "orpo: weight of the odds-ratio term")
    rpo_alpha: float = help_field(1.0, "rpo: weight of the NLL term on chosen")
    reference: str = help_field("auto", "reference log-probs: auto, copy, adapter, cached (see docs/dpo.md)",
                                choices=list(REFERENCE_CHOICES))
    ref_model: str | None = help_field(None, "reference model (default: the starting model)")
    layout: str = help_field("auto", "batch layout: auto (the cheapest the attention kernel allows, estimated from "
                             "the data and logged), padded (the plain path: one row per sequence), padding_free, "
                             "shared_prompt (the prompt once for chosen and rejected), shared_prompt_padding_free; "
                             "all give the same loss (see docs/dpo.md)", choices=list(PREFERENCE_LAYOUT_CHOICES))
    prefix_sharing: bool = help_field(False, "older flag: --layout shared_prompt (with --padding-free: "
                                             "shared_prompt_padding_free)")
    padding_free: bool = help_field(False, "older flag: --layout padding_free")
    invalid_rows: str = help_field("error", "rows that cannot be trained on (chosen == rejected, empty "
                                   "response, ...): stop, or drop and count them", choices=list(INVALID_POLICIES))


@dataclass
class KTOConfig(ModelArgs, TrainArgs):
    output_dir: str = help_field("runs/kto", "run directory: config, metrics.jsonl, checkpoints/, final/")
    learning_rate: float = help_field(1e-6, "peak learning rate (LoRA usually wants 5e-6 to 5e-5)")
    data: list[str] = help_field([], "unpaired rows (prompt, completion, label) or preference pairs: one or more "
                                     "files, dataset directories or hub ids (concatenated)")
    eval_data: str | None = help_field(None, "validation data (default: eval_fraction of the training data)")
    limit: int = help_field(0, "use only the first N rows of each file (0: all)")
    beta: float = help_field(0.1, "temperature of the implicit reward")
    desirable_weight: float = help_field(1.0, "lambda_D, weight of desirable examples")
    undesirable_weight: float = help_field(1.0, "lambda_U, weight of undesirable examples")
    reference: str = help_field("auto", "reference log-probs: auto, copy, adapter, cached (see docs/kto.md)",
                                choices=list(REFERENCE_CHOICES))
    ref_model: str | None = help_field(None, "reference model (default: the starting model)")
    padding_free: bool = help_field(False, "all sequences of a micro-batch in one row, no padding")
    invalid_rows: str = help_field("error", "rows that cannot be trained on: stop, or drop and count them",
                                   choices=list(INVALID_POLICIES))


@dataclass
class RMConfig(ModelArgs, TrainArgs):
    output_dir: str = help_field("runs/rm", "run directory: config, metrics.jsonl, rm_summary.json, final/")
    learning_rate: float = help_field(1e-5, "peak learning rate (LoRA usually wants 1e-4 to 3e-4)")
    batch_size: int = help_field(8, "prompt groups (a pair or a ranking each) per micro-batch per process")
    eval_fraction: float = help_field(0.1, "hold out this fraction of the prompt groups when no eval_data is given")
    early_stopping_mode: str = help_field("min", "whether lower or higher is better (use max for eval/accuracy)",
                                          choices=["min", "max"])
    data: list[str] = help_field([], "training data: preference pairs and/or rankings (files, dataset dirs, hub ids)")
    eval_data: str | None = help_field(None, "held-out data (default: eval_fraction of the training data)")
    loss: str = help_field("pairwise", "ranking loss: pairwise = mean Bradley-Terry over each prompt's pairs "
                                       "(InstructGPT); plackett_luce = listwise likelihood", choices=list(RANKING_LOSS_CHOICES))
    use_margin: bool = help_field(False, "subtract each pair's `margin` field inside the Bradley-Terry loss (Llama 2)")
    layout: str = help_field("auto", "batch layout: shared_prompt (prompt once per group, block mask), padded, "
                                     "or auto (shared_prompt when the attention kernel allows)", choices=list(REWARD_LAYOUT_CHOICES))
    eval_at_start: bool = help_field(True, "also measure the held-out metrics before training (in rm_summary.json)")
    limit: int = help_field(0, "use only the first N rows of each dataset (0: all)")
