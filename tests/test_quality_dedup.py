"""Near-duplicate machinery against brute force, and `data dedup` (within file + contamination)."""
import itertools
import json
import random

import numpy as np
import pytest

from posttrain.cli import main
from posttrain.quality.dedup import contamination
from posttrain.quality.near import (
    MinHasher,
    find_duplicates,
    jaccard,
    lsh_shape,
    near_pairs,
    normalise,
    shingles,
    text_hash,
)


def test_normalise_and_exact_hash():
    assert normalise("  Hello,\tWORLD!! ") == "hello world"
    assert text_hash("What is 2+2?") == text_hash("what is 2 + 2")
    assert text_hash("What is 2+2?") != text_hash("What is 2+3?")


@pytest.mark.parametrize("a, b", [
    ("What is 3+4?", "What is 3-4?"), ("What is 3 + 4?", "What is 3 * 4?"), ("Compute 8/2.", "Compute 8*2."),
    ("What is 6 − 1?", "What is 6 + 1?"), ("Is 3 < 4?", "Is 3 > 4?"), ("What is (2+3)*4?", "What is 2+3*4?"),
    ("What is -5 * 2?", "What is 5 * 2?"), ("Round 3.5.", "Round 35."), ("Round 3.5.", "Round 3,5."),
    ("What is 5!?", "What is 5?"), ("What is 2^3?", "What is 23?"), ("Take 50% of 8.", "Take 50 of 8."),
])
def test_problems_differing_only_in_arithmetic_symbols_are_not_duplicates(a, b):
    assert text_hash(a) != text_hash(b)
    assert contamination([a], [b], near=False) == {}
    assert find_duplicates([a, b], near=False) == {}


@pytest.mark.parametrize("a, b", [
    ("What is 3+4?", "what is 3 + 4"), ("What is 6 − 1?", "What is 6-1?"), ("2 × 3 = ?", "2*3 = ?"),
    ("It is well-known (see above)!", "it is well known, see above."), ("Use GPT-4.", "use gpt 4"),
    ("Hello, World...", "hello world"), ("Call 911!", "call 911"),
])
def test_prose_punctuation_and_spacing_still_do_not_matter(a, b):
    assert text_hash(a) == text_hash(b)
    assert find_duplicates([a, b], near=False) == {1: (0, "exact", 1.0)}


def test_shingles_and_jaccard_by_hand():
    assert shingles("abcdef", 5) == {"abcde", "bcdef"}
    assert shingles("abc", 5) == {"abc"} and shingles("!!", 5) == set()
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)


def test_minhash_estimates_jaccard_without_bias():
    rng = random.Random(0)
    hasher = MinHasher(256, seed=1)
    errors = []
    for trial in range(100):  # a fresh universe per trial, so the trials' errors are independent
        a = {f"{trial}s{rng.randrange(400)}" for _ in range(150)}
        b = set(sorted(a)[:100]) | {f"{trial}t{rng.randrange(400)}" for _ in range(50)}
        estimate = float(np.mean(hasher.signature(a) == hasher.signature(b)))
        errors.append(estimate - jaccard(a, b))
    # standard error of one estimate is at most sqrt(0.25 / 256) ~= 0.031
    assert abs(np.mean(errors)) < 0.01 and np.std(errors) < 0.04


def test_lsh_shape_reaches_recall_at_threshold():
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = lsh_shape(threshold, 128)
        assert bands * rows <= 128
        assert 1 - (1 - threshold ** rows) ** bands >= 0.99


def _corpus(seed=0, n=150):
    rng = random.Random(seed)
    words = "the cat sat on a mat with some dog and bird in house near tree river".split()
    texts = []
    for _ in range(n):
        text = [rng.choice(words) for _ in range(20)]
        texts.append(" ".join(text))
        text[rng.randrange(20)] = rng.choice(words)  # a one-word edit: a near duplicate
        texts.append(" ".join(text))
    rng.shuffle(texts)
    return texts


@pytest.mark.parametrize("threshold", [0.6, 0.8])
def test_near_pairs_equal_brute_force(threshold):
    texts = _corpus()
    sets = [shingles(t) for t in texts]
    brute = {(i, j) for i, j in itertools.combinations(range(len(texts)), 2) if jaccard(sets[i], sets[j]) >= threshold}
    found = {(i, j) for i, j, _ in near_pairs(texts, threshold)}
    assert found == brute and len(brute) > 100


def test_find_duplicates_keeps_first_exact_and_near():
    texts = ["Hello there, world!", "hello there world", "totally different text here", "", "",
             "Hello there, world and friends"]
    dropped = find_duplicates(texts, threshold=0.5)
    assert dropped[1] == (0, "exact", 1.0)
    assert dropped[5][:2] == (0, "near") and dropped[5][2] == pytest.approx(0.52)
    assert 2 not in dropped and 3 not in dropped and 4 not in dropped  # empty texts are never duplicates
    assert find_duplicates(texts, near=False) == {1: (0, "exact", 1.0)}


def test_find_duplicates_compares_with_kept_texts_only():
    a = "one two three four five six seven eight"
    b = "one two three four five six seven eight nine ten"
    c = "three four five six seven eight nine ten eleven twelve"
    sa, sb, sc = shingles(a), shingles(b), shingles(c)
    assert jaccard(sa, sb) >= 0.7 and jaccard(sb, sc) >= 0.55 and jaccard(sa, sc) < 0.55
    # b is dropped as a near copy of a; c resembles only the dropped b, so it stays
    assert set(find_duplicates([a, b, c], threshold=0.55)) == {1}


def test_contamination_kinds():
    train = ["What is the capital of France?", "Explain photosynthesis in simple words for a child please",
             "Write a poem about the sea"]
    evals = ["what is the capital of france", "Explain photosynthesis in simple words for a child, please!!",
             "Explain photosynthesis in simple words for a kid please", "Completely new question about llamas",
             "Here is a long question: write a poem about the sea and the sky tonight"]
    found = contamination(train, evals, threshold=0.7, ngram=5)
    assert found[0]["kind"] == "exact" and found[1]["kind"] == "exact"
    assert found[2]["kind"] == "near" and found[2]["train_index"] == 1
    assert 3 not in found
    assert found[4] == {"kind": "ngram", "train_index": 2, "similarity": None}
    assert 4 not in contamination(train, evals, threshold=0.7, ngram=0)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_dedup_and_decontaminate(tmp_path, capsys):
    train = _write(tmp_path / "train.jsonl", [
        {"prompt": "What is the capital of France?", "completion": "Paris."},
        {"prompt": "What is the capital of France?", "completion": "Paris."},            # exact duplicate
        {"messages": [{"role": "user", "content": "What is the capital of France"},
                      {"role": "assistant", "content": "Paris!"}]},                     # exact after normalising
        {"prompt": "Name three primary colours of light", "completion": "Red, green and blue."},
        {"prompt": "Translate good morning to German", "completion": "Guten Morgen."},
    ])
    evals = _write(tmp_path / "eval.jsonl", [{"prompt": "translate 'good morning' to German", "answer": "x"},
                                             {"prompt": "What is 2+2?", "answer": "4"}])
    out, report_path = tmp_path / "clean.jsonl", tmp_path / "report.json"
    assert main(["data", "dedup", train, "--against", evals, "--output", str(out), "--report", str(report_path)]) == 0
    printed = capsys.readouterr().out
    assert "contamination" in printed
    report = json.loads(report_path.read_text())
    assert report["exact_duplicates"] == 2
    assert [d["line"] for d in report["duplicates"]] == [2, 3]
    assert report["contamination"][0]["contaminated"] == 1
    assert report["contamination"][0]["items"][0]["train_line"] == 5
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("prompt") for r in kept] == ["What is the capital of France?", "Name three primary colours of light"]


def test_cli_bad_input(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": 5}\n')
    assert main(["data", "dedup", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:2: field 'prompt': expected text" in err
    path.write_text('{"prompt": "ok"}\n{oops\n')
    assert main(["data", "dedup", str(path)]) == 2
    assert "bad.jsonl:2: malformed JSON" in capsys.readouterr().err
    assert main(["data", "dedup", str(tmp_path / "bad.jsonl"), "--threshold", "1.5"]) == 2
    assert "config field 'threshold'" in capsys.readouterr().err
