"""Synthetic benchmark data: prompts and responses of realistic, varied lengths, fixed seed.

Lengths are log-normal (most sequences short, a long tail), clipped to [min, max]:

    L = clip(round(exp(N(log(median), sigma))), min, max)

drawn independently for the prompt, the chosen and the rejected response.

Token ids: with a real tokenizer, generated English-like text (random sentences from a
fixed word list) is tokenised once into a long stream and each prompt/response is a
slice of it, cut to its drawn length (so the ids are what the tokenizer really makes).
For random-weight models (tiny-random, the GPU configs) ids are drawn from a Zipf-like
distribution over the vocabulary instead. Every response ends with the eos id, as a
chat-formatted answer ends with its end-of-turn token.

One dataset serves all three methods: SFT trains on (prompt, chosen); reward modelling
and DPO on (prompt, chosen, rejected).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

WORDS = ("the a an of to in and for on with at by from about into over after before under between "
         "model data train test loss token prompt answer question reward policy value gradient batch step "
         "learning rate memory speed result number small large first last next good better best simple "
         "clear short long fast slow new old open close read write think explain show find give make take "
         "time year day way people world life hand part place case point group problem fact work week "
         "system program question government company number night water room mother area money story "
         "is are was were be been has have had do does did can could will would should may might must "
         "very really quite often always never sometimes usually also just only even still already "
         "because although while if when where which who what how why that this these those").split()


@dataclass(frozen=True)
class LengthSpec:
    median: float = 64.0
    sigma: float = 0.7
    minimum: int = 16
    maximum: int = 256

    def draw(self, rng: random.Random) -> int:
        value = int(round(math.exp(rng.gauss(math.log(self.median), self.sigma))))
        return max(self.minimum, min(self.maximum, value))


def synthetic_text(rng: random.Random, words: int) -> str:
    """Sentences of 6-20 random words, capitalised, with full stops."""
    out, count = [], 0
    while count < words:
        n = rng.randint(6, 20)
        sentence = [rng.choice(WORDS) for _ in range(n)]
        out.append(" ".join(sentence).capitalize() + ".")
        count += n
    return " ".join(out)


def token_stream(tokenizer, rng: random.Random, tokens: int) -> list[int]:
    """At least `tokens` ids of tokenised synthetic text (no special tokens)."""
    ids: list[int] = []
    while len(ids) < tokens:
        ids += tokenizer(synthetic_text(rng, 2000), add_special_tokens=False)["input_ids"]
    return ids


def zipf_ids(rng: random.Random, count: int, vocab: int, low: int = 4) -> list[int]:
    """Ids in [low, vocab) with frequency ~ 1/rank (a cheap stand-in for real text)."""
    span = vocab - low
    return [low + min(span - 1, int(span ** rng.random()) - 1) for _ in range(count)]


def make_rows(num: int, prompt: LengthSpec, response: LengthSpec, *, seed: int, eos_id: int,
              tokenizer=None, vocab: int | None = None) -> list[dict[str, list[int]]]:
    """`num` rows `{"prompt", "chosen", "rejected"}` of token ids (see the module doc)."""
    rng = random.Random(seed)
    lengths = [(prompt.draw(rng), response.draw(rng), response.draw(rng)) for _ in range(num)]
    if tokenizer is not None:
        stream = token_stream(tokenizer, rng, 4 * prompt.maximum + 2 * response.maximum)
        # Draw each slice at a random offset of the stream so no two rows share their text.
        def take(n: int) -> list[int]:
            start = rng.randrange(0, len(stream) - n)
            return stream[start:start + n]
    else:
        assert vocab is not None, "give a tokenizer or a vocabulary size"

        def take(n: int) -> list[int]:
            return zipf_ids(rng, n, vocab)
    rows = []
    for p, c, r in lengths:
        chosen, rejected = take(c - 1) + [eos_id], take(r - 1) + [eos_id]
        if chosen == rejected:  # vanishingly rare; a pair must differ
            rejected = rejected[:-2] + [rejected[-2] + 1 if rejected[-2] + 1 != eos_id else 5, eos_id]
        rows.append({"prompt": take(p), "chosen": chosen, "rejected": rejected})
    return rows


def save_rows(path: Path, rows: list[dict], meta: dict) -> None:
    path.write_text(json.dumps({"meta": meta, "rows": rows}))


def load_rows(path: Path) -> tuple[list[dict], dict]:
    data = json.loads(Path(path).read_text())
    return data["rows"], data["meta"]


# --------------------------------------------------------------------------- the one token definition

def sft_tokens(prompt: list[int], response: list[int]) -> int:
    """Real tokens of one SFT sequence: prompt + response."""
    return len(prompt) + len(response)


def pair_tokens(prompt: list[int], chosen: list[int], rejected: list[int]) -> int:
    """Real tokens of one preference pair: BOTH sequences, prompt + chosen and prompt + rejected
    (the prompt counts twice even when a framework computes it once)."""
    return 2 * len(prompt) + len(chosen) + len(rejected)


def sequence_lengths(method: str, row: dict) -> list[int]:
    """Standalone sequence lengths a row stands for (FLOP counting)."""
    p = len(row["prompt"])
    if method == "sft":
        return [p + len(row["chosen"])]
    return [p + len(row["chosen"]), p + len(row["rejected"])]
