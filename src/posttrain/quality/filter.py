"""`posttrain data filter`: drop (or flag) low-quality, duplicate and unsafe training rows.

Per row, in this order:
1. heuristics on the responses the trainer learns from (`fields.learn_responses`: the chosen
   side of a pair, the SFT answer, a desirable KTO completion): length bounds, repetition,
   non-alphabetic share, prompt echo, refusal boilerplate (see `heuristics.py`);
2. an existing score field (from a judge or a classifier), `--score-field` / `--min-score`;
3. with `--safety`: personal data anywhere in the row (dropped, or replaced by typed
   placeholders with `--redact`) and harmful requests that a learned response answers;
4. near-duplicate removal among the rows still kept (the first occurrence stays).

Every dropped row is written to the dropped file with a `drop_reason` naming every check it
failed. A refusal is not a defect when the prompt is harmful, so the refusal check is skipped
for prompts the safety classifier flags.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import help_field, parse_config
from ..data.options import DataArgs, read_kwargs
from ..errors import ConfigError, InputError, PosttrainError
from ..jsonl import write_json, write_jsonl
from .dedup import KEYS, key_text
from .fields import Row, get_path, iter_strings, learn_responses, load_rows, map_strings, prompt_of
from .heuristics import measure
from .near import find_duplicates
from .safety import find_pii, harm_categories, harmful_answered, redact
from .table import format_table, json_safe

CHECKS = ("length", "repetition", "non_alpha", "echo", "refusal")


@dataclass
class FilterConfig(DataArgs):
    input: str = help_field("", "JSONL file to filter (any row format the data tools read)")
    output: str = help_field("", "kept rows go here (JSONL)")
    dropped: str | None = help_field(None, "dropped rows, each with a drop_reason (default: OUTPUT.dropped.jsonl)")
    report: str | None = help_field(None, "also write counts per reason as JSON here")
    action: str = help_field("drop", "drop failing rows, or keep all and flag them in a quality_flags field",
                             choices=("drop", "flag"))
    checks: list[str] = help_field(list(CHECKS), "heuristic checks to run", choices=CHECKS)
    min_words: int = help_field(1, "responses with fewer words fail 'length'")
    max_words: int = help_field(4000, "responses with more words fail 'length'")
    max_repetition: float = help_field(0.5, "largest share of repeated word n-grams")
    max_non_alpha: float = help_field(0.5, "largest share of symbols: characters neither letters nor digits "
                                           "(code ~0.2-0.4)")
    max_echo: float = help_field(0.9, "largest share of response n-grams copied from the prompt")
    ngram: int = help_field(3, "n of the word n-grams for repetition and echo")
    score_field: str | None = help_field(None, "numeric field already in the rows (dotted path, e.g. scores.judge)")
    min_score: float | None = help_field(None, "drop rows whose score field is below this")
    max_score: float | None = help_field(None, "drop rows whose score field is above this")
    dedup: bool = help_field(True, "drop exact and near duplicates (the first occurrence stays)")
    dedup_key: str = help_field("all", "text compared for duplicates", choices=KEYS)
    threshold: float = help_field(0.85, "Jaccard similarity of character shingles at which rows are near duplicates")
    safety: bool = help_field(False, "drop rows with personal data or a harmful request answered")
    redact: bool = help_field(False, "with --safety: replace personal data by [EMAIL], [PHONE], ... "
                                     "instead of dropping")


def _check_config(cfg: FilterConfig) -> None:
    if not cfg.input:
        raise PosttrainError("no input file given (posttrain data filter FILE --output KEPT.jsonl)")
    if not cfg.output:
        raise ConfigError("output", "required: where to write the kept rows")
    if cfg.redact and not cfg.safety:
        raise ConfigError("redact", "needs --safety (redaction is part of the safety checks)")
    if (cfg.min_score is not None or cfg.max_score is not None) and not cfg.score_field:
        raise ConfigError("score_field", "needed with --min-score / --max-score")
    if cfg.score_field and cfg.min_score is None and cfg.max_score is None:
        raise ConfigError("min_score", "give --min-score and/or --max-score with --score-field")
    if cfg.min_words > cfg.max_words:
        raise ConfigError("min_words", f"{cfg.min_words} is above max_words {cfg.max_words}")
    if not 0 < cfg.threshold <= 1:
        raise ConfigError("threshold", f"must be in (0, 1], got {cfg.threshold}")
    if cfg.ngram < 1:
        raise ConfigError("ngram", f"must be at least 1, got {cfg.ngram}")


def heuristic_reasons(prompt: str, responses: list[str], cfg: FilterConfig, harmful: bool) -> list[tuple[str, str]]:
    """(category, message) for every heuristic a learned response fails."""
    reasons: list[tuple[str, str]] = []
    checks = set(cfg.checks)
    for i, response in enumerate(responses):
        m = measure(prompt, response, cfg.ngram)
        which = f"response {i + 1}: " if len(responses) > 1 else ""
        if "length" in checks and m["words"] < cfg.min_words:
            reasons.append(("too_short", f"{which}too short ({m['words']} words < {cfg.min_words})"))
        if "length" in checks and m["words"] > cfg.max_words:
            reasons.append(("too_long", f"{which}too long ({m['words']} words > {cfg.max_words})"))
        if "repetition" in checks and m["repetition"] > cfg.max_repetition:
            reasons.append(("repetition", f"{which}repetitive ({m['repetition']:.2f} of {cfg.ngram}-grams repeat)"))
        if "non_alpha" in checks and m["non_alpha"] > cfg.max_non_alpha:
            reasons.append(("non_alpha", f"{which}mostly non-alphabetic ({m['non_alpha']:.2f})"))
        if "echo" in checks and m["echo"] > cfg.max_echo:
            reasons.append(("echo", f"{which}echoes the prompt ({m['echo']:.2f} of {cfg.ngram}-grams)"))
        if "refusal" in checks and m["refusal"] and not harmful:
            reasons.append(("refusal", f"{which}refusal or AI boilerplate"))
    return reasons


def score_reason(row: Row, line: int, cfg: FilterConfig) -> list[tuple[str, str]]:
    try:
        value = get_path(row, cfg.score_field)
    except KeyError:
        raise InputError(cfg.input, line, cfg.score_field, "missing (set by --score-field)") from None
    if value is None:
        return [("score", "no score")]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(cfg.input, line, cfg.score_field, f"expected a number, got {value!r}")
    if cfg.min_score is not None and value < cfg.min_score:
        return [("score", f"score {value:g} < {cfg.min_score:g}")]
    if cfg.max_score is not None and value > cfg.max_score:
        return [("score", f"score {value:g} > {cfg.max_score:g}")]
    return []


def safety_reasons(row: Row, prompt: str, responses: list[str],
                   cfg: FilterConfig) -> tuple[Row, list[tuple[str, str]], list[str]]:
    """(row, reasons, redacted kinds): personal data dropped or redacted; harmful compliance dropped."""
    reasons: list[tuple[str, str]] = []
    redacted: list[str] = []
    if cfg.redact:
        def replace(text: str) -> str:
            new, kinds = redact(text)
            redacted.extend(kinds)
            return new
        row = map_strings(row, replace)
    else:
        kinds = sorted({f.kind for text in iter_strings(row) for f in find_pii(text)})
        if kinds:
            reasons.append(("personal_data", f"personal data: {', '.join(kinds)}"))
    harmful = harmful_answered(prompt, responses)
    if harmful:
        reasons.append(("harmful", f"harmful request answered: {', '.join(harmful)}"))
    return row, reasons, redacted


def run_filter(cfg: FilterConfig) -> dict[str, Any]:
    """Filter `cfg.input`, write kept and dropped rows, return the report."""
    _check_config(cfg)
    rows = load_rows(cfg.input, **read_kwargs(cfg))
    results: list[tuple[int, Row, list[tuple[str, str]]]] = []
    redactions: Counter[str] = Counter()
    for line, row in rows:
        prompt = prompt_of(row, cfg.input, line)
        learned = learn_responses(row, cfg.input, line)
        harmful_prompt = cfg.safety and bool(harm_categories(prompt))
        reasons = heuristic_reasons(prompt, learned, cfg, harmful_prompt)
        if cfg.score_field:
            reasons += score_reason(row, line, cfg)
        if cfg.safety:
            row, found, kinds = safety_reasons(row, prompt, learned, cfg)
            reasons += found
            redactions.update(kinds)
        results.append((line, row, reasons))
    if cfg.dedup:
        candidates = [i for i, (_, _, reasons) in enumerate(results) if not reasons or cfg.action == "flag"]
        texts = [key_text(results[i][1], cfg.dedup_key, cfg.input, results[i][0]) for i in candidates]
        for position, (kept_position, kind, similarity) in find_duplicates(texts, cfg.threshold).items():
            line, _, reasons = results[candidates[position]]
            original = results[candidates[kept_position]][0]
            detail = "" if kind == "exact" else f", similarity {similarity:.2f}"
            reasons.append(("duplicate", f"{kind} duplicate of line {original}{detail}"))
    kept, dropped, counts = [], [], Counter()
    for line, row, reasons in results:
        counts.update({category for category, _ in reasons})
        message = "; ".join(text for _, text in reasons)
        if cfg.action == "flag":
            kept.append({**row, "quality_flags": [text for _, text in reasons]} if reasons else row)
        elif reasons:
            dropped.append({**row, "drop_reason": message})
        else:
            kept.append(row)
    dropped_path = cfg.dropped or str(Path(cfg.output).with_suffix("")) + ".dropped.jsonl"
    write_jsonl(cfg.output, kept)
    if cfg.action == "drop":
        write_jsonl(dropped_path, dropped)
    report = {"input": cfg.input, "rows": len(rows), "kept": len(kept), "dropped": len(dropped),
              "flagged": sum(bool(r) for _, _, r in results), "reasons": dict(counts.most_common()),
              "redactions": dict(redactions.most_common()), "output": cfg.output,
              "dropped_file": dropped_path if cfg.action == "drop" else None}
    if cfg.report:
        write_json(cfg.report, json_safe(report))
    return report


def render(report: dict[str, Any]) -> str:
    rows = [[reason, count] for reason, count in report["reasons"].items()]
    lines = [f"{report['rows']} rows: {report['kept']} kept, {report['dropped']} dropped"
             + (f" ({report['flagged']} flagged)" if report["dropped_file"] is None else "")]
    if rows:
        lines.append(format_table(["reason", "rows"], rows, title="rows failing each check (a row can fail several)"))
    if report["redactions"]:
        lines.append("redacted: " + ", ".join(f"{k} x{v}" for k, v in report["redactions"].items()))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    cfg = parse_config(FilterConfig, argv, prog="posttrain data filter", positional="input",
                       description="Drop low-quality, duplicate and unsafe rows; write kept and dropped JSONL.")
    report = run_filter(cfg)
    print(render(report))
    print(f"wrote {report['output']}" + (f" and {report['dropped_file']}" if report["dropped_file"] else ""))
    return 0
