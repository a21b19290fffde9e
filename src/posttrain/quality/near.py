"""Exact and near-duplicate detection: normalised hashes, character shingles, MinHash LSH.

Two texts are *exact* duplicates when their normalised forms are equal (case, Unicode form,
punctuation and whitespace ignored, but not the symbols of arithmetic: `3 + 4` is not `3 - 4`),
and *near* duplicates when the Jaccard similarity of their character k-shingle sets is at least
a threshold:

    J(A, B) = |S(A) & S(B)| / |S(A) | S(B)|,   S(x) = set of k-character substrings of normalise(x)

Comparing all pairs costs O(n^2), so candidates come from MinHash locality-sensitive hashing:
each text gets a signature of `num_perm` minimums of random hash functions over its shingles
(P[min-hashes equal] = J), the signature is cut into `bands` bands of `rows` values, and texts
sharing any band are candidates (P = 1 - (1 - J^rows)^bands). Every candidate pair is then
checked with the exact Jaccard, so reported pairs are exact; LSH only decides which pairs are
looked at, tuned so that a pair right at the threshold is found with probability >= 0.99.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")
_OPERATORS = set("+*/=<>^%")  # always meaningful: kept, as their own word
_MATH_SIGNS = {"\u2212": "-", "\u00d7": "*", "\u00f7": "/", "\u2013": "-"}  # minus, times, divide, en dash
_NEAR_NUMBER = set("0123456789()[]") | _OPERATORS | {"-", "."}


def _neighbours(text: str, index: int) -> tuple[str, str]:
    """The nearest non-space characters before and after `index` (within a few characters)."""
    before = text[max(0, index - 4):index].rstrip()[-1:]
    after = text[index + 1:index + 5].lstrip()[:1]
    return before, after


def _symbol(match: re.Match) -> str:
    """Keep the punctuation that makes one problem another ("3 + 4" is not "3 - 4", "(2+3)*4"
    is not "2+3*4", "-5" is not "5", "3.5" is not "35" nor "3,5"); drop the rest (prose)."""
    char, text, index = match.group(), match.string, match.start()
    char = _MATH_SIGNS.get(char, char)
    if char in ".," and 0 < index < len(text) - 1 and text[index - 1].isdigit() and text[index + 1].isdigit():
        return char  # a decimal point or digit group: part of the number
    if char in _OPERATORS:
        return f" {char} "
    before, after = _neighbours(text, index)
    if char == "-" and not text[index - 1:index].isalpha() and (before in _NEAR_NUMBER or after in _NEAR_NUMBER):
        return " - "  # minus or a negative number (a hyphen after a word, GPT-4, is dropped)
    if char == "!" and before.isdigit() and (after in _NEAR_NUMBER or after == "?"):
        return " ! "  # factorial, as in "5! / 3!" or "What is 5!?" (not "Call 911!")
    if char in "()[]" and (before in _NEAR_NUMBER or after in _NEAR_NUMBER):
        return f" {char} "  # grouping in an expression (prose parentheses are dropped)
    return " "


def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation removed, runs of whitespace as one space; the symbols of an
    arithmetic expression are kept (operators, minus signs, brackets, decimal points, factorial),
    so problems differing only in an operator are different texts."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(_symbol, text)).strip()


def text_hash(text: str) -> str:
    """Hash of the normalised text: equal hashes = exact duplicates."""
    return hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()[:16]


def shingles(text: str, k: int = 5) -> set[str]:
    """Character k-grams of the normalised text (the whole text if it is shorter than k)."""
    norm = normalise(text)
    if len(norm) <= k:
        return {norm} if norm else set()
    return {norm[i:i + k] for i in range(len(norm) - k + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def word_ngrams(text: str, n: int) -> set[str]:
    """Word n-grams of the normalised text (for n-gram overlap contamination checks)."""
    words = normalise(text).split()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def lsh_shape(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) with the most rows per band such that a pair at `threshold` is a candidate
    with probability >= `recall` (more rows = fewer false candidates to verify)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            best = (bands, rows)
    return best


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 that scrambles every input bit into all
    output bits (uint64 multiplication wraps modulo 2^64, which is what we want here)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class MinHasher:
    """MinHash signatures from `num_perm` hash functions h_i(x) = mix64(x XOR seed_i).

    (The textbook family (a x + b) mod p needs 128-bit products to mix well; a 64-bit mixer
    with a random key per function gives independent-looking orderings at numpy speed.)
    """

    def __init__(self, num_perm: int = 128, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.keys = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
        self.num_perm = num_perm

    def signature(self, shingle_set: Iterable[str]) -> np.ndarray:
        """(num_perm,) uint64; an empty set gets the all-max signature (matches nothing real)."""
        x = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in shingle_set), dtype=np.uint64)
        if x.size == 0:
            return np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            # crc32 is linear over XOR (similar strings differ by fixed bit patterns), so scramble
            # it once before keying; otherwise the hash functions are correlated and J is biased
            base = _mix64(x + np.uint64(0x9E3779B97F4A7C15))
            hashed = _mix64(self.keys[:, None] ^ base[None, :])
        return hashed.min(axis=1)


class NearIndex:
    """Texts added with `add` can be queried for near duplicates (Jaccard >= threshold)."""

    def __init__(self, threshold: float = 0.8, k: int = 5, num_perm: int = 128, seed: int = 0):
        self.threshold, self.k = threshold, k
        self.hasher = MinHasher(num_perm, seed)
        self.bands, self.rows = lsh_shape(threshold, num_perm)
        self.buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
        self.sets: dict[int, set[str]] = {}

    def _keys(self, shingle_set: set[str]) -> list[tuple[int, bytes]]:
        sig = self.hasher.signature(shingle_set)
        return [(band, sig[band * self.rows:(band + 1) * self.rows].tobytes()) for band in range(self.bands)]

    def add(self, key: int, text: str) -> None:
        shingle_set = shingles(text, self.k)
        if not shingle_set:
            return
        self.sets[key] = shingle_set
        for bucket in self._keys(shingle_set):
            self.buckets[bucket].append(key)

    def query(self, text: str) -> list[tuple[int, float]]:
        """Indexed keys whose Jaccard with `text` is >= threshold, most similar first."""
        shingle_set = shingles(text, self.k)
        if not shingle_set:
            return []
        candidates = {key for bucket in self._keys(shingle_set) for key in self.buckets.get(bucket, ())}
        scored = [(key, jaccard(shingle_set, self.sets[key])) for key in candidates]
        return sorted(((k, s) for k, s in scored if s >= self.threshold), key=lambda t: (-t[1], t[0]))


def find_duplicates(texts: Sequence[str], threshold: float = 0.8, near: bool = True, k: int = 5,
                    num_perm: int = 128, seed: int = 0) -> dict[int, tuple[int, str, float]]:
    """Which texts to drop as duplicates of an earlier kept text.

    Returns {index: (kept index, "exact" | "near", similarity)}. Texts are visited in order;
    a text is dropped when it equals (normalised) or is near an earlier *kept* text, so the kept
    set has no duplicate pairs and the first occurrence always stays. Empty texts are never
    duplicates (they are a completeness problem, not a duplicate one).
    """
    seen: dict[str, int] = {}
    index = NearIndex(threshold, k, num_perm, seed) if near else None
    dropped: dict[int, tuple[int, str, float]] = {}
    for i, text in enumerate(texts):
        if not normalise(text):
            continue
        digest = text_hash(text)
        if digest in seen:
            dropped[i] = (seen[digest], "exact", 1.0)
            continue
        if index is not None:
            matches = index.query(text)
            if matches:
                dropped[i] = (matches[0][0], "near", matches[0][1])
                continue
            index.add(i, text)
        seen[digest] = i
    return dropped


def near_pairs(texts: Sequence[str], threshold: float = 0.8, k: int = 5, num_perm: int = 128,
               seed: int = 0) -> list[tuple[int, int, float]]:
    """All pairs (i < j) with Jaccard >= threshold, found through LSH (exact duplicates included)."""
    index = NearIndex(threshold, k, num_perm, seed)
    pairs = []
    for j, text in enumerate(texts):
        pairs += [(i, j, s) for i, s in index.query(text)]
        index.add(j, text)
    return sorted(pairs)
