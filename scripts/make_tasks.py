"""Write the verifiable task sets shipped in src/posttrain/resources/tasks/ (deterministic).

    .venv/bin/python scripts/make_tasks.py [--out DIR]

Three tasks, each with a train split and a held-out test split that shares no problem with it
(no arithmetic expression, no set of numbers to sort, no code function: `problem_key`;
tests/test_tasks_disjoint.py checks it with posttrain's own contamination check).
Every row is a prompt-only record for RL / best-of-n: `prompt` (text), the fields its
verifier reads, and `task`, `id`, `level`. The verifier is the built-in reward named in
`posttrain.rollout.rewards.TASKS`:

  arithmetic  "What is 17 + 5?"               answer: 22                   reward "math"
  sorting     "Sort ... 7, 2, 9"              answer: [2, 7, 9]            reward "sort"
  code        "Write a function add(a, b)"    tests: ["assert add(1, 2) == 3", ...]  reward "code"

Difficulty is aimed at SmolLM2-135M-Instruct: weak but not hopeless (mostly one-digit
addition and subtraction, some two-digit and three-operand ones; sorting 2-5 numbers below
20, mostly 2 or 3), so that
GRPO or best-of-n + SFT has signal to work with (baseline accuracies: docs/rewards.md). Prompts ask
the reply to end with an "Answer: ..." line, and the built-in verifiers require exactly that.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "posttrain" / "resources" / "tasks"
SIZES = {"arithmetic": (1000, 200), "sorting": (1000, 200)}


# ------------------------------------------------------------------------ arithmetic

def arithmetic_problem(rng: random.Random) -> tuple[str, int, str]:
    """(expression, value, level). Levels, easiest first: 1d (one-digit +/-), 2d1d (two-digit
    +/- one-digit), 2d (two-digit +/- two-digit), 3op (three one-digit operands)."""
    level = rng.choices(["1d", "2d1d", "2d", "3op"], weights=[5, 3, 1, 1])[0]
    if level == "3op":
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        expr = f"{a} {op1} {b} {op2} {c}"
        return expr, eval(expr), level  # noqa: S307 - our own digits and +/-
    a = rng.randint(1, 9) if level == "1d" else rng.randint(10, 99)
    b = rng.randint(10, 99) if level == "2d" else rng.randint(1, 9)
    op = rng.choice("+-")
    if op == "-" and b > a:  # keep answers non-negative: the small model is not ready for negatives
        a, b = b, a
    return f"{a} {op} {b}", a + b if op == "+" else a - b, level


ARITHMETIC_QUESTIONS = ["What is {}?", "Calculate {}.", "Compute {}."]  # also widens the small 1d pool


def arithmetic_row(rng: random.Random) -> dict:
    expr, value, level = arithmetic_problem(rng)
    question = rng.choice(ARITHMETIC_QUESTIONS).format(expr)
    prompt = f"{question} End your reply with a line 'Answer: N' where N is the result."
    return {"prompt": prompt, "answer": value, "task": "arithmetic", "level": level, "expression": expr}


# --------------------------------------------------------------------------- sorting

def sorting_row(rng: random.Random) -> dict:
    size = rng.choices([2, 3, 4, 5], weights=[3, 3, 1, 1])[0]
    numbers = rng.sample(range(0, 20), size)
    shown = ", ".join(str(n) for n in numbers)
    prompt = (f"Sort these numbers from smallest to largest: {shown}. "
              f"End your reply with a line 'Answer: ' followed by the sorted numbers, separated by commas.")
    return {"prompt": prompt, "answer": sorted(numbers), "task": "sorting", "level": f"{size}", "numbers": numbers}


# ------------------------------------------------------------------------------ code

# (signature, what it does, tests, a reference body). Kept tiny: one-liners a small model might write.
CODE_PROBLEMS = [
    ("add(a, b)", "returns the sum of a and b", ["add(1, 2) == 3", "add(-1, 1) == 0", "add(10, 5) == 15"],
     "return a + b"),
    ("square(x)", "returns x multiplied by itself", ["square(3) == 9", "square(0) == 0", "square(-4) == 16"],
     "return x * x"),
    ("is_even(n)", "returns True if n is even and False otherwise",
     ["is_even(4) == True", "is_even(7) == False", "is_even(0) == True"], "return n % 2 == 0"),
    ("maximum(xs)", "returns the largest number in the list xs",
     ["maximum([1, 5, 3]) == 5", "maximum([-2, -7]) == -2", "maximum([4]) == 4"], "return max(xs)"),
    ("reverse_string(s)", "returns the string s reversed",
     ["reverse_string('abc') == 'cba'", "reverse_string('') == ''", "reverse_string('a') == 'a'"], "return s[::-1]"),
    ("count_vowels(s)", "returns how many vowels (a, e, i, o, u) the lowercase string s contains",
     ["count_vowels('hello') == 2", "count_vowels('xyz') == 0", "count_vowels('aeiou') == 5"],
     "return sum(c in 'aeiou' for c in s)"),
    ("factorial(n)", "returns n! for a non-negative integer n",
     ["factorial(0) == 1", "factorial(5) == 120", "factorial(3) == 6"], "return 1 if n == 0 else n * factorial(n - 1)"),
    ("first_element(xs)", "returns the first element of the list xs",
     ["first_element([3, 4]) == 3", "first_element(['a']) == 'a'"], "return xs[0]"),
    ("sum_list(xs)", "returns the sum of the numbers in the list xs",
     ["sum_list([1, 2, 3]) == 6", "sum_list([]) == 0", "sum_list([-1, 1]) == 0"], "return sum(xs)"),
    ("double(x)", "returns two times x", ["double(2) == 4", "double(0) == 0", "double(-3) == -6"], "return 2 * x"),
    ("is_positive(x)", "returns True if x is greater than zero, else False",
     ["is_positive(5) == True", "is_positive(0) == False", "is_positive(-2) == False"], "return x > 0"),
    ("length(s)", "returns the number of characters in the string s", ["length('abc') == 3", "length('') == 0"],
     "return len(s)"),
    ("minimum(xs)", "returns the smallest number in the list xs",
     ["minimum([4, 2, 8]) == 2", "minimum([0]) == 0", "minimum([-1, -5]) == -5"], "return min(xs)"),
    ("to_upper(s)", "returns the string s in upper case", ["to_upper('abc') == 'ABC'", "to_upper('A1b') == 'A1B'"],
     "return s.upper()"),
    ("average(xs)", "returns the mean of the non-empty list of numbers xs",
     ["average([1, 2, 3]) == 2", "average([4]) == 4", "average([1, 2]) == 1.5"], "return sum(xs) / len(xs)"),
    ("last_element(xs)", "returns the last element of the list xs",
     ["last_element([1, 2, 3]) == 3", "last_element(['x']) == 'x'"], "return xs[-1]"),
    ("absolute(x)", "returns the absolute value of x without using abs",
     ["absolute(-3) == 3", "absolute(4) == 4", "absolute(0) == 0"], "return -x if x < 0 else x"),
    ("count_char(s, c)", "returns how many times the character c appears in the string s",
     ["count_char('banana', 'a') == 3", "count_char('abc', 'z') == 0"], "return s.count(c)"),
    ("is_palindrome(s)", "returns True if the string s reads the same backwards",
     ["is_palindrome('racecar') == True", "is_palindrome('ab') == False", "is_palindrome('') == True"],
     "return s == s[::-1]"),
    ("fizzbuzz(n)", "returns 'Fizz' if n is divisible by 3, 'Buzz' if by 5, 'FizzBuzz' if by both, else str(n)",
     ["fizzbuzz(3) == 'Fizz'", "fizzbuzz(10) == 'Buzz'", "fizzbuzz(15) == 'FizzBuzz'", "fizzbuzz(7) == '7'"],
     "return 'FizzBuzz' if n % 15 == 0 else 'Fizz' if n % 3 == 0 else 'Buzz' if n % 5 == 0 else str(n)"),
]
CODE_TEST_EVERY = 4  # every 4th problem is held out


def code_rows() -> tuple[list[dict], list[dict]]:
    train, test = [], []
    for index, (signature, does, tests, body) in enumerate(CODE_PROBLEMS):
        prompt = (f"Write a Python function `{signature}` that {does}. "
                  f"Reply with only the code in a ```python block.")
        row = {"prompt": prompt, "tests": [f"assert {t}" for t in tests], "task": "code", "level": "1",
               "entry_point": signature.split("(")[0], "solution": f"def {signature}:\n    {body}\n"}
        (test if index % CODE_TEST_EVERY == CODE_TEST_EVERY - 1 else train).append(row)
    return train, test


# ------------------------------------------------------------------- expert demonstrations

DEMOS = 400  # arithmetic demonstrations for a behaviour-cloning warm-up (examples/warmup_grpo.yaml)


def arithmetic_solution(expression: str, value: int) -> str:
    """An expert reply in the format the prompt asks for: the working, then `Answer: N` as the
    last line. Three operands are worked one operation per line ("5 + 3 = 8", "8 - 2 = 6")."""
    parts = expression.split()
    if len(parts) == 3:
        return f"{expression} = {value}\nAnswer: {value}"
    first = eval(" ".join(parts[:3]))  # noqa: S307 - our own digits and +/-
    return f"{' '.join(parts[:3])} = {first}\n{first} {parts[3]} {parts[4]} = {value}\nAnswer: {value}"


def arithmetic_demos(train: list[dict], count: int) -> list[dict]:
    """prompt/completion rows for SFT, from the *train* split only (the test split stays unseen)."""
    return [{"prompt": row["prompt"], "completion": arithmetic_solution(row["expression"], row["answer"]),
             "task": "arithmetic", "level": row["level"], "source_id": f"arithmetic-train-{index:04d}"}
            for index, row in enumerate(train[:count])]


# ------------------------------------------------------------------------------ main

def problem_key(row: dict) -> str:
    """What makes two rows the same problem, whatever the wording: the arithmetic expression, the
    set of numbers to sort (its answer), the code function's name. No key is in both splits.
    Operators are spelled out ("5 minus 1") because text comparison (posttrain's dedup
    normalisation) drops punctuation, and "5 + 1" and "5 - 1" must stay different problems."""
    if row["task"] == "arithmetic":
        return row["expression"].replace("+", "plus").replace("-", "minus")
    if row["task"] == "sorting":
        return ", ".join(str(n) for n in row["answer"])
    return row["entry_point"]


def split_disjoint(make, rng: random.Random, n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    """Draw rows (no prompt twice) and give every *problem* (problem_key) to one split only.

    A newly drawn problem goes to the test split while that split holds fewer than 1/6 of the
    rows drawn so far *of its level*, else to train; so test keeps the level mix of the stream
    even though the small one-digit pool runs out of new problems early. Train may hold one
    problem in several wordings ("What is 3 + 4?", "Compute 3 + 4."); test holds each once."""
    every = (n_train + n_test) // n_test
    split_of: dict[str, str] = {}
    seen_prompts: set[str] = set()
    train: list[dict] = []
    test: list[dict] = []
    drawn = collections.Counter()   # rows drawn per level (distinct prompts), either split
    held = collections.Counter()    # test rows per level
    for _ in range(200 * (n_train + n_test)):  # bounded: a pool too small for the sizes is a bug here
        if len(train) >= n_train and len(test) >= n_test:
            return train, test
        row = make(rng)
        key, level = problem_key(row), row["level"]
        if row["prompt"] in seen_prompts:
            continue
        seen_prompts.add(row["prompt"])
        drawn[level] += 1
        if key not in split_of:
            wants_test = held[level] * every < drawn[level] and len(test) < n_test
            split_of[key] = "test" if wants_test else "train"
            if wants_test:
                test.append(row)
                held[level] += 1
                continue
        if split_of[key] == "train" and len(train) < n_train:
            train.append(row)
    raise SystemExit(f"make_tasks: could not draw {n_train} + {n_test} disjoint rows")


def write(path: Path, rows: list[dict], prefix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        for index, row in enumerate(rows):
            handle.write(json.dumps({"id": f"{prefix}-{index:04d}", **row}) + "\n")
    partial.replace(path)  # atomic: a reader never sees half a file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sets = {
        "arithmetic": split_disjoint(arithmetic_row, random.Random(1234), *SIZES["arithmetic"]),
        "sorting": split_disjoint(sorting_row, random.Random(5678), *SIZES["sorting"]),
        "code": code_rows(),
    }
    for name, (train, test) in sets.items():
        write(args.out / f"{name}_train.jsonl", train, f"{name}-train")
        write(args.out / f"{name}_test.jsonl", test, f"{name}-test")
        print(f"{name}: {len(train)} train, {len(test)} test -> {args.out}")
    demos = arithmetic_demos(sets["arithmetic"][0], DEMOS)
    write(args.out / "arithmetic_demos.jsonl", demos, "arithmetic-demo")
    print(f"arithmetic: {len(demos)} expert demonstrations (from train) -> {args.out}")


if __name__ == "__main__":
    main()
