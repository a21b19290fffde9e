"""Training data for `posttrain dpo` and `posttrain kto`: read, check, tokenise, fit to max_length.

    examples, report = load_pairs("prefs.jsonl", tokenizer, template, max_length=1024,
                                  length_policy="drop", invalid_rows="error")

Two policies decide what happens to a row that cannot be trained on; both are
counted in a `DataReport`, printed and written to the run directory:

- `invalid_rows` (error | drop), for rows the data layer rejects: chosen equal
  to rejected, an empty response or prompt, a missing field, a wrong shape, and
  pairs whose chosen and rejected become the same tokens once cut to
  max_length. "error" stops at the first one with `FILE:LINE: field 'x': ...`;
  "drop" skips it and keeps its message (the first few are printed).
- rows whose own label prefers neither response (chatbot arena's ties, see
  `formats.NoPreference`) are no error under either policy: they are skipped and
  counted by reason.
- `length_policy` (error | drop | truncate), for sequences longer than
  max_length (the prompt plus the longer response): see
  `posttrain.data.tokenize.apply_length_policy`. Chosen and rejected share one
  prompt, so they are cut consistently.

Ranked rows (`responses` with `scores` or `ranking`, openbmb/UltraFeedback's
`completions`) give DPO one pair: the best response against the worst
(`best_versus_worst`), the pair with the clearest preference.

Examples keep `index`, their position among the kept examples of their file:
it is the row of the on-disk reference cache (`reference.py`), which belongs to
the file, not to a train/eval split.

KTO data (`load_unpaired`) takes unpaired rows (prompt, completion, label) and
also preference rows, each split into one desirable and one undesirable example.
Every KTO example gets a *mismatched* completion for the reference point z0: the
completion of the next example in a fixed, seeded shuffle of the file (so a
prompt is never paired with its own completion unless two rows share it).
Fixing the pairs at load time, as TRL also does when it prepares its KL
dataset, lets the cache hold their reference log-probs too.
"""
from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..data.formats import NoPreference, parse_row, skipped_text
from ..data.options import read_kwargs
from ..data.readers import read_rows, split_location
from ..data.tokenize import LengthStats, apply_length_policy, tokenize_prompt_response
from ..errors import ConfigError, InputError
from ..jsonl import write_json
from ..records import PreferencePair, Ranked, Unpaired
from .setup import say

INVALID_POLICIES = ("error", "drop")
MISMATCH_SEED = 1234  # fixed, so the mismatched pairs (and their cache) do not depend on the run's seed


class InvalidExample(InputError):
    """A row that cannot be trained on (dropped under `invalid_rows="drop"`); length errors are plain InputErrors."""


@dataclass
class PairExample:
    """One preference pair as token ids; the responses end with the end-of-turn token."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source: str | None = None
    index: int = 0  # row in the reference cache of its file


@dataclass
class UnpairedExample:
    """One KTO example, plus the mismatched completion used to estimate z0."""

    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool
    mismatched_ids: list[int] = field(default_factory=list)
    source: str | None = None
    index: int = 0  # row in the reference cache of its file


@dataclass
class DataReport:
    """What reading one file kept, cut and dropped."""

    path: str
    rows: int = 0
    lengths: LengthStats = field(default_factory=LengthStats)
    invalid: list[str] = field(default_factory=list)  # one message per dropped invalid row
    examples: int = 0
    skipped: Counter = field(default_factory=Counter)  # rows with no preference (ties), by reason

    def summary(self, shown: int = 3) -> str:
        text = (f"{self.path}: {self.rows} rows -> {self.examples} examples; longest {self.lengths.longest} tokens, "
                f"{self.lengths.truncated} truncated, {self.lengths.dropped} dropped as too long, "
                f"{len(self.invalid)} dropped as invalid")
        if self.skipped:
            text += f", {skipped_text(self.skipped)}"
        for message in self.invalid[:shown]:
            text += f"\n  dropped: {message}"
        if len(self.invalid) > shown:
            text += f"\n  ... and {len(self.invalid) - shown} more (see data_report.json)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "examples": self.examples, **self.lengths.to_dict(),
                "dropped_invalid": len(self.invalid), "invalid": self.invalid, "skipped": dict(self.skipped)}


def check_policies(length_policy: str, invalid_rows: str) -> None:
    if invalid_rows not in INVALID_POLICIES:
        raise ConfigError("invalid_rows", f"{invalid_rows!r} is not one of {', '.join(INVALID_POLICIES)}")
    if length_policy not in ("error", "drop", "truncate"):
        raise ConfigError("length_policy", f"{length_policy!r} is not one of error, drop, truncate")


def _records(path: str, kind: str | None, invalid_rows: str, report: DataReport, limit: int | None,
             read: dict[str, Any] | None = None):
    """Yield normalised records; bad rows raise or are dropped as `invalid_rows` says. `read`:
    split / columns / max_line_bytes for `read_rows` (see `posttrain.data.options.read_kwargs`)."""
    for where, row in read_rows(path, **(read or {})):
        if limit is not None and report.rows >= limit:
            return
        report.rows += 1
        try:
            _, record = parse_row(row, where, kind)
        except NoPreference as exc:  # well formed, nothing to learn: counted whatever invalid_rows says
            report.skipped[exc.reason] += 1
            continue
        except InputError as exc:
            if invalid_rows == "error":
                raise
            report.invalid.append(str(exc))
            continue
        yield record


def _prompt_and_responses(prompt, responses: list[str], tokenizer, template, extra) -> tuple[list[int], list[list[int]]]:
    prompt_ids, out = None, []
    for text in responses:
        ids_prompt, ids_response = tokenize_prompt_response(prompt, text, tokenizer, template, extra)
        prompt_ids = ids_prompt if prompt_ids is None else prompt_ids
        out.append(ids_response)
    return prompt_ids, out


def tokenize_pair(pair: PreferencePair, tokenizer, template, max_length: int | None, length_policy: str,
                  stats: LengthStats | None = None) -> PairExample | None:
    """Tokenise and fit one pair; None when the length policy drops it. Raises InvalidExample for a
    prompt with no tokens or a pair whose two responses are the same tokens after fitting, and
    InputError when the length policy is "error" and the pair is too long."""
    path, line = split_location(pair.source)
    prompt, (chosen, rejected) = _prompt_and_responses(pair.prompt, [pair.chosen, pair.rejected], tokenizer,
                                                       template, pair.extra)
    if not prompt:
        raise InvalidExample(path, line, "prompt", "renders to no tokens with this template (nothing to condition on)")
    fitted = apply_length_policy(prompt, [chosen, rejected], max_length, length_policy, pair.source, stats)
    if fitted is None:
        return None
    prompt, (chosen, rejected) = fitted
    if chosen == rejected:
        raise InvalidExample(path, line, "rejected", f"is the same as 'chosen' once cut to max_length {max_length} "
                         "(they differ only after the cut)")
    return PairExample(prompt, chosen, rejected, pair.source)


def best_versus_worst(record: Ranked) -> PreferencePair:
    """A ranked row as one preference pair: its best response chosen, its worst rejected (the data
    layer refused rankings whose scores are all equal, so the two differ in score)."""
    order = record.order()
    return PreferencePair(record.prompt, record.responses[order[0]], record.responses[order[-1]],
                          source=record.source, extra=record.extra)


def load_pairs(path: str, tokenizer, template, *, max_length: int | None, length_policy: str,
               invalid_rows: str = "error", limit: int | None = None, read: dict[str, Any] | None = None
               ) -> tuple[list[PairExample], DataReport]:
    """Read preference pairs from `path` and tokenise them (see the module doc for the policies)."""
    check_policies(length_policy, invalid_rows)
    report = DataReport(str(path))
    examples: list[PairExample] = []
    for record in _records(path, ("preference", "ranked"), invalid_rows, report, limit, read):
        pair = best_versus_worst(record) if isinstance(record, Ranked) else record
        try:
            example = tokenize_pair(pair, tokenizer, template, max_length, length_policy, report.lengths)
        except InvalidExample as exc:
            if invalid_rows == "error":
                raise
            report.invalid.append(str(exc))
            continue
        if example is not None:
            example.index = len(examples)
            examples.append(example)
    report.examples = len(examples)
    return examples, report


# --------------------------------------------------------------------------- KTO


def _unpaired_items(record, report: DataReport, invalid_rows: str):
    """(prompt, completion, desirable) items of one record: an Unpaired row gives one, a pair two."""
    if isinstance(record, Unpaired):
        return [(record.prompt, record.completion, record.label)]
    if isinstance(record, PreferencePair):
        return [(record.prompt, record.chosen, True), (record.prompt, record.rejected, False)]
    path, line = split_location(record.source)
    error = InputError(path, line, None, f"kto needs unpaired rows (prompt, completion, label) or preference rows "
                       f"(prompt, chosen, rejected), got a {type(record).__name__} row")
    if invalid_rows == "error":
        raise error
    report.invalid.append(str(error))
    return []


def assign_mismatched(examples: list[UnpairedExample], max_length: int | None, seed: int = MISMATCH_SEED) -> None:
    """Give each example the completion of the next one with another prompt in a seeded shuffle,
    cut to fit max_length."""
    if len(examples) < 2:
        raise ConfigError("data", "kto needs at least 2 examples (z0 pairs each prompt with another completion)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = len(order)
    for k, i in enumerate(order):
        # The next example in the shuffle, skipping those with the same prompt (the two halves
        # of a preference row): their completion answers this prompt, so it is no mismatch.
        steps = (s for s in range(1, n) if examples[order[(k + s) % n]].prompt_ids != examples[i].prompt_ids)
        partner = examples[order[(k + next(steps, 1)) % n]].completion_ids
        room = len(partner) if max_length is None else max_length - len(examples[i].prompt_ids)
        examples[i].mismatched_ids = list(partner[:max(room, 1)])


def load_unpaired(path: str, tokenizer, template, *, max_length: int | None, length_policy: str,
                  invalid_rows: str = "error", limit: int | None = None, read: dict[str, Any] | None = None
                  ) -> tuple[list[UnpairedExample], DataReport]:
    """Read KTO examples from `path` (unpaired or preference rows) and tokenise them."""
    check_policies(length_policy, invalid_rows)
    report = DataReport(str(path))
    examples: list[UnpairedExample] = []
    for record in _records(path, None, invalid_rows, report, limit, read):
        for prompt, completion, desirable in _unpaired_items(record, report, invalid_rows):
            prompt_ids, (completion_ids,) = _prompt_and_responses(prompt, [completion], tokenizer, template, record.extra)
            if not prompt_ids:
                path_, line = split_location(record.source)
                error = InvalidExample(path_, line, "prompt", "renders to no tokens with this template")
                if invalid_rows == "error":
                    raise error
                report.invalid.append(str(error))
                continue
            fitted = apply_length_policy(prompt_ids, [completion_ids], max_length, length_policy, record.source,
                                         report.lengths)
            if fitted is None:
                continue
            prompt_ids, (completion_ids,) = fitted
            examples.append(UnpairedExample(prompt_ids, completion_ids, bool(desirable), source=record.source,
                                            index=len(examples)))
    report.examples = len(examples)
    if examples:
        assign_mismatched(examples, max_length)
    return examples, report


def split_eval(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out `fraction` of the examples (at least one) for validation; deterministic in `seed`."""
    if fraction <= 0:
        return examples, []
    if fraction >= 1:
        raise ConfigError("eval_fraction", f"must be below 1, got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    cut = max(1, int(round(len(examples) * fraction)))
    held = set(order[:cut])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def data_paths(cfg) -> list[str]:
    """The training data paths of a dpo/kto config: `data` is a list (one path, as a plain string, works too)."""
    return [cfg.data] if isinstance(cfg.data, str) else [str(p) for p in cfg.data]


def load_data(cfg, tokenizer, template, loader) -> tuple[list, list, list, dict[str, DataReport]]:
    """`(train, eval, files, reports)` for a recipe config (data, eval_data, eval_fraction, limit,
    max_length, length_policy, invalid_rows); `files` is `[(path, every kept example of it)]`
    for the reference cache; `loader` is `load_pairs` or `load_unpaired`.

    Several training files are concatenated, in order (`limit` applies to each); each keeps
    its own reference cache, since an example's `index` is its row in its own file.
    """
    paths = [p for p in data_paths(cfg) if p]
    if not paths:
        raise ConfigError("data", "give the training data (--data FILE)")
    kwargs = dict(max_length=cfg.max_length, length_policy=cfg.length_policy, invalid_rows=cfg.invalid_rows,
                  limit=cfg.limit or None)
    train, reports, files = [], {}, []
    for number, path in enumerate(paths, start=1):
        examples, report = loader(path, tokenizer, template, **kwargs, read=read_kwargs(cfg))
        say(report.summary())
        reports["train" if len(paths) == 1 else f"train/{number}"] = report
        files.append((path, examples))
        train += examples
    if cfg.eval_data:
        held_out, eval_report = loader(cfg.eval_data, tokenizer, template, **kwargs,
                                       read=read_kwargs(cfg, split=False))  # eval data names its split as PATH:SPLIT
        say(eval_report.summary())
        reports["eval"] = eval_report
        files.append((cfg.eval_data, held_out))
    else:
        train, held_out = split_eval(train, cfg.eval_fraction, cfg.seed)
    if not train:
        summaries = "; ".join(r.summary().splitlines()[0] for r in reports.values())
        raise ConfigError("data", f"no example is left to train on ({summaries})")
    return train, held_out, files, reports


def write_report(output_dir: str, reports: dict[str, DataReport], reference: dict[str, Any]) -> None:
    """`data_report.json` in the run directory: what the data policies did, and the reference used."""

    if int(os.environ.get("RANK", "0")) == 0:
        write_json(f"{output_dir}/data_report.json",
                   {**{name: r.to_dict() for name, r in reports.items()}, "reference": reference})
