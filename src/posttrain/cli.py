"""`posttrain <command>`: a thin dispatcher.

Each command lives beside the library code it drives and exposes
`main(argv: list[str]) -> int | None`. This file only maps names to those
functions (imported lazily, so `posttrain --help` stays fast) and turns a
`PosttrainError` into one line on stderr and exit code 2.
"""
from __future__ import annotations

import importlib
import os
import sys

from . import __version__
from .allocator import reexecute_with_allocator
from .errors import STORAGE_ERRNOS, PosttrainError

# command words -> ("module:function", one-line help). Two-word commands are groups.
COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("posttrain.train.sft:main", "supervised fine-tuning (full or LoRA), with dataset mixing"),
    "dpo": ("posttrain.train.commands:dpo_main", "preference optimisation: DPO, cDPO, IPO, hinge, robust, RPO, SimPO, ORPO, or a mix"),
    "kto": ("posttrain.train.commands:kto_main", "KTO on unpaired desirable/undesirable examples (or split preference pairs)"),
    "generate": ("posttrain.commands.generate:main", "batched sampling from one or more models over a prompts file"),
    "pairs": ("posttrain.synth.pairs:main", "preference pairs from scored/ranked responses: all, best-vs-random, best-vs-worst, stronger-vs-weaker"),
    "cai": ("posttrain.commands.cai:main", "Constitutional AI: critique and revise responses by principle; SFT data, pairs, traces"),
    "export": ("posttrain.models.export:main", "merge a LoRA adapter into its base and save a HF directory"),
    "run": ("posttrain.pipeline:main", "run a multi-stage YAML pipeline with per-stage caching and resume"),
    "report": ("posttrain.report.html:main", "write a self-contained HTML report (config, curves, evals, samples) of a run"),
    "data check": ("posttrain.data.check:main", "check a data file before training: row shapes, counts, token lengths"),
    "ab": ("posttrain.ab.command:main", "A/B analysis of feedback logs: rates, tests, power, ship/keep/collect"),
    "data agreement": ("posttrain.quality.agreement:main", "inter-annotator agreement: Cohen/Fleiss kappa, Krippendorff alpha"),
    "data bias": ("posttrain.quality.bias:main", "position, length and model bias of pairwise labels, with tests"),
    "data validate": ("posttrain.quality.validate:main", "completeness, consistency, diversity and balance of a data file"),
    "data filter": ("posttrain.quality.filter:main", "drop low-quality, duplicate or unsafe rows (--safety, --redact)"),
    "data dedup": ("posttrain.quality.dedup:main", "exact/near duplicates and train/eval contamination"),
    "serve": ("posttrain.serve.commands:serve_main", "run the annotation + feedback web app (FastAPI, SQLite)"),
    "serve token": ("posttrain.serve.commands:token_main", "create a login token for an annotator (or --admin)"),
    "serve import": ("posttrain.serve.commands:import_main", "load pairwise items to annotate from JSONL"),
    "serve export": ("posttrain.serve.commands:export_main", "export labels as preference/annotation JSONL, feedback for ab"),
    "judge": ("posttrain.judge.command:main", "LLM-as-judge: pairwise verdicts (with position swap) or rubric scores"),
    "launch": ("posttrain.distributed.launch:main", "run a training command on several processes/GPUs/machines (torchrun or accelerate launch)"),
    "rm": ("posttrain.train.commands:rm_main", "train a reward model on preference pairs and K-way rankings (full or LoRA)"),
    "ppo": ("posttrain.rl.commands:ppo_main", "PPO with a value model, KL-penalised reward and GAE (online RL)"),
    "grpo": ("posttrain.rl.commands:grpo_main", "GRPO: group-normalised advantages over n samples per prompt (online RL)"),
    "rloo": ("posttrain.rl.commands:rloo_main", "RLOO: REINFORCE with a leave-one-out baseline (online RL)"),
    "best-of-n": ("posttrain.rl.commands:best_of_n_main", "rejection sampling: best of n -> SFT data and pairs; --iterations with SFT/DPO"),
    "score": ("posttrain.rollout.score:main", "score responses in a JSONL file with a trained reward model"),
    "redteam": ("posttrain.safety.command:main", "red-team a model: templated/rewritten attacks, safety judge, attack-success table"),
    "safety pairs": ("posttrain.safety.command:pairs_main", "safety preference pairs from a red-team transcript (safe over unsafe, help over refusal)"),
    "eval": ("posttrain.evaluate.run:main", "evaluate a model: reference metrics, task accuracy/pass@k, perplexity, win-rate, safety; --compare two runs"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS) + 2
    lines = ["usage: posttrain <command> [options]   (posttrain <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}{help_text}" for name, (_, help_text) in sorted(COMMANDS.items())]
    return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[str, list[str]] | None:
    """Longest command-word match: `data check FILE` -> ("data check", [FILE])."""
    for words in (2, 1):
        name = " ".join(argv[:words])
        if len(argv) >= words and name in COMMANDS:
            return name, argv[words:]
    return None


def entry() -> int:
    """The `posttrain` command: `main`, under jemalloc when the machine has it (`allocator`)."""
    reexecute_with_allocator(sys.argv[1:])
    return main()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    resolved = _resolve(argv)
    if resolved is None:
        group = [name for name in COMMANDS if name.startswith(argv[0] + " ")]
        hint = f" (did you mean: {', '.join(sorted(group))}?)" if group else ""
        print(f"posttrain: unknown command '{' '.join(argv[:2])}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    name, rest = resolved
    # transformers' own bars ("Loading weights", "Writing model shards") clutter stderr;
    # posttrain shows its own progress for long work.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    target, _ = COMMANDS[name]
    module_name, function_name = target.split(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(rest)
    except PosttrainError as exc:
        print(f"posttrain {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `posttrain data check FILE | head`: the reader left; nothing to report
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):
            pass
        return 141  # as if killed by SIGPIPE, like other command-line tools
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        # A full disk or a read-only directory met outside the savers that name what they write.
        where = f"cannot write {exc.filename}: " if exc.filename else "a write failed: "
        print(f"posttrain {name}: error: {where}{os.strerror(exc.errno)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"posttrain {name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse --help
        return int(exc.code or 0)
    if os.environ.get("POSTTRAIN_DEBUG"):
        print(f"posttrain {name}: done", file=sys.stderr)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
