"""The one shared training loop, on Accelerate.

A recipe (sft.py, reward.py, dpo.py, ...) builds a `TrainTask`: the model, the
tokenised examples, how to collate a micro-batch and how to compute its loss.
`run_training` does everything else: seeds, data order, gradient accumulation,
mixed precision, clipping, the schedule, validation and early stopping, atomic
checkpoints with exact resume, NaN checks, SIGINT, metrics and progress.

How "mean" is kept honest (ARCHITECTURE.md, "Means"): a recipe returns the *sum* of
its per-item losses over a micro-batch (`LossOutput.loss_sum`) and says how
many items each example contributes (`item_count`: label tokens for a token
mean, 1 for a per-sequence or per-pair mean). The engine knows the whole global
batch of every step in advance, so it divides by the global item count before
backward. Splitting a batch into micro-batches or across processes therefore
gives the same gradient as one big batch (DDP averages over processes, so each
process's loss is also multiplied by the number of processes).

Data order is a function of (seed, epoch) only, and the step fixes the position
in it, so resuming from a checkpoint replays exactly the batches that an
uninterrupted run would have seen.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config import validate_ranges
from ..distributed.plugins import plan_distributed
from ..distributed.training import gradient_norm, micro_batch_sync, settle_sharded_model
from ..errors import ConfigError, PosttrainError, TrainingError, storage_errors
from ..models.saving import save_model_files
from .args import TrainArgs, check_trackers  # (checked when the command line is read, and again here)
from .checkpoint import (
    checkpoint_model_files,
    checkpoint_root,
    last_good_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    removed_on_error,
    save_checkpoint,
)
from .health import (
    PER_STEP_WEIGHT_CHECK_MAX_VALUES,
    StepHealth,
    check_step_health,
    trainable_values,
    weights_problem,
    where_to_restart,
)
from .metrics import MetricsLog, Progress, truncate_metrics
from .optim import build_optimizer, build_scheduler
from .setup import is_main_process


@dataclass
class LossOutput:
    """What a recipe's loss function returns for one micro-batch."""

    loss_sum: torch.Tensor  # scalar: sum of per-item losses in this micro-batch
    metric_sums: dict[str, torch.Tensor | float] = field(default_factory=dict)  # summed over items


@dataclass
class TrainTask:
    """Everything recipe-specific that the shared loop needs."""

    model: torch.nn.Module
    train_examples: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, Any]]
    compute_loss: Callable[[torch.nn.Module, dict[str, Any]], LossOutput]
    item_count: Callable[[Any], int] = lambda example: 1
    token_count: Callable[[Any], int] = lambda example: len(example["input_ids"])
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    save_final: Callable[[torch.nn.Module, Path], None] | None = None
    name: str = "train"
    # Called before each optimizer step with the model and the examples of every micro-batch of
    # the global batch (all processes; micro-batch m runs on process m // grad_accum), for
    # statistics over the whole global batch that every micro-batch's loss needs (KTO's z0).
    prepare_step: Callable[[torch.nn.Module, list[list[Any]]], None] | None = None


@dataclass
class TrainResult:
    steps: int
    final_dir: Path | None
    last_metrics: dict[str, Any]
    eval_metrics: dict[str, Any]
    seconds: float
    tokens_per_second: float
    stopped_early: bool = False


class Interrupted(PosttrainError):
    """SIGINT: a checkpoint was saved and the run can be resumed."""

    exit_code = 130


def make_accelerator(args: TrainArgs, project_name: str = "posttrain"):
    from accelerate import Accelerator

    mixed = args.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if mixed != "no" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision", f"{mixed} needs a GPU; use 'no' or 'auto' on CPU")
    check_trackers(args.report_to)
    plan = plan_distributed(args)  # --distributed: DDP, FSDP or DeepSpeed plugin (docs/distributed.md)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed,
                              log_with=args.report_to or None, project_dir=args.output_dir, **plan.kwargs)
    plan.finish(accelerator)
    if args.report_to:
        accelerator.init_trackers(project_name)
    return accelerator


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def step_micro_batches(num_examples: int, args: TrainArgs, world: int, step: int, steps_per_epoch: int) -> list[list[int]]:
    """Example indices of each micro-batch of optimizer step `step`, for all processes.

    Micro-batch m of the global batch goes to process m // grad_accum, so one
    process with grad_accum=2 sees exactly what two processes with grad_accum=1 see.
    """
    epoch, position = divmod(step, steps_per_epoch)
    order = epoch_order(num_examples, args.seed, epoch)
    size = args.batch_size
    start = position * size * args.grad_accum * world
    return [order[start + m * size: start + (m + 1) * size] for m in range(args.grad_accum * world)]


def plan_steps(num_examples: int, args: TrainArgs, world: int) -> tuple[int, int]:
    """(steps_per_epoch, total_steps). Incomplete global batches at an epoch's end are skipped;
    the next epoch's new order covers those examples."""
    global_batch = args.batch_size * args.grad_accum * world
    if num_examples == 0:
        raise ConfigError("data", "the training set is empty")
    if global_batch > num_examples:
        raise ConfigError("batch_size", f"the global batch ({args.batch_size} x {args.grad_accum} accumulation x "
                                        f"{world} processes = {global_batch}) is larger than the training set ({num_examples})")
    steps_per_epoch = num_examples // global_batch
    total = args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.epochs * steps_per_epoch))
    return steps_per_epoch, total


def describe_examples(examples: Sequence[Any]) -> str:
    """"12 examples", or for packed training "3 packs holding 12 rows"."""
    if examples and all(hasattr(e, "lengths") for e in examples):  # data/packing.py Pack
        return f"{len(examples)} packs holding {sum(len(e.lengths) for e in examples)} rows"
    return f"{len(examples)} examples"


def fit_batch_to_data(args: TrainArgs, examples: Sequence[Any], world: int) -> TrainArgs:
    """A training set smaller than one global batch trains on all of itself each step, with a
    one-line warning (as TRL does), instead of stopping: the micro-batch and accumulation shrink
    to fit. (The loss is normalised by the global item count, so this changes no meaning.)"""
    num_examples = len(examples)
    global_batch = args.batch_size * args.grad_accum * world
    if num_examples == 0 or global_batch <= num_examples:
        return args
    if num_examples < world:
        raise ConfigError("data", f"the training set ({describe_examples(examples)}) is smaller than the number of "
                                  f"processes ({world}); each process needs at least one example")
    grad_accum = min(args.grad_accum, num_examples // world)
    batch_size = num_examples // (grad_accum * world)
    if is_main_process():
        print(f"WARNING: the training set ({describe_examples(examples)}) is smaller than one global batch "
              f"({args.batch_size} x {args.grad_accum} accumulation x {world} processes = {global_batch}); "
              f"each step uses {batch_size * grad_accum * world} of them (batch size {batch_size} x {grad_accum} "
              "accumulation)", file=sys.stderr, flush=True)
    return dataclasses.replace(args, batch_size=batch_size, grad_accum=grad_accum)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def default_save_final(accelerator, tokenizer=None) -> Callable[[torch.nn.Module, Path], None]:
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def save(model: torch.nn.Module, directory: Path) -> None:
        # Sharded engines must gather the full state dict on every process first.
        state_dict = accelerator.get_state_dict(model) if sharded else None
        if accelerator.is_main_process:
            save_model_files(accelerator.unwrap_model(model), directory, state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(directory)
    return save


def save_final_atomically(accelerator, task: TrainTask, model, output_dir: str, tokenizer=None) -> Path:
    final = Path(output_dir) / "final"
    tmp = Path(output_dir) / ".tmp-final"
    # A full disk or a read-only directory: one line naming the path; the temporary folder goes.
    with storage_errors("the final model", final), removed_on_error(tmp, accelerator.is_main_process):
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        (task.save_final or default_save_final(accelerator, tokenizer))(model, tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def final_from_checkpoint(accelerator, checkpoint: Path, output_dir: str) -> Path:
    """final/ = the loadable model of `checkpoint` (copied, then renamed into place)."""
    final = Path(output_dir) / "final"
    tmp = Path(output_dir) / ".tmp-final"
    if accelerator.is_main_process:
        with storage_errors("the final model", final), removed_on_error(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for item in checkpoint_model_files(checkpoint):
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


@contextlib.contextmanager
def sigint_flag():
    """Turn Ctrl-C into a flag the loop checks after each step (only in the main thread)."""
    state = {"hit": False}

    def handler(signum, frame):
        state["hit"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave SIGINT alone
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    target = model
    if hasattr(target, "gradient_checkpointing_enable"):
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(target, "enable_input_require_grads"):
        target.enable_input_require_grads()


def _as_float(value: torch.Tensor | float) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def reduce_sums(accelerator, sums: dict[str, float]) -> dict[str, float]:
    """Sum a dict of floats over processes (one collective for all keys)."""
    if accelerator.num_processes == 1 or not sums:
        return sums
    keys = sorted(sums)
    tensor = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    tensor = accelerator.reduce(tensor, reduction="sum")
    return dict(zip(keys, tensor.tolist()))


def any_process(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(tensor, reduction="sum").item() > 0)


def improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def run_training(task: TrainTask, args: TrainArgs, accelerator=None, tokenizer=None) -> TrainResult:
    """Train `task.model` on `task.train_examples` as `args` says; see the module docstring."""
    from accelerate.utils import set_seed

    validate_ranges(args)  # also for options built in code (best-of-n's rounds, library callers)
    accelerator = accelerator or make_accelerator(args)
    set_seed(args.seed)
    world, rank = accelerator.num_processes, accelerator.process_index
    examples = task.train_examples
    args = fit_batch_to_data(args, examples, world)
    steps_per_epoch, total_steps = plan_steps(len(examples), args, world)

    model = task.model
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args, total_steps)
    # The scheduler is registered, not prepared: a prepared one steps once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    settle_sharded_model(model)  # FSDP2: the whole model is the root (see distributed/training.py)
    accelerator.register_for_checkpointing(scheduler)
    trainable = [p for p in model.parameters() if p.requires_grad]

    os.makedirs(args.output_dir, exist_ok=True)
    log = MetricsLog(accelerator, args.output_dir, args.report_to)
    state: dict[str, Any] = {"best": None, "bad_evals": 0, "stopped_early": False}
    step = 0
    if args.resume:
        checkpoint = latest_checkpoint(args.output_dir)
        if checkpoint is not None:
            state.update(load_checkpoint(accelerator, checkpoint))
            step = int(state.pop("step"))
            if accelerator.is_main_process:
                truncate_metrics(log.path, step)
                print(f"resumed from {checkpoint} at step {step}", flush=True)
    elif accelerator.is_main_process:
        log.path.unlink(missing_ok=True)

    progress = Progress(total_steps, step, enabled=args.progress and accelerator.is_main_process, description=task.name)
    started = time.perf_counter()
    last_row: dict[str, Any] = {}
    eval_row: dict[str, Any] = {}
    last_good = last_good_checkpoint(args.output_dir)  # checked: finite loss, sound weights
    health = StepHealth()
    check_every_step = trainable_values(trainable) <= PER_STEP_WEIGHT_CHECK_MAX_VALUES
    trainable_named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def checkpoint_state(good: bool = True) -> dict[str, Any]:
        return {"best": state["best"], "bad_evals": state["bad_evals"], "stopped_early": state["stopped_early"],
                "best_step": state.get("best_step"), "epoch": step / steps_per_epoch, "good": good,
                "loss": last_row.get("loss")}

    save_model_into = task.save_final or default_save_final(accelerator, tokenizer)

    def checkpoint(good: bool = True) -> Path:
        """A checkpoint of this step: training state plus the loadable model (as final/ holds it)."""
        best = state.get("best_step")
        protect = checkpoint_root(args.output_dir) / f"step-{best:08d}" if args.keep_best and best else None
        return save_checkpoint(accelerator, args.output_dir, step, checkpoint_state(good), args.keep_last,
                               save_model=lambda directory: save_model_into(model, directory), protect=protect)

    def bad_weights() -> str | None:
        """The weights' problem (any process), or None; every process must call it."""
        problem = weights_problem(trainable_named)
        if any_process(accelerator, problem is not None):
            return problem or "exploded or non-finite weights on another process"
        return None

    def stop_diverged(at_step: int, problem: str, when: str) -> TrainingError:
        progress.close()
        return TrainingError(f"step {at_step}: {problem} {when}; stopping ({where_to_restart(last_good)})")

    def run_eval() -> dict[str, Any]:
        nonlocal eval_row
        if task.evaluate is None:
            return {}
        model.eval()
        with torch.no_grad():
            eval_row = {f"eval/{k}" if not k.startswith("eval/") else k: v
                        for k, v in task.evaluate(accelerator.unwrap_model(model)).items()}
        model.train()
        log.log({"step": step, **eval_row})
        return eval_row

    with sigint_flag() as interrupt:
        while step < total_steps and not state["stopped_early"]:
            micro = step_micro_batches(len(examples), args, world, step, steps_per_epoch)
            global_items = sum(task.item_count(examples[i]) for ids in micro for i in ids)
            global_tokens = sum(task.token_count(examples[i]) for ids in micro for i in ids)
            if global_items == 0:
                raise TrainingError(f"step {step + 1}: the batch has nothing to learn from (no response tokens)")
            mine = micro[rank * args.grad_accum:(rank + 1) * args.grad_accum]
            model.train()
            if task.prepare_step is not None:
                task.prepare_step(model, [[examples[i] for i in ids] for ids in micro])
            sums: dict[str, float] = {"loss": 0.0}
            for j, ids in enumerate(mine):
                batch = to_device(task.collate([examples[i] for i in ids]), accelerator.device)
                with micro_batch_sync(accelerator, model, last=j == len(mine) - 1), accelerator.autocast():
                    out = task.compute_loss(model, batch)
                    accelerator.backward(out.loss_sum * (world / global_items))
                sums["loss"] += _as_float(out.loss_sum)
                for key, value in out.metric_sums.items():
                    sums[key] = sums.get(key, 0.0) + _as_float(value)
            sums = reduce_sums(accelerator, sums)
            loss = sums["loss"] / global_items
            grad_norm = gradient_norm(accelerator, trainable, args.max_grad_norm)  # sharded-aware; 0: no clipping
            verdict = check_step_health(loss, grad_norm, health)  # train/health.py
            if verdict.stop:
                progress.close()
                raise TrainingError(f"step {step + 1}: {verdict.stop}; stopping before the update "
                                    f"({where_to_restart(last_good)})")
            if verdict.check_weights and (problem := bad_weights()):
                raise stop_diverged(step + 1, problem, "(seen when the gradient norm collapsed to 0)")
            if verdict.warning and accelerator.is_main_process:
                print(f"WARNING step {step + 1}: {verdict.warning}", file=sys.stderr, flush=True)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if check_every_step and (problem := bad_weights()):
                raise stop_diverged(step, problem, "after the update")

            tokens_per_second = progress.update(global_tokens, loss=loss)
            last_row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss, "lr": lr,
                        "grad_norm": grad_norm, "tokens": global_tokens, "tokens_per_s": tokens_per_second,
                        **{k: v / global_items for k, v in sums.items() if k != "loss"}}
            if step % max(args.log_every, 1) == 0 or step == total_steps:
                log.log(last_row)

            if args.eval_every and step % args.eval_every == 0 and step < total_steps:
                row = run_eval()
                if (args.early_stopping_patience or args.keep_best) and args.early_stopping_metric in row:
                    value = row[args.early_stopping_metric]
                    if improved(value, state["best"], args.early_stopping_mode):
                        state["best"], state["bad_evals"] = value, 0
                        if args.keep_best:  # the best model so far is kept as a checkpoint
                            if problem := bad_weights():
                                raise stop_diverged(step, problem, "before checkpointing")
                            state["best_step"] = step
                            last_good = checkpoint()
                    else:
                        state["bad_evals"] += 1
                        if args.early_stopping_patience and state["bad_evals"] >= args.early_stopping_patience:
                            state["stopped_early"] = True
                            if accelerator.is_main_process:
                                print(f"early stopping at step {step}: {args.early_stopping_metric} has not "
                                      f"improved for {state['bad_evals']} validations (best {state['best']:.4g})")

            if args.save_every and step % args.save_every == 0 and step < total_steps:
                if problem := bad_weights():  # a checkpoint is written only when it is good
                    raise stop_diverged(step, problem, "before checkpointing")
                last_good = checkpoint()
            if any_process(accelerator, interrupt["hit"]):
                good = bad_weights() is None  # saved either way (it was asked for), marked honestly
                path = checkpoint(good)
                progress.close()
                raise Interrupted(f"interrupted at step {step}/{total_steps}; checkpoint saved to {path}; "
                                  f"run again with --resume to continue")
    if problem := bad_weights():
        raise stop_diverged(step, problem, "at the end of training; final/ was not written")
    progress.close()
    final_eval = run_eval()
    best_step = state.get("best_step")
    value = final_eval.get(args.early_stopping_metric)
    if args.keep_best and best_step and value is not None and not improved(value, state["best"], args.early_stopping_mode):
        final_dir = final_from_checkpoint(accelerator, checkpoint_root(args.output_dir) / f"step-{best_step:08d}",
                                          args.output_dir)
        if accelerator.is_main_process:
            print(f"--keep-best: final/ holds the model of step {best_step} ({args.early_stopping_metric} "
                  f"{state['best']:.4g}; the last step's: {value:.4g})", flush=True)
    else:
        final_dir = save_final_atomically(accelerator, task, model, args.output_dir, tokenizer)
    seconds = time.perf_counter() - started
    if args.report_to:
        accelerator.end_training()
    return TrainResult(steps=step, final_dir=final_dir, last_metrics=last_row, eval_metrics=final_eval or eval_row,
                       seconds=seconds, tokens_per_second=last_row.get("tokens_per_s", 0.0),
                       stopped_early=state["stopped_early"])
