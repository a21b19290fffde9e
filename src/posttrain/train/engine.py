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
from typing import Any, Callable, Iterator, Sequence

import torch

from ..config import validate_ranges
from ..distributed.training import gradient_norm, micro_batch_sync, settle_sharded_model
from ..errors import ConfigError, PosttrainError, TrainingError, storage_errors
from ..models.peft import enable_activation_checkpointing
from ..models.saving import save_model_files
from .accelerator import any_process, global_sum, make_accelerator, reduce_sums
from .args import TrainArgs
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
from .memory import trim as trim_heap
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


def save_final_atomically(accelerator, save: Callable[[torch.nn.Module, Path], None], model, output_dir: str) -> Path:
    """final/ = what `save(model, directory)` writes (every process calls it), renamed into place."""
    final = Path(output_dir) / "final"
    tmp = Path(output_dir) / ".tmp-final"
    # A full disk or a read-only directory: one line naming the path; the temporary folder goes.
    with storage_errors("the final model", final), removed_on_error(tmp, accelerator.is_main_process):
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        save(model, tmp)
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
    enable_activation_checkpointing(model)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def _as_float(value: torch.Tensor | float) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


class TrainingCore:
    """The one training core: what every loop, offline (`run_training`) or online
    (`rl/loop.py`), runs on.

    It owns what is no recipe's own: the accelerator and seed; the prepared model, optimizer and
    schedule; the global-batch normalisation (`scale`) and the micro-batch context (`micro_batch`:
    gradients reduced over processes on the step's last backward, autocast); health-checked
    optimizer steps (train/health.py); atomic checkpoints and exact resume; SIGINT; metrics.jsonl
    and progress; the final save. A loop brings its source of examples (a dataset, or rollouts)
    and its loss, and for each step calls `micro_batch` + backward per micro-batch,
    `optimizer_step`, then `log_step`, `save_if_due` and `stop_if_interrupted`.

    `module` is what trains; `optimized` (default: `module`) is what `build_optimizer` sees, with
    `extra_groups` added (PPO's critic with its own learning rate); `checkpointed` (default:
    `module`) gets gradient checkpointing; `save_model(model, directory)` writes the loadable model
    into checkpoints and final/. `zero_grad_expected`: a zero gradient is ordinary (online RL).
    """

    def __init__(self, args, module: torch.nn.Module, optimizer_steps: int, *, name: str = "train",
                 accelerator=None, tokenizer=None, optimized: torch.nn.Module | None = None,
                 extra_groups: Sequence[dict[str, Any]] = (), checkpointed: torch.nn.Module | None = None,
                 save_model: Callable[[torch.nn.Module, Path], None] | None = None,
                 zero_grad_expected: bool = False, project_name: str = "posttrain"):
        from accelerate.utils import set_seed

        self.args, self.name = args, name
        self.accelerator = accelerator = accelerator or make_accelerator(args, project_name=project_name)
        set_seed(args.seed)
        if args.gradient_checkpointing:
            enable_gradient_checkpointing(module if checkpointed is None else checkpointed)
        optimizer = build_optimizer(module if optimized is None else optimized, args)
        for group in extra_groups:
            optimizer.add_param_group({"weight_decay": 0.0, **group})
        self.scheduler = build_scheduler(optimizer, args, optimizer_steps)
        # The scheduler is registered, not prepared: a prepared one steps once per process.
        self.model, self.optimizer = accelerator.prepare(module, optimizer)
        settle_sharded_model(self.model)  # FSDP2: the whole model is the root (see distributed/training.py)
        accelerator.register_for_checkpointing(self.scheduler)
        self.trainable_named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.parameters = [p for _, p in self.trainable_named]
        self.check_every_step = trainable_values(self.parameters) <= PER_STEP_WEIGHT_CHECK_MAX_VALUES
        self.health = StepHealth()
        self.zero_grad_expected = zero_grad_expected
        self.save_model = save_model or default_save_final(accelerator, tokenizer)
        os.makedirs(args.output_dir, exist_ok=True)
        self.log = MetricsLog(accelerator, args.output_dir, args.report_to)
        self.last_good: Path | None = None
        self.progress: Progress | None = None
        self.interrupt: dict[str, bool] = {"hit": False}

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ----- start and resume
    def start(self, total_steps: int, step_logs: Sequence[Path] = ()) -> tuple[int, dict[str, Any]]:
        """(first step, the loop's saved state). With --resume: the newest checkpoint restores model,
        optimizer, schedule and every process's RNG, and metrics.jsonl and `step_logs` (other
        JSONL files of rows keyed by "step") lose the rows after it. Otherwise they are emptied."""
        step, state = 0, {}
        checkpoint = latest_checkpoint(self.args.output_dir) if self.args.resume else None
        if checkpoint is not None:
            state = load_checkpoint(self.accelerator, checkpoint)
            step = int(state.pop("step"))
            if self.is_main:
                for path in (self.log.path, *step_logs):
                    truncate_metrics(Path(path), step)
                print(f"resumed from {checkpoint} at step {step}", flush=True)
        elif self.is_main:
            for path in (self.log.path, *step_logs):
                Path(path).unlink(missing_ok=True)
        self.last_good = last_good_checkpoint(self.args.output_dir)  # checked: finite loss, sound weights
        self.progress = Progress(total_steps, step, enabled=self.args.progress and self.is_main, description=self.name)
        return step, state

    # ----- one optimizer step
    def scale(self, global_count: float) -> float:
        """The global-batch normalisation: a micro-batch's loss *sum* times this is its share of the
        mean over the whole global batch (`global_count` items over every micro-batch and process;
        the gradient reduction averages over processes, hence the number of processes on top)."""
        return self.world / global_count

    def global_sum(self, value: float) -> float:
        """A number summed over processes."""
        return global_sum(self.accelerator, value)

    def micro_batch(self, last: bool):
        """Context for one micro-batch's forward *and* backward: autocast, and gradients reduced over
        processes only on the last micro-batch of an optimizer step (`micro_batch_sync`: DDP/FSDP
        `no_sync`, DeepSpeed's accumulation boundary)."""
        stack = contextlib.ExitStack()
        stack.enter_context(micro_batch_sync(self.accelerator, self.model, last))
        stack.enter_context(self.accelerator.autocast())
        return stack

    def backward_micro_batches(self, micro_batches: Sequence[Any], objective: Callable[[dict[str, Any]], tuple[torch.Tensor, Any]],
                               collate: Callable[[Any], dict[str, Any]] | None = None, last_syncs: bool = True) -> list[Any]:
        """Forward and backward of each micro-batch of one optimizer step, in order: `collate` (if
        given, one micro-batch at a time), move to the device, then inside `micro_batch` call
        `objective(batch) -> (tensor to backpropagate, anything to keep)` and backpropagate. The
        tensor is already scaled (`scale`). `last_syncs=False`: another backward ends the step, so
        the last micro-batch does not reduce gradients yet. Returns what each objective kept."""
        kept = []
        for j, micro in enumerate(micro_batches):
            batch = to_device(collate(micro) if collate is not None else micro, self.device)
            with self.micro_batch(last=last_syncs and j == len(micro_batches) - 1):
                backpropagated, keep = objective(batch)
                self.accelerator.backward(backpropagated)
            del batch, backpropagated
            if self.args.trim_memory:  # the freed activations' pages, else kept by the fragmented heap
                trim_heap()
            kept.append(keep)
        return kept

    def optimizer_step(self, step: int, loss: float) -> float:
        """Clip, judge the step (train/health.py: a non-finite loss or gradient stops the run *before*
        the update; a collapsed gradient has the weights checked), step the optimizer and schedule,
        zero the gradients, and check the weights after the update when they are few. `step` is the
        0-based step of the loop; returns the pre-clipping gradient norm."""
        grad_norm = gradient_norm(self.accelerator, self.parameters, self.args.max_grad_norm)  # sharded-aware; 0: no clipping
        verdict = check_step_health(loss, grad_norm, self.health, self.zero_grad_expected)
        if verdict.stop:
            self.close_progress()
            raise TrainingError(f"step {step + 1}: {verdict.stop}; stopping before the update "
                                f"({where_to_restart(self.last_good)})")
        if verdict.check_weights and (problem := self.bad_weights()):
            raise self.diverged(step + 1, problem, "(seen when the gradient norm collapsed to 0)")
        if verdict.warning and self.is_main:
            print(f"WARNING step {step + 1}: {verdict.warning}", file=sys.stderr, flush=True)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.check_every_step and (problem := self.bad_weights()):
            raise self.diverged(step + 1, problem, "after the update")
        return grad_norm

    def bad_weights(self) -> str | None:
        """The weights' problem (any process), or None; every process must call it."""
        problem = weights_problem(self.trainable_named)
        if any_process(self.accelerator, problem is not None):
            return problem or "exploded or non-finite weights on another process"
        return None

    def diverged(self, at_step: int, problem: str, when: str) -> TrainingError:
        self.close_progress()
        return TrainingError(f"step {at_step}: {problem} {when}; stopping ({where_to_restart(self.last_good)})")

    # ----- after a step
    def log_step(self, step: int, total_steps: int, row: dict[str, Any]) -> None:
        """Write the step's metrics row (every log_every steps, and the last)."""
        if step % max(self.args.log_every, 1) == 0 or step == total_steps:
            self.log.log(row)

    def checkpoint(self, step: int, state: dict[str, Any], good: bool = True) -> Path:
        """A checkpoint of `step`: training state, the loop's `state` and the loadable model.
        The one `state["best_step"]` names is never pruned (--keep-best)."""
        best = state.get("best_step")
        protect = checkpoint_root(self.args.output_dir) / f"step-{best:08d}" if getattr(self.args, "keep_best", False) and best else None
        path = save_checkpoint(self.accelerator, self.args.output_dir, step, {**state, "good": good}, self.args.keep_last,
                               save_model=lambda directory: self.save_model(self.model, directory), protect=protect)
        if good:
            self.last_good = path
        return path

    def good_checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        """A checkpoint, written only when the weights are sound (otherwise the run stops)."""
        if problem := self.bad_weights():
            raise self.diverged(step, problem, "before checkpointing")
        return self.checkpoint(step, state)

    def save_if_due(self, step: int, total_steps: int, state: Callable[[], dict[str, Any]]) -> None:
        if self.args.save_every and step % self.args.save_every == 0 and step < total_steps:
            self.good_checkpoint(step, state())

    @contextlib.contextmanager
    def catching_sigint(self) -> Iterator[None]:
        """Ctrl-C inside the block sets a flag that `stop_if_interrupted` reads after each step."""
        with sigint_flag() as flag:
            self.interrupt = flag
            yield

    def stop_if_interrupted(self, step: int, total_steps: int, state: Callable[[], dict[str, Any]]) -> None:
        """After Ctrl-C on any process: every process saves a checkpoint (marked good only when the
        weights are sound) and stops at this same step."""
        if any_process(self.accelerator, self.interrupt["hit"]):
            good = self.bad_weights() is None  # saved either way (it was asked for), marked honestly
            path = self.checkpoint(step, state(), good)
            self.close_progress()
            raise Interrupted(f"interrupted at step {step}/{total_steps}; checkpoint saved to {path}; "
                              f"run again with --resume to continue")

    # ----- the end
    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def check_final_weights(self, step: int) -> None:
        """Stop (no final/) when the weights are unsound; otherwise close the progress bar."""
        if problem := self.bad_weights():
            raise self.diverged(step, problem, "at the end of training; final/ was not written")
        self.close_progress()

    def save_final(self, save: Callable[[torch.nn.Module, Path], None] | None = None) -> Path:
        """output_dir/final, written atomically by `save` (default: `save_model`)."""
        return save_final_atomically(self.accelerator, save or self.save_model, self.model, self.args.output_dir)

    def end(self) -> None:
        if self.args.report_to:
            self.accelerator.end_training()


def run_training(task: TrainTask, args: TrainArgs, accelerator=None, tokenizer=None) -> TrainResult:
    """Train `task.model` on `task.train_examples` as `args` says; see the module docstring.

    The offline loop on the core: the data order and each step's micro-batches come from
    (seed, step); validation, early stopping and --keep-best are this loop's own."""
    validate_ranges(args)  # also for options built in code (best-of-n's rounds, library callers)
    accelerator = accelerator or make_accelerator(args)
    world, rank = accelerator.num_processes, accelerator.process_index
    examples = task.train_examples
    args = fit_batch_to_data(args, examples, world)
    steps_per_epoch, total_steps = plan_steps(len(examples), args, world)
    core = TrainingCore(args, task.model, total_steps, name=task.name, accelerator=accelerator, tokenizer=tokenizer,
                        save_model=task.save_final)
    model = core.model
    step, state = core.start(total_steps)
    state = {"best": None, "bad_evals": 0, "stopped_early": False, **state}
    started = time.perf_counter()
    last_row: dict[str, Any] = {}
    eval_row: dict[str, Any] = {}

    def checkpoint_state() -> dict[str, Any]:
        return {"best": state["best"], "bad_evals": state["bad_evals"], "stopped_early": state["stopped_early"],
                "best_step": state.get("best_step"), "epoch": step / steps_per_epoch, "loss": last_row.get("loss")}

    def run_eval() -> dict[str, Any]:
        nonlocal eval_row
        if task.evaluate is None:
            return {}
        model.eval()
        with torch.no_grad():
            eval_row = {f"eval/{k}" if not k.startswith("eval/") else k: v
                        for k, v in task.evaluate(accelerator.unwrap_model(model)).items()}
        model.train()
        core.log.log({"step": step, **eval_row})
        return eval_row

    with core.catching_sigint():
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
            scale = core.scale(global_items)

            def objective(batch: dict[str, Any]) -> tuple[torch.Tensor, LossOutput]:
                out = task.compute_loss(model, batch)
                return out.loss_sum * scale, out
            outs = core.backward_micro_batches([[examples[i] for i in ids] for ids in mine], objective, task.collate)
            sums: dict[str, float] = {"loss": 0.0}
            for out in outs:
                sums["loss"] += _as_float(out.loss_sum)
                for key, value in out.metric_sums.items():
                    sums[key] = sums.get(key, 0.0) + _as_float(value)
            sums = reduce_sums(accelerator, sums)
            loss = sums["loss"] / global_items
            lr = core.scheduler.get_last_lr()[0]
            grad_norm = core.optimizer_step(step, loss)
            step += 1

            tokens_per_second = core.progress.update(global_tokens, loss=loss)
            last_row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss, "lr": lr,
                        "grad_norm": grad_norm, "tokens": global_tokens, "tokens_per_s": tokens_per_second,
                        **{k: v / global_items for k, v in sums.items() if k != "loss"}}
            core.log_step(step, total_steps, last_row)

            if args.eval_every and step % args.eval_every == 0 and step < total_steps:
                row = run_eval()
                if (args.early_stopping_patience or args.keep_best) and args.early_stopping_metric in row:
                    value = row[args.early_stopping_metric]
                    if improved(value, state["best"], args.early_stopping_mode):
                        state["best"], state["bad_evals"] = value, 0
                        if args.keep_best:  # the best model so far is kept as a checkpoint
                            state["best_step"] = step
                            core.good_checkpoint(step, checkpoint_state())
                    else:
                        state["bad_evals"] += 1
                        if args.early_stopping_patience and state["bad_evals"] >= args.early_stopping_patience:
                            state["stopped_early"] = True
                            if accelerator.is_main_process:
                                print(f"early stopping at step {step}: {args.early_stopping_metric} has not "
                                      f"improved for {state['bad_evals']} validations (best {state['best']:.4g})")

            core.save_if_due(step, total_steps, checkpoint_state)
            core.stop_if_interrupted(step, total_steps, checkpoint_state)
    core.check_final_weights(step)
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
        final_dir = core.save_final()
    seconds = time.perf_counter() - started
    core.end()
    return TrainResult(steps=step, final_dir=final_dir, last_metrics=last_row, eval_metrics=final_eval or eval_row,
                       seconds=seconds, tokens_per_second=last_row.get("tokens_per_s", 0.0),
                       stopped_early=state["stopped_early"])
