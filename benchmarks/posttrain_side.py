"""posttrain's side of a benchmark run: the recipes' own pieces, wired as the recipes wire them.

Each function below is the body of `train_sft` / `train_reward_model` / `train_dpo` after
tokenisation (the benchmark hands both frameworks the same token ids, so the recipes'
file reading and chat templating are skipped), with three hooks: the step clock
(`TrainTask.prepare_step`, called at the start of every step), the token counter (around
`TrainTask.collate`), and a `save_final` that only marks the end of the last step (no
weights are written: disk speed is not what is measured).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.train.micro_batch import plan_micro_batches

from .data import pair_tokens, sft_tokens
from .measure import StepClock, TokenLog, counting_collator


def common_config(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    return dict(model=spec["model_dir"], peft="lora" if spec["mode"] == "lora" else "none",
                batch_size=spec["batch_size"], grad_accum=1, max_steps=spec["warmup"] + spec["steps"],
                learning_rate=spec["learning_rate"], seed=spec["seed"], max_length=spec["max_length"],
                output_dir=str(workdir / "posttrain-run"), progress=False, eval_fraction=0.0, log_every=1,
                gradient_checkpointing=spec["gradient_checkpointing"],
                attn_implementation=spec.get("attn_implementation", "sdpa"),
                lora_r=16, lora_alpha=32.0, lora_dropout=0.05)


def hooks(clock: StepClock) -> dict[str, Any]:
    return dict(prepare_step=clock.mark, save_final=lambda model, directory: clock.mark())


def run_sft(spec: dict[str, Any], rows: list[dict], workdir: Path, clock: StepClock, log: TokenLog) -> None:
    from posttrain.data import TokenizedExample, pack_examples
    from posttrain.models import load_tokenizer
    from posttrain.train import sft
    from posttrain.train.engine import TrainTask, run_training
    from posttrain.train.setup import load_trainable_model

    cfg = sft.SFTConfig(**common_config(spec, workdir), packing=spec["options"].get("sft_packing", False),
                        padding_free=spec["options"].get("sft_padding_free", False))
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    train: list[Any] = [TokenizedExample(r["prompt"] + r["chosen"], [-100] * len(r["prompt"]) + r["chosen"])
                        for r in rows]
    if cfg.packing:
        train = pack_examples(train, cfg.max_length)
        lengths_of = lambda pack: list(pack.lengths)  # noqa: E731
    else:
        lengths_of = lambda example: [len(example)]  # noqa: E731
    model = load_trainable_model(cfg, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing, quiet=True)
    cfg = plan_micro_batches(cfg, model, train, len).apply(cfg)  # the recipe's default split (auto)
    padding_free, _ = sft.resolve_layout(cfg, model, train)  # --sft-padding-free, or the recipe's auto rule
    dtype = next(model.parameters()).dtype
    collate = sft.collate_fn(tokenizer, cfg.packing, padding_free, cfg.attn_implementation, dtype)
    task = TrainTask(model=model, train_examples=train,
                     collate=counting_collator(collate, lengths_of, log),
                     compute_loss=sft.nll_sum, item_count=sft.trained_tokens, token_count=len, name="sft",
                     **hooks(clock))
    run_training(task, cfg, tokenizer=tokenizer)
    assert sum(log.per_batch) <= sum(sft_tokens(r["prompt"], r["chosen"]) for r in rows)


def run_rm(spec: dict[str, Any], rows: list[dict], workdir: Path, clock: StepClock, log: TokenLog) -> None:
    from posttrain.models import load_tokenizer
    from posttrain.train import reward
    from posttrain.train.engine import TrainTask, make_accelerator, run_training
    from posttrain.train.reward_batch import RewardGroup, collate_groups, resolve_layout

    cfg = reward.RMConfig(**common_config(spec, workdir), layout=spec["options"].get("rm_layout", "auto"),
                          eval_at_start=False)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    groups = [RewardGroup(r["prompt"], [r["chosen"], r["rejected"]], ranks=[0, 1]) for r in rows]
    accelerator = make_accelerator(cfg)
    model = reward.build_model(cfg)
    layout = resolve_layout(cfg.layout, cfg.attn_implementation, model)
    cfg = plan_micro_batches(cfg, model, groups, lambda group: group.num_tokens(layout)).apply(cfg)
    pad_id = tokenizer.pad_token_id

    def lengths_of(group: RewardGroup) -> list[int]:
        return [len(group.prompt_ids) + len(r) for r in group.response_ids]

    task = TrainTask(model=model, train_examples=groups,
                     collate=counting_collator(lambda chunk: collate_groups(chunk, layout, pad_id), lengths_of, log),
                     compute_loss=reward.make_loss(cfg), item_count=lambda group: 1,
                     token_count=lambda group: group.num_tokens(layout), name="rm", **hooks(clock))
    run_training(task, cfg, accelerator=accelerator, tokenizer=tokenizer)


def run_dpo(spec: dict[str, Any], rows: list[dict], workdir: Path, clock: StepClock, log: TokenLog) -> None:
    from posttrain.models import load_tokenizer
    from posttrain.train import dpo
    from posttrain.train.engine import TrainTask, make_accelerator, run_training, to_device
    from posttrain.train.preference_batch import BatchLayout, check_layout, resolve_layout
    from posttrain.train.preference_data import PairExample
    from posttrain.train.reference import build_reference, model_identity, resolve_strategy

    options = spec["options"]
    precompute = options.get("dpo_reference", "precompute") == "precompute"
    reference = "cached" if precompute else ("adapter" if spec["mode"] == "lora" else "copy")
    cfg = dpo.DPOConfig(**common_config(spec, workdir), data=spec["data_path"], reference=reference,
                        layout=options.get("dpo_layout", "auto"))
    components, loss_options = dpo.loss_components(cfg)
    mask_style = check_layout(cfg)
    strategy = resolve_strategy(cfg.reference, needs_reference=dpo.needs_reference(cfg.loss), peft=cfg.peft,
                                ref_model=None, data_paths=[cfg.data])
    accelerator = make_accelerator(cfg)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    train = [PairExample(r["prompt"], r["chosen"], r["rejected"], index=i) for i, r in enumerate(rows)]
    model = load_trainable_model_quiet(cfg)
    dtype = next(model.parameters()).dtype
    cfg = plan_micro_batches(cfg, model, train, lambda e: 2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids),
                             device=accelerator.device).apply(cfg)
    padding_free, prefix_sharing, _ = resolve_layout(cfg, model, train)
    layout = BatchLayout(tokenizer.pad_token_id, padding_free=padding_free, prefix_sharing=prefix_sharing,
                         mask_style=mask_style, mask_dtype=dtype)

    def score(live, chunk):  # [B, 2] reference log-probs of (chosen, rejected), as train_dpo does
        batch = to_device(layout.pairs(chunk), accelerator.device)
        return live.sequence_logps(batch, (0, 1)).view(2, -1).T

    key_parts = {"recipe": "dpo", "reference": model_identity(cfg.model, cfg.seed), "dtype": str(dtype),
                 "mixed_precision": accelerator.mixed_precision, "max_length": cfg.max_length}
    ref = build_reference(strategy, cfg, model, accelerator, datasets=[(cfg.data, train)], score=score,
                          token_fields=("prompt_ids", "chosen_ids", "rejected_ids"), key_parts=key_parts)

    def lengths_of(pair: PairExample) -> list[int]:
        return [len(pair.prompt_ids) + len(pair.chosen_ids), len(pair.prompt_ids) + len(pair.rejected_ids)]

    task = TrainTask(model=model, train_examples=train, collate=counting_collator(layout.pairs, lengths_of, log),
                     compute_loss=dpo.make_loss(components, loss_options, ref), item_count=lambda example: 1,
                     token_count=layout.pair_tokens, name="dpo", **hooks(clock))
    run_training(task, cfg, accelerator=accelerator, tokenizer=tokenizer)
    assert sum(log.per_batch) <= sum(pair_tokens(r["prompt"], r["chosen"], r["rejected"]) for r in rows)


def load_trainable_model_quiet(cfg):
    from posttrain.train.setup import load_trainable_model

    return load_trainable_model(cfg, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing, quiet=True)


RUNNERS = {"sft": run_sft, "rm": run_rm, "dpo": run_dpo}
