"""posttrain: post-training for large language models (SFT, reward models, DPO family, PPO/GRPO, data tools)."""

__version__ = "0.1.0"
