"""`posttrain dpo`, `posttrain kto`, `posttrain rm`: read the flags, then run the recipe.

The recipes (`dpo.py`, `kto.py`, `reward.py`) import torch at their top, which takes seconds;
their configs (`configs.py`) do not. Each command parses its flags first and imports its
recipe only once they are valid, so `--help` and a bad flag answer at once.
"""
from __future__ import annotations

from ..config import parse_config
from .configs import DPOConfig, KTOConfig, RMConfig


def dpo_main(argv: list[str]) -> int:
    cfg = parse_config(DPOConfig, argv, prog="posttrain dpo",
                       description="Preference optimisation, the DPO family: `posttrain dpo --loss NAME`.")
    from .dpo import train_dpo  # torch

    train_dpo(cfg)
    return 0


def kto_main(argv: list[str]) -> int:
    cfg = parse_config(KTOConfig, argv, prog="posttrain kto", description="KTO on unpaired data: `posttrain kto`.")
    from .kto import train_kto  # torch

    train_kto(cfg)
    return 0


def rm_main(argv: list[str]) -> int:
    cfg = parse_config(RMConfig, argv, prog="posttrain rm", description="Reward-model training: `posttrain rm`.")
    from .reward import train_reward_model  # torch

    train_reward_model(cfg)
    return 0
