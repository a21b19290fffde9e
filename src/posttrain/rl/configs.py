"""The flags of the online recipes `grpo`, `rloo`, `ppo` and `best-of-n`: their config dataclasses.

They live apart from the recipes (`grpo.py`, `ppo.py`, `best_of_n.py`), whose modules import
torch at their top (seconds), so that `posttrain grpo --help` and a bad flag answer at once:
`commands.py` parses the flags with these classes and imports a recipe only to run it. The
recipes re-export their classes, and `loop.py` re-exports `RLArgs` and `merge_repeated_flags`.

A few choices come from tables kept in torch modules (advantages, reductions, KL estimators
and controllers, rollout layouts). They are spelled out here, in the tables' order;
tests/test_habits_startup.py checks that each names exactly its table's entries.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import AT_LEAST_0, AT_LEAST_1, help_field
from ..data.options import DataArgs
from ..train.args import ModelArgs, RunArgs

# The keys of `posttrain.losses.GROUP_ADVANTAGES` (losses/advantages.py).
ADVANTAGE_CHOICES = ("grpo", "dr_grpo", "rloo")
# `posttrain.losses.REDUCTIONS` (losses/reduce.py).
REDUCTION_CHOICES = ("token_mean", "sequence_mean", "sequence_sum", "sum_over_constant")
# `posttrain.losses.KL_ESTIMATORS` and `KL_CONTROLLERS` (losses/kl.py).
KL_ESTIMATOR_CHOICES = ("k1", "k2", "k3")
KL_CONTROLLER_CHOICES = ("fixed", "adaptive")
# `rl/rollouts.py` ROLLOUT_LAYOUTS.
ROLLOUT_LAYOUT_CHOICES = ("auto", "padded", "shared_prompt", "shared_prompt_padding_free")


@dataclass
class RLArgs(ModelArgs, RunArgs):
    # ----- prompts and rewards
    prompts: str = help_field("", "prompts file (prompt / messages / question rows; other fields such as 'answer' reach the reward)")
    task: str = help_field("", "a shipped verifiable task (arithmetic, sorting, code): sets prompts, eval_prompts and reward unless given")
    reward: list[str] = help_field([], "reward functions, each SPEC[:WEIGHT]: a built-in (math, sort, exact, regex, "
                                       "json_schema, code, answer_format), module:function, file.py:function, "
                                       "or rm:DIR (a reward model)")
    reward_weights: dict[str, float] | None = help_field(None, "more rewards with their weights, added to --reward: "
                                                         "SPEC=WEIGHT pairs (YAML: a {spec: weight} mapping)")
    limit: int = help_field(0, "use only the first N prompts (0: all)")
    eval_prompts: str = help_field("", "held-out prompts: greedy mean reward before training, every eval_every steps, "
                                   "and at the end ('none': no evaluation, also with --task)")
    eval_limit: int = help_field(200, "evaluate on at most this many eval prompts (0: all)")
    eval_every: int = help_field(0, "evaluate every N steps (0: only before and after training)")
    eval_max_new_tokens: int = help_field(0, "response length for evaluation (0: max_new_tokens)")
    # ----- sampling
    prompts_per_step: int = help_field(8, "prompts sampled per step (per process)")
    max_new_tokens: int = help_field(128, "longest response in tokens", aliases=["max_tokens"])
    temperature: float = help_field(1.0, "sampling temperature; log-probs for the loss use the same temperature")
    top_p: float = help_field(1.0, "nucleus sampling threshold")
    top_k: int = help_field(0, "sample from the k most likely tokens (0: off)")
    stop: list[str] = help_field([], "stop strings (the response is cut after them)")
    generation_batch_size: int = help_field(32, "prompts per generate() call")
    micro_batch_size: int = help_field(8, "sequences per forward/backward pass (gradient accumulation below that)")
    save_rollouts: bool = help_field(True, "append every sampled response with its reward to rollouts.jsonl")
    disable_dropout: bool = help_field(True, "turn dropout off (incl. LoRA dropout), so the training forward scores tokens as sampling did")
    rollout_layout: str = help_field("auto", "training-forward layout of a micro-batch: padded (each sample "
                                     "its own row, the plain path), shared_prompt (each prompt once for all "
                                     "its samples), shared_prompt_padding_free (and no padding), auto (the "
                                     "cheapest per micro-batch)", choices=list(ROLLOUT_LAYOUT_CHOICES))
    # ----- optimisation, checkpoints, logging, --distributed: `RunArgs`, as in every training
    # command; only the defaults that differ for online RL are set again here.
    output_dir: str = help_field("runs/rl", "run directory: config, metrics.jsonl, rollouts.jsonl, checkpoints/, final/")
    learning_rate: float = help_field(1e-6, "peak learning rate (RL wants small ones; LoRA ~1e-5)")
    lr_scheduler: str = help_field("constant", "learning-rate schedule after warmup", choices=["cosine", "linear", "constant"])
    max_steps: int = help_field(100, "rollout steps to run (each: sample, score, update)")


@dataclass
class GRPOConfig(RLArgs):
    output_dir: str = help_field("runs/grpo", "run directory: config, metrics.jsonl, rollouts.jsonl, checkpoints/, final/")
    num_samples: int = help_field(8, "samples per prompt (the group size G)", aliases=["n", "samples"])
    advantage: str = help_field("grpo", "group baseline: grpo (mean/std), dr_grpo (mean only), rloo (leave-one-out)",
                                choices=list(ADVANTAGE_CHOICES))
    loss_aggregation: str = help_field("token_mean", "how per-token losses become one number: token_mean (DAPO), "
                                       "sequence_mean (GRPO paper), sequence_sum (REINFORCE), "
                                       "sum_over_constant (Dr. GRPO, divides by max_new_tokens)", choices=list(REDUCTION_CHOICES))
    kl_coef: float = help_field(0.04, "KL coefficient beta to the reference model (0: no reference model is loaded)",
                                aliases=["beta"])
    kl_estimator: str = help_field("k3", "per-token KL estimator of the loss term", choices=list(KL_ESTIMATOR_CHOICES))
    kl_in_reward: bool = help_field(False, "subtract kl_coef * sequence KL (sum of k1) from each reward instead of a KL loss term")
    epsilon: float = help_field(0.2, "clip range below 1 (eps_low)", aliases=["cliprange"])
    epsilon_high: float | None = help_field(None, "clip range above 1 (eps_high; DAPO's clip-higher uses 0.28); "
                                            "default: epsilon", aliases=["cliprange_high"])
    ppo_epochs: int = help_field(1, "passes over each rollout batch (GRPO's mu; > 1 reuses it with the old "
                                    "log-probs)", aliases=["mu"])
    num_minibatches: int = help_field(1, "optimizer steps per pass over a rollout batch")
    entropy_coef: float = help_field(0.0, "entropy bonus coefficient (subtracted from the loss)")
    missing_eos_penalty: float = help_field(0.0, "subtract this from the reward of responses cut at max_new_tokens")
    dynamic_sampling: int = help_field(0, "dynamic sampling (DAPO): replace groups whose samples all got the same "
                                          "reward (no learning signal) by groups of further prompts, sampled in up "
                                          "to this many extra rounds per step (0: off)", range=AT_LEAST_0)
    # The combined objective (rl/combined.py): policy_coef * GRPO + dpo_coef * DPO + bc_coef * NLL.
    policy_coef: float = help_field(1.0, "weight of the GRPO policy loss in the combined objective")
    dpo_coef: float = help_field(0.0, "weight of a DPO loss on best-vs-worst pairs of each rollout group (0: off)")
    dpo_beta: float = help_field(0.1, "DPO beta of that term (its reference: pi_ref if kl_coef > 0, else pi_old)")
    bc_coef: float = help_field(0.0, "weight of a behaviour-cloning NLL on expert data (needs bc_data; 0: off)")
    bc_data: str | None = help_field(None, "expert prompt/completion JSONL for the behaviour-cloning term")
    bc_batch_size: int = help_field(8, "expert rows per optimizer step for the behaviour-cloning term")
    threads: int = help_field(0, "CPU threads for torch (0: one per core that other jobs leave free, from the "
                                 "load average and the cores busy at start; OMP_NUM_THREADS, when set, is kept)",
                                 range=AT_LEAST_0)


@dataclass
class RLOOConfig(GRPOConfig):
    output_dir: str = help_field("runs/rloo", "run directory: config, metrics.jsonl, rollouts.jsonl, checkpoints/, final/")
    num_samples: int = help_field(4, "samples per prompt (k)", aliases=["n", "samples"])
    advantage: str = help_field("rloo", "group baseline: rloo (leave-one-out), grpo, dr_grpo", choices=list(ADVANTAGE_CHOICES))
    loss_aggregation: str = help_field("sequence_sum", "per-token loss reduction (sequence_sum: REINFORCE on whole responses)",
                                       choices=list(REDUCTION_CHOICES))
    kl_coef: float = help_field(0.05, "KL coefficient beta (0: no reference model is loaded)", aliases=["beta"])
    kl_in_reward: bool = help_field(True, "subtract kl_coef * sequence KL from each reward (RLOO paper) instead of a KL loss term")


@dataclass
class PPOConfig(RLArgs):
    output_dir: str = help_field("runs/ppo", "run directory: config, metrics.jsonl, rollouts.jsonl, checkpoints/, final/, value_model/")
    num_samples: int = help_field(1, "samples per prompt", aliases=["n", "samples"])
    value_model: str = help_field("separate", "value model: a separate copy with a scalar head, or a head on the policy's backbone",
                                  choices=["separate", "shared"])
    value_model_path: str = help_field("", "initialise the separate value model from this model or reward-model directory (default: the policy)")
    value_learning_rate: float = help_field(0.0, "learning rate of the value model (0: learning_rate)")
    vf_coef: float = help_field(0.1, "weight of the value loss")
    epsilon: float = help_field(0.2, "policy ratio clip range below 1 (eps_low)", aliases=["cliprange"])
    epsilon_high: float | None = help_field(None, "clip range above 1 (eps_high, clip-higher); default: epsilon",
                                            aliases=["cliprange_high"])
    cliprange_value: float = help_field(0.2, "value clip around the rollout values (0: no clipping)")
    gamma: float = help_field(1.0, "discount")
    lam: float = help_field(0.95, "GAE lambda")
    kl_coef: float = help_field(0.05, "KL penalty coefficient beta (the start value for the adaptive controller)",
                                aliases=["beta"])
    kl_estimator: str = help_field("k1", "per-token KL in the reward: k1 = log π - log π_ref (unbiased), k3 (>= 0, lower variance)",
                                   choices=list(KL_ESTIMATOR_CHOICES))
    kl_controller: str = help_field("fixed", "fixed beta, or adaptive toward kl_target", choices=list(KL_CONTROLLER_CHOICES))
    kl_target: float = help_field(6.0, "adaptive controller: target KL per sequence (nats)")
    kl_horizon: int = help_field(10000, "adaptive controller: horizon in samples")
    whiten_advantages: bool = help_field(True, "normalise advantages to mean 0, variance 1 over the batch")
    whiten_rewards: bool = help_field(False, "scale per-token rewards to unit variance before GAE")
    ppo_epochs: int = help_field(4, "passes over each rollout batch", aliases=["mu"])
    num_minibatches: int = help_field(1, "optimizer steps per pass")
    loss_aggregation: str = help_field("token_mean", "how per-token losses become one number", choices=list(REDUCTION_CHOICES))
    entropy_coef: float = help_field(0.0, "entropy bonus coefficient")
    missing_eos_penalty: float = help_field(0.0, "subtract this from the score of responses cut at max_new_tokens")
    value_warmup_steps: int = help_field(0, "rollout steps at the start that train only the value model "
                                            "(the policy loss is off while the critic learns a baseline)")
    # InstructGPT's PPO-ptx: + ptx_coef * (token-mean NLL of ptx_batch_size rows of ptx_data) in every optimizer step.
    ptx_coef: float = help_field(0.0, "PPO-ptx: weight of an NLL term on ptx_data in every PPO optimizer step (0: off)",
                                range=AT_LEAST_0)
    ptx_data: str | None = help_field(None, "PPO-ptx data: prompt/completion rows (SFT data: NLL on the completion) "
                                            "or text rows (pre-training data: NLL on every token)")
    ptx_batch_size: int = help_field(8, "PPO-ptx rows per optimizer step", range=AT_LEAST_1)


@dataclass
class BestOfNConfig(ModelArgs, DataArgs):
    prompts: str = help_field("", "prompts file (prompt / messages / question rows; other fields reach the reward)")
    task: str = help_field("", "a shipped verifiable task (arithmetic, sorting, code): sets prompts, eval_prompts and reward unless given")
    reward: list[str] = help_field([], "reward functions, each SPEC[:WEIGHT] (see posttrain grpo --help)")
    reward_weights: dict[str, float] | None = help_field(None, "more rewards with their weights, added to --reward: "
                                                         "SPEC=WEIGHT pairs (YAML: a {spec: weight} mapping)")
    limit: int = help_field(0, "use only the first N prompts (0: all)")
    output_dir: str = help_field("runs/best-of-n", "run directory: round-K/ data (and models), summary.json")
    num_samples: int = help_field(8, "samples per prompt (the n of best-of-n)", aliases=["n", "samples"])
    max_new_tokens: int = help_field(256, "longest response in tokens", aliases=["max_tokens"])
    temperature: float = help_field(0.8, "sampling temperature")
    top_p: float = help_field(1.0, "nucleus sampling threshold")
    top_k: int = help_field(0, "sample from the k most likely tokens (0: off)")
    stop: list[str] = help_field([], "stop strings")
    generation_batch_size: int = help_field(32, "prompts per generate() call")
    seed: int = help_field(0, "sampling and training seed")
    select: str = help_field("best", "which samples become SFT data", choices=["best", "threshold", "condition"])
    threshold: float | None = help_field(None, "threshold: keep samples scoring >= this; best: keep the best only if it does")
    condition: str = help_field("", "condition: module:function(prompt, response, score, **extra) -> bool")
    dedup: bool = help_field(True, "keep one copy of identical responses to the same prompt")
    keep_truncated: bool = help_field(False, "let responses cut at max_new_tokens be kept (and chosen in pairs)")
    pair_min_margin: float = help_field(0.0, "write a best-vs-worst pair only when best - worst exceeds this")
    iterations: int = help_field(1, "rounds of sample -> select -> train (Llama-2-style rejection sampling)")
    train: str = help_field("auto", "what each round trains: sft on kept samples, dpo on pairs, none; auto: sft when iterations > 1",
                            choices=["auto", "sft", "dpo", "none"])
    accumulate: bool = help_field(False, "train each round on the data of all rounds so far (not only its own)")
    train_learning_rate: float = help_field(1e-5, "learning rate of each round's training")
    train_epochs: float = help_field(1.0, "epochs of each round's training")
    train_batch_size: int = help_field(8, "examples per optimizer step of each round's training, all processes "
                                          "together (split evenly over them)")
    train_max_steps: int = help_field(0, "optimizer steps per round (0: from train_epochs)")
    dpo_beta: float = help_field(0.1, "DPO beta for --train dpo")
    eval_prompts: str = help_field("", "held-out prompts: greedy mean reward before and after each round")
    eval_limit: int = help_field(200, "evaluate on at most this many eval prompts (0: all)")
    eval_max_new_tokens: int = help_field(0, "response length for evaluation (0: max_new_tokens)")
    resume: bool = help_field(False, "reuse finished rounds found in output_dir")
    distributed: str = help_field("auto", "how processes share each round's training (sampling is split by prompt "
                                  "in every mode): auto (what the launcher set up), ddp, fsdp, zero2, zero3; "
                                  "see docs/distributed.md", choices=["auto", "ddp", "fsdp", "zero2", "zero3"])
    cpu_offload: bool = help_field(False, "training with fsdp/zero3: keep parameters and optimizer state in CPU memory "
                                   "(zero2: optimizer state)")
    progress: bool = help_field(True, "show progress: a line per generation batch while sampling (stderr), bars while training")


def merge_repeated_flags(argv: list[str], flag: str) -> list[str]:
    """`--reward a --reward b:0.1` -> `--reward a b:0.1` (argparse keeps only the last list flag)."""
    values, rest, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        if argv[i] == flag:
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
        elif argv[i].startswith(flag + "="):
            values.append(argv[i].split("=", 1)[1])
            i += 1
        else:
            rest.append(argv[i])
            i += 1
    return rest + ([flag, *values] if values else [])
