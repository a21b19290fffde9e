"""A reward model for the arithmetic task, and a check that it pays for the task, not a loophole.

    python examples/arithmetic_rm.py pairs OUT.jsonl [--rows N]     # preference pairs from the TRAIN split
    posttrain rm --model smollm2-135m --peft lora --data OUT.jsonl ... --output-dir runs/rm-arith
    python examples/arithmetic_rm.py probe runs/rm-arith [--rows N]  # loophole probes on the TEST split (default 50 rows)

Pairs (one per train problem, the rejected kind cycling): the chosen reply is the expert answer
"a + b = c" / "Answer: c"; the rejected one is
  wrong     the same shape with a wrong number (c +- 1..10)
  no_line   the right working without the "Answer:" line the prompt asks for
  literal   the right working, then the literal "Answer: N"
  mismatch  the right working, then an answer line with a wrong number

`probe` scores, on test-split problems, the correct reply against each of those and against
replies a policy could find to exploit a learned reward: the answer line alone, the correct reply
followed by chatter, the answer line repeated with two numbers. It prints, per kind, how often the
correct reply scores higher, and the mean score gap.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

TASKS = Path(__file__).resolve().parents[1] / "src" / "posttrain" / "resources" / "tasks"


def rows(split: str) -> list[dict]:
    with open(TASKS / f"arithmetic_{split}.jsonl") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def wrong(answer: int, rng: random.Random) -> int:
    return answer + rng.choice([-1, 1]) * rng.randint(1, 10)


def replies(row: dict, rng: random.Random) -> dict[str, str]:
    """The correct reply and every rejected/probe kind for one problem."""
    expr, answer = row["expression"], int(row["answer"])
    bad = wrong(answer, rng)
    right = f"{expr} = {answer}\nAnswer: {answer}"
    return {
        "correct": right,
        "wrong": f"{expr} = {bad}\nAnswer: {bad}",
        "no_line": f"{expr} = {answer}",
        "literal": f"{expr} = {answer}\nAnswer: N",
        "mismatch": f"{expr} = {answer}\nAnswer: {bad}",
        # probes only (never in the training pairs)
        "line_only": f"Answer: {answer}",
        "chatter": f"{right}\nI hope this helps! Let me know if you have any other questions.",
        "two_lines": f"{expr} = {answer}\nAnswer: {bad}\nAnswer: {answer}",
    }


PAIR_KINDS = ["wrong", "no_line", "literal", "mismatch"]
PROBE_KINDS = PAIR_KINDS + ["line_only", "chatter", "two_lines"]


def write_pairs(out: str, limit: int, seed: int) -> None:
    rng = random.Random(seed)
    train = rows("train")[:limit] if limit else rows("train")
    with open(out, "w") as handle:
        for i, row in enumerate(train):
            options = replies(row, rng)
            kind = PAIR_KINDS[i % len(PAIR_KINDS)]
            handle.write(json.dumps({"prompt": row["prompt"], "chosen": options["correct"],
                                     "rejected": options[kind], "kind": kind}) + "\n")
    print(f"{len(train)} pairs -> {out}")


def probe(model: str, limit: int, seed: int) -> None:
    from posttrain.rollout.score import RewardScorer

    rng = random.Random(seed)
    test = rows("test")[:limit]
    options = [replies(row, rng) for row in test]
    scorer = RewardScorer(model)
    prompts = [row["prompt"] for row in test]
    scores = {kind: scorer.score(prompts, [o[kind] for o in options]) for kind in ["correct"] + PROBE_KINDS}
    print(f"{len(test)} test problems; mean score of the correct reply {sum(scores['correct']) / len(test):+.3f}")
    print("kind        correct wins  mean(correct - kind)")
    for kind in PROBE_KINDS:
        wins = sum(c > s for c, s in zip(scores["correct"], scores[kind]))
        gap = sum(c - s for c, s in zip(scores["correct"], scores[kind])) / len(test)
        print(f"{kind:<11} {wins:>4}/{len(test):<7} {gap:+.3f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["pairs", "probe"])
    parser.add_argument("path", help="pairs: the output JSONL; probe: the reward model directory")
    parser.add_argument("--rows", type=int, default=0, help="first N problems of the split (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "pairs":
        write_pairs(args.path, args.rows, args.seed)
    else:
        probe(args.path, args.rows or 50, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
