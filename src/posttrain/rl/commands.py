"""`posttrain grpo`, `rloo`, `ppo`, `best-of-n`: read the flags, then run the recipe.

The recipes (`grpo.py`, `ppo.py`, `best_of_n.py`) import torch at their top, which takes
seconds; their configs (`configs.py`) do not. Each command parses its flags first and imports
its recipe only once they are valid, so `--help` and a bad flag answer at once.
"""
from __future__ import annotations

from ..config import parse_config
from .configs import BestOfNConfig, GRPOConfig, PPOConfig, RLOOConfig, merge_repeated_flags


def grpo_main(argv: list[str]) -> int:
    cfg = parse_config(GRPOConfig, merge_repeated_flags(argv, "--reward"), prog="posttrain grpo",
                       description="GRPO: group-relative policy optimisation with verifiable or learned rewards")
    from .grpo import train_grpo  # torch

    train_grpo(cfg)
    return 0


def rloo_main(argv: list[str]) -> int:
    cfg = parse_config(RLOOConfig, merge_repeated_flags(argv, "--reward"), prog="posttrain rloo",
                       description="RLOO: REINFORCE with a leave-one-out baseline")
    from .grpo import train_grpo  # torch

    train_grpo(cfg, name="rloo")
    return 0


def ppo_main(argv: list[str]) -> int:
    cfg = parse_config(PPOConfig, merge_repeated_flags(argv, "--reward"), prog="posttrain ppo",
                       description="PPO with a value model, KL-penalised rewards and GAE")
    from .ppo import train_ppo  # torch

    train_ppo(cfg)
    return 0


def best_of_n_main(argv: list[str]) -> int:
    cfg = parse_config(BestOfNConfig, argv, prog="posttrain best-of-n",
                       description="rejection sampling: best of n samples -> SFT data and preference pairs")
    from .best_of_n import run_best_of_n  # torch

    run_best_of_n(cfg)
    return 0
