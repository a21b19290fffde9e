"""posttrain.rl: online RL and rejection sampling on top of the losses, models and engine pieces.

- `rewards.py`    reward specs from config (`math`, `module:function`, a reward-model directory,
                  weighted sums) -> one scoring function over generations
- `rollouts.py`   generations -> `Sample`s -> padded training batches (masks, per-token fields)
- `loop.py`       the online loop: Accelerate set-up, optimizer step with NaN check,
                  checkpoint/resume, prompt schedule, metrics.jsonl, progress, final save
- `online.py`     pieces of one online step: sampling + scoring, the reference model,
                  log-probs, metrics, greedy evaluation
- `grpo.py`       `posttrain grpo` and `posttrain rloo` (group baselines, clipped surrogate, KL)
- `ppo.py`        `posttrain ppo` (value model, KL-penalised reward, GAE, clipped losses)
- `best_of_n.py`  `posttrain best-of-n` (rejection sampling -> SFT data, preference pairs,
                  iterated with SFT or DPO)
- `configs.py`    the config dataclasses of these commands (and `RLArgs`), without torch
- `commands.py`   their `main(argv)`s: parse with `configs.py`, then import the recipe
"""
