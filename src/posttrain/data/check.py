"""`posttrain data check FILE`: validate a data file and print what is in it.

    posttrain data check data.jsonl
    posttrain data check data.jsonl --kind sft --tokenizer smollm2-135m --max-length 512

Prints the row count, the count of each shape (and kind), and length
statistics: characters always, tokens when `--tokenizer` is given (min, mean,
p50, p95, max, and how many rows are over `--max-length`). The first bad row
stops the check with the usual one-line error and exit code 2; so does the
first row over `--max-length` with `--length-policy error`.

The rows pass through the same `formats.parse_row` the training commands use,
so what `data check` passes, training accepts (`--split`, `--columns` and
`--max-line-bytes` read the file the same way too). Unpaired (KTO) data must
hold both labels, as `posttrain kto` requires. Memory stays bounded: rows are
checked one at a time and only their lengths are kept.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..config import help_field, parse_config
from ..errors import ConfigError, InputError
from ..records import Conversation, PreferencePair, Prompt, Ranked, Record, Text, Unpaired
from .formats import KINDS, check_both_labels, iter_records, skipped_text
from .options import DataArgs, read_kwargs
from .templates import TEMPLATE_NAMES, get_template
from .tokenize import encode, tokenize_conversation, tokenize_prompt_response, tokenize_text, too_long_error


@dataclass
class DataCheckConfig(DataArgs):
    file: str = help_field("", "data file (.jsonl/.json/.csv/.parquet), save_to_disk directory, folder of split "
                               "files, or hub id; FILE:SPLIT picks a split")
    kind: str | None = help_field(None, "require every row to be this kind of data", choices=KINDS)
    tokenizer: str | None = help_field(None, "count tokens with this model's tokenizer (alias, directory or hub id)")
    template: str = help_field("auto", "prompt template used when counting tokens", choices=TEMPLATE_NAMES)
    max_length: int | None = help_field(None, "report how many rows are longer than this many tokens")
    length_policy: str = help_field("report", "rows over max_length: count them (report) or stop with an error",
                                    choices=["report", "error"])


RECORD_KINDS = {Conversation: "sft", PreferencePair: "preference", Ranked: "ranked", Unpaired: "unpaired",
                Prompt: "prompt", Text: "text"}


@dataclass
class CheckResult:
    rows: int
    shapes: Counter
    kinds: Counter
    chars: list[int]
    tokens: list[int] | None
    skipped: Counter = field(default_factory=Counter)  # rows with no preference (ties), by reason

    def over(self, max_length: int) -> int:
        return sum(1 for n in self.tokens or [] if n > max_length)


def record_texts(record: Record) -> tuple[str, list[str]]:
    """(prompt text, response texts) of a record, for character counts."""
    if isinstance(record, Conversation):
        return "".join(m["content"] for m in record.messages if m["role"] != "assistant"), [
            "".join(m["content"] for m in record.messages if m["role"] == "assistant")]
    if isinstance(record, Text):
        return "", [record.text]
    prompt = "".join(m["content"] for m in record.prompt)
    if isinstance(record, Prompt):
        return prompt, []
    if isinstance(record, PreferencePair):
        return prompt, [record.chosen, record.rejected]
    if isinstance(record, Ranked):
        return prompt, list(record.responses)
    assert isinstance(record, Unpaired)
    return prompt, [record.completion]


def record_chars(record: Record) -> int:
    """Characters of the prompt plus the longest response (what one training sequence holds)."""
    prompt, responses = record_texts(record)
    return len(prompt) + max((len(r) for r in responses), default=0)


def record_tokens(record: Record, tokenizer: Any, template: Any) -> int:
    """Tokens of the prompt plus the longest response, as the trainers tokenise them."""
    if isinstance(record, Conversation):
        return len(tokenize_conversation(record, tokenizer, template))
    if isinstance(record, Text):  # the whole text; training cuts it into max_length pieces
        return sum(len(piece) for piece in tokenize_text(record, tokenizer))
    _, responses = record_texts(record)
    prompt_ids = encode(tokenizer, template.prompt(record.prompt, record.extra))
    longest = max((len(tokenize_prompt_response(record.prompt, r, tokenizer, template, record.extra)[1])
                   for r in responses), default=0)
    return len(prompt_ids) + longest


def check_data(source: str, kind: str | None = None, split: str | None = None, tokenizer: Any = None,
               template: str = "auto", max_length: int | None = None, length_policy: str = "report",
               columns: dict[str, str] | None = None, max_line_bytes: int | None = None) -> CheckResult:
    """Validate every row of `source`; count shapes and measure lengths.

    With `length_policy="error"` the first row over `max_length` tokens raises
    the same `InputError` training would raise under the "error" policy. A file
    of unpaired rows must hold both labels (as KTO training requires).
    """
    shapes: Counter = Counter()
    kinds: Counter = Counter()
    chars: list[int] = []
    tokens: list[int] | None = [] if tokenizer is not None else None
    chosen_template = get_template(template, tokenizer) if tokenizer is not None else None
    labels: Counter = Counter()
    skipped: Counter = Counter()  # as the training commands skip them
    for shape, record in iter_records(source, kind, split, columns, max_line_bytes, skipped):
        shapes[shape] += 1
        if isinstance(record, Unpaired):
            labels[record.label] += 1
        kinds[RECORD_KINDS[type(record)]] += 1
        chars.append(record_chars(record))
        if tokens is not None:
            length = record_tokens(record, tokenizer, chosen_template)
            if length_policy == "error" and max_length is not None and length > max_length:
                field = "messages" if isinstance(record, Conversation) else "prompt"
                raise too_long_error(record.source, field, length, max_length)
            tokens.append(length)
    if skipped and not shapes:
        raise InputError(source, None, None, f"no row left to check: {skipped_text(skipped)}")
    if labels and sum(labels.values()) == sum(shapes.values()):
        check_both_labels(source, labels[True], labels[False])
    return CheckResult(sum(shapes.values()), shapes, kinds, chars, tokens, skipped)


def describe(values: Sequence[int]) -> str:
    """`min 3  mean 7.5  p50 7  p95 12  max 14`."""
    array = np.asarray(values, dtype=np.float64)
    p50, p95 = np.percentile(array, [50, 95])
    return (f"min {int(array.min())}  mean {array.mean():.1f}  p50 {p50:.0f}  p95 {p95:.0f}  "
            f"max {int(array.max())}")


def format_report(source: str, result: CheckResult, cfg: DataCheckConfig, template_name: str | None) -> str:
    lines = [f"{source}: {result.rows} rows, all valid"]
    if result.skipped:
        lines.append(f"  {skipped_text(result.skipped)}")
    lines.append("  shapes: " + ", ".join(f"{shape} {n}" for shape, n in result.shapes.most_common()))
    lines.append("  kinds: " + ", ".join(f"{kind} {n}" for kind, n in result.kinds.most_common()))
    lines.append("  characters (prompt + longest response): " + describe(result.chars))
    if result.tokens is not None:
        lines.append(f"  tokens ({cfg.tokenizer}, template {template_name}): " + describe(result.tokens))
        if cfg.max_length is not None:
            lines.append(f"  over max_length {cfg.max_length}: {result.over(cfg.max_length)} of {result.rows}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    cfg = parse_config(DataCheckConfig, argv, prog="posttrain data check",
                       description="Validate a data file: shapes, counts, length statistics.", positional="file")
    if not cfg.file:
        raise ConfigError("file", "give the data file to check: posttrain data check FILE")
    if cfg.max_length is not None and cfg.tokenizer is None:
        raise ConfigError("max_length", "counting rows over a max length needs --tokenizer")
    tokenizer = None
    template_name = None
    if cfg.tokenizer is not None:
        from ..models.loading import load_tokenizer  # torch: only when token lengths are asked for

        tokenizer = load_tokenizer(cfg.tokenizer)
        template_name = get_template(cfg.template, tokenizer).name
    result = check_data(cfg.file, cfg.kind, tokenizer=tokenizer, template=cfg.template, max_length=cfg.max_length,
                        length_policy=cfg.length_policy, **read_kwargs(cfg))
    print(format_report(cfg.file, result, cfg, template_name))
    return 0
