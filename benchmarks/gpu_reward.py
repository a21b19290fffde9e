"""A reward for GRPO throughput runs on a random model: longer responses score higher.
Two signatures, one per framework (the reward's value does not matter for throughput)."""


def posttrain_length(prompt: str, response: str, **extra) -> float:
    return len(response) / 100.0


def trl_length(prompts, completions, **kwargs) -> list[float]:
    return [len(str(c)) / 100.0 for c in completions]
