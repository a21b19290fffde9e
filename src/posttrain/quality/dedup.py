"""`posttrain data dedup`: exact and near duplicates in one file, and train/eval contamination.

Within the input file, a row is a duplicate when its key text (prompt, responses, or both) is
an exact (normalised) or near (character-shingle Jaccard >= threshold) copy of an earlier kept
row; see `near.py` for the method. With `--against EVAL.jsonl`, every eval row whose prompt
matches a training row (exactly, nearly, or, with `--ngram N`, sharing any word N-gram, the
GPT-3 paper's contamination test) is reported, and those training rows are left out of
`--output` (decontamination).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from ..config import help_field, parse_config
from ..data.options import DataArgs, read_kwargs
from ..errors import ConfigError, PosttrainError
from ..jsonl import write_json, write_jsonl
from .fields import Row, load_rows, prompt_of, responses_of
from .near import NearIndex, find_duplicates, normalise, text_hash, word_ngrams
from .table import format_table, json_safe

KEYS = ("all", "prompt", "response")


def key_text(row: Row, key: str, path: str | None = None, line: int | None = None) -> str:
    """The text compared for duplicates: the prompt, the responses, or both."""
    if key == "prompt":
        return prompt_of(row, path, line)
    responses = "\n".join(responses_of(row, path, line))
    if key == "response":
        return responses
    return prompt_of(row, path, line) + "\n" + responses


def contamination(train: Sequence[str], evals: Sequence[str], threshold: float = 0.8, near: bool = True,
                  ngram: int = 0, k: int = 5, num_perm: int = 128, seed: int = 0,
                  train_full: Sequence[str] | None = None) -> dict[int, dict[str, Any]]:
    """Eval items found in train: {eval index: {"kind", "train_index", "similarity"}}.

    kind is "exact" (same normalised text), "near" (Jaccard >= threshold) or "ngram" (shares a
    word n-gram of length `ngram` with some training text; 0 turns that test off). The n-gram
    test looks in `train_full` when given (whole training rows: an eval question can leak
    through a training *response*), else in `train`. The strongest kind found is reported
    (exact > near > ngram).
    """
    exact: dict[str, int] = {}
    index = NearIndex(threshold, k, num_perm, seed) if near else None
    grams: dict[str, int] = {}
    for i, text in enumerate(train):
        if not normalise(text):
            continue
        exact.setdefault(text_hash(text), i)
        if index is not None:
            index.add(i, text)
    if ngram > 0:
        for i, text in enumerate(train_full if train_full is not None else train):
            for gram in word_ngrams(text, ngram):
                grams.setdefault(gram, i)
    found: dict[int, dict[str, Any]] = {}
    for j, text in enumerate(evals):
        if not normalise(text):
            continue
        if text_hash(text) in exact:
            found[j] = {"kind": "exact", "train_index": exact[text_hash(text)], "similarity": 1.0}
            continue
        matches = index.query(text) if index is not None else []
        if matches:
            found[j] = {"kind": "near", "train_index": matches[0][0], "similarity": matches[0][1]}
            continue
        shared = [grams[g] for g in word_ngrams(text, ngram) if g in grams] if ngram > 0 else []
        if shared:
            found[j] = {"kind": "ngram", "train_index": min(shared), "similarity": None}
    return found


@dataclass
class DedupConfig(DataArgs):
    input: str = help_field("", "JSONL file to deduplicate (the training side of a contamination check)")
    against: list[str] | None = help_field(None, "eval/test JSONL files to check for contamination")
    output: str | None = help_field(None, "write the input without duplicates (and without rows matching "
                                          "--against files) here")
    report: str | None = help_field(None, "write the full report as JSON here")
    key: str = help_field("all", "what is compared within the input", choices=KEYS)
    against_key: str = help_field("prompt", "what is compared between input and --against files", choices=KEYS)
    near: bool = help_field(True, "also find near duplicates (MinHash LSH on character shingles)")
    threshold: float = help_field(0.8, "Jaccard similarity at or above which texts are near duplicates")
    shingle: int = help_field(5, "characters per shingle")
    ngram: int = help_field(0, "also flag eval items sharing a word n-gram of this length with any training row's "
                               "prompt or responses (0 = off; GPT-3 used 13)")
    num_perm: int = help_field(128, "MinHash signature length")
    seed: int = help_field(0, "seed of the MinHash functions")
    examples: int = help_field(5, "how many duplicate examples to print")


def _check(cfg: DedupConfig) -> None:
    if not cfg.input:
        raise PosttrainError("no input file given (posttrain data dedup FILE)")
    if not 0 < cfg.threshold <= 1:
        raise ConfigError("threshold", f"must be in (0, 1], got {cfg.threshold}")
    if cfg.shingle < 1:
        raise ConfigError("shingle", f"must be at least 1, got {cfg.shingle}")
    if cfg.ngram < 0:
        raise ConfigError("ngram", f"must be 0 (off) or positive, got {cfg.ngram}")
    if cfg.num_perm < 8:
        raise ConfigError("num_perm", f"must be at least 8, got {cfg.num_perm}")


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def run_dedup(cfg: DedupConfig) -> dict[str, Any]:
    """The whole command without printing: returns the report (and writes the files asked for)."""
    _check(cfg)
    rows = load_rows(cfg.input, **read_kwargs(cfg))
    texts = [key_text(row, cfg.key, cfg.input, line) for line, row in rows]
    dropped = find_duplicates(texts, cfg.threshold, cfg.near, cfg.shingle, cfg.num_perm, cfg.seed)
    duplicates = [{"line": rows[i][0], "duplicate_of_line": rows[j][0], "kind": kind, "similarity": sim,
                   "text": _short(texts[i])} for i, (j, kind, sim) in sorted(dropped.items())]
    report: dict[str, Any] = {
        "input": cfg.input, "rows": len(rows), "key": cfg.key, "threshold": cfg.threshold if cfg.near else None,
        "exact_duplicates": sum(d["kind"] == "exact" for d in duplicates),
        "near_duplicates": sum(d["kind"] == "near" for d in duplicates), "duplicates": duplicates,
        "contamination": [],
    }
    contaminated_train: set[int] = set()
    train_texts = [key_text(row, cfg.against_key, cfg.input, line) for line, row in rows] if cfg.against else []
    train_full = [key_text(row, "all", cfg.input, line) for line, row in rows] if cfg.against and cfg.ngram else None
    for eval_path in cfg.against or []:
        eval_rows = load_rows(eval_path, **read_kwargs(cfg, split=False))  # PATH:SPLIT names its split
        eval_texts = [key_text(row, cfg.against_key, eval_path, line) for line, row in eval_rows]
        found = contamination(train_texts, eval_texts, cfg.threshold, cfg.near, cfg.ngram,
                              cfg.shingle, cfg.num_perm, cfg.seed, train_full)
        contaminated_train |= {hit["train_index"] for hit in found.values()}
        kinds: dict[str, int] = defaultdict(int)
        for hit in found.values():
            kinds[hit["kind"]] += 1
        report["contamination"].append({
            "file": eval_path, "rows": len(eval_rows), "contaminated": len(found),
            "rate": len(found) / len(eval_rows) if eval_rows else None, "by_kind": dict(kinds),
            "items": [{"line": eval_rows[j][0], "train_line": rows[hit["train_index"]][0], "kind": hit["kind"],
                       "similarity": hit["similarity"], "text": _short(eval_texts[j])}
                      for j, hit in sorted(found.items())]})
    keep = [row for i, (_, row) in enumerate(rows) if i not in dropped and i not in contaminated_train]
    report["train_rows_matching_eval"] = len(contaminated_train)
    report["kept"] = len(keep)
    if cfg.output:
        write_jsonl(cfg.output, keep)
    if cfg.report:
        write_json(cfg.report, json_safe(report))
    return report


def render(report: dict[str, Any], examples: int = 5) -> str:
    lines = [format_table(["file", "rows", "exact dup", "near dup", "kept"],
                          [[report["input"], report["rows"], report["exact_duplicates"], report["near_duplicates"],
                            report["kept"]]], title=f"duplicates within the input (key: {report['key']})")]
    for d in report["duplicates"][:examples]:
        lines.append(f"  line {d['line']} = line {d['duplicate_of_line']} ({d['kind']}"
                     + (f", J={d['similarity']:.2f}" if d["kind"] == "near" else "") + f"): {d['text']}")
    if report["contamination"]:
        lines.append(format_table(
            ["eval file", "rows", "in train", "rate", "exact", "near", "ngram"],
            [[c["file"], c["rows"], c["contaminated"], c["rate"], c["by_kind"].get("exact", 0),
              c["by_kind"].get("near", 0), c["by_kind"].get("ngram", 0)] for c in report["contamination"]],
            title="contamination: eval items found in the input"))
        for c in report["contamination"]:
            for item in c["items"][:examples]:
                lines.append(f"  {c['file']}:{item['line']} ~ input line {item['train_line']} ({item['kind']}): "
                             f"{item['text']}")
        if report["train_rows_matching_eval"]:
            lines.append(f"{report['train_rows_matching_eval']} input rows match eval items and are left out of --output")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    cfg = parse_config(DedupConfig, argv, prog="posttrain data dedup", positional="input",
                       description="Exact and near duplicates, within a file and against eval files.")
    report = run_dedup(cfg)
    print(render(report, cfg.examples))
    for path in (cfg.output, cfg.report):
        if path:
            print(f"wrote {path}")
    return 0
