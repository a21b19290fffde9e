"""`posttrain pairs`: build preference pairs from scored, ranked or model-labelled responses.

    posttrain pairs --input scored.jsonl --strategy best-vs-random --output pairs.jsonl
    posttrain pairs --input generations.jsonl --strategy stronger-vs-weaker --model-order big,small

Responses are grouped by prompt, then each strategy turns a group into pairs:

  all                 every two responses whose scores differ by at least --min-margin
  best-vs-random      the best response against one other drawn at random (Zephyr's dDPO
                      recipe: responses from several models scored by a judge)
  best-vs-worst       the best response against the worst
  stronger-vs-weaker  a stronger model's response against a weaker model's, by the order in
                      --model-order (the Orca DPO pairs recipe); needs no scores

For score-based strategies a candidate pair (higher score `s_c`, lower `s_r`) is dropped as

  identical     the two texts are the same (no preference can be learned)
  tie           s_c - s_r <= --tie-threshold
  below_margin  s_c - s_r <  --min-margin

and counted in the summary. Output rows are TRL preference rows (see docs/pairs.md).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import help_field, parse_config
from ..data.options import DataArgs, read_kwargs
from ..errors import ConfigError, PosttrainError
from ..jsonl import write_json, write_jsonl
from .responses import Response, read_responses

STRATEGIES = ("all", "best-vs-random", "best-vs-worst", "stronger-vs-weaker")
SCORE_FREE = {"stronger-vs-weaker"}


@dataclass(frozen=True)
class Rules:
    min_margin: float = 0.0
    tie_threshold: float = 0.0
    model_rank: dict[str, int] = field(default_factory=dict)  # model -> 0 for the strongest


@dataclass
class Tally:
    """What one strategy made and dropped, over all prompts (ties etc. count candidate pairs)."""

    pairs: int = 0
    ties: int = 0
    below_margin: int = 0
    identical: int = 0
    unranked_model: int = 0          # stronger-vs-weaker: responses whose model is not in --model-order
    prompts_without_pair: int = 0    # prompts with >= 2 responses that gave no pair

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


Pair = tuple[Response, Response]  # (chosen, rejected)


def classify(better: Response, worse: Response, rules: Rules) -> str:
    """'ok', 'identical', 'tie' or 'below_margin' for a candidate pair (better.score >= worse.score)."""
    if better.text == worse.text:
        return "identical"
    gap = better.score - worse.score
    if gap <= rules.tie_threshold:
        return "tie"
    if gap < rules.min_margin:
        return "below_margin"
    return "ok"


_TALLY_FIELD = {"tie": "ties", "below_margin": "below_margin", "identical": "identical"}


def _count(tally: Tally, verdict: str) -> None:
    if verdict != "ok":
        name = _TALLY_FIELD[verdict]
        setattr(tally, name, getattr(tally, name) + 1)


def best_first(responses: list[Response]) -> list[Response]:
    """Scored responses, highest score first; equal scores keep input order (so runs are stable)."""
    return sorted((r for r in responses if r.score is not None), key=lambda r: (-r.score, r.order))


def all_pairs(responses: list[Response], rules: Rules, rng: random.Random, tally: Tally) -> list[Pair]:
    ranked = best_first(responses)
    pairs = []
    for i, better in enumerate(ranked):
        for worse in ranked[i + 1:]:
            verdict = classify(better, worse, rules)
            _count(tally, verdict)
            if verdict == "ok":
                pairs.append((better, worse))
    return pairs


def best_vs_random(responses: list[Response], rules: Rules, rng: random.Random, tally: Tally) -> list[Pair]:
    """The best against a random one of the others that it beats clearly.

    Others tied with the best (or below the margin, or with the same text) are left out of
    the draw and counted, so a prompt yields a pair whenever any usable rival exists.
    """
    ranked = best_first(responses)
    if len(ranked) < 2:
        return []
    best, eligible = ranked[0], []
    for other in ranked[1:]:
        verdict = classify(best, other, rules)
        _count(tally, verdict)
        if verdict == "ok":
            eligible.append(other)
    return [(best, rng.choice(eligible))] if eligible else []


def best_vs_worst(responses: list[Response], rules: Rules, rng: random.Random, tally: Tally) -> list[Pair]:
    ranked = best_first(responses)
    if len(ranked) < 2:
        return []
    verdict = classify(ranked[0], ranked[-1], rules)
    _count(tally, verdict)
    return [(ranked[0], ranked[-1])] if verdict == "ok" else []


def stronger_vs_weaker(responses: list[Response], rules: Rules, rng: random.Random, tally: Tally) -> list[Pair]:
    """Every response of a stronger model against every response of a weaker one (scores unused)."""
    ranked = []
    for response in responses:
        if response.model in rules.model_rank:
            ranked.append(response)
        else:
            tally.unranked_model += 1
    ranked.sort(key=lambda r: (rules.model_rank[r.model], r.order))
    pairs = []
    for i, stronger in enumerate(ranked):
        for weaker in ranked[i + 1:]:
            if rules.model_rank[weaker.model] == rules.model_rank[stronger.model]:
                continue
            if stronger.text == weaker.text:
                tally.identical += 1
                continue
            pairs.append((stronger, weaker))
    return pairs


STRATEGY_FUNCTIONS: dict[str, Callable[[list[Response], Rules, random.Random, Tally], list[Pair]]] = {
    "all": all_pairs,
    "best-vs-random": best_vs_random,
    "best-vs-worst": best_vs_worst,
    "stronger-vs-weaker": stronger_vs_weaker,
}


def group_by_prompt(responses: list[Response]) -> list[list[Response]]:
    """Responses sharing a prompt, groups in order of first appearance."""
    groups: dict[str, list[Response]] = {}
    for response in responses:
        groups.setdefault(response.prompt_key, []).append(response)
    return list(groups.values())


def _as_completion(prompt: Any, text: str) -> Any:
    """TRL's convention: a conversational prompt takes conversational completions."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def preference_row(chosen: Response, rejected: Response, strategy: str) -> dict[str, Any]:
    """One output row; fields whose value is unknown (no score, no model) are left out."""
    margin = None
    if strategy not in SCORE_FREE and chosen.score is not None and rejected.score is not None:
        margin = chosen.score - rejected.score
    row = {"prompt": chosen.prompt, "chosen": _as_completion(chosen.prompt, chosen.text),
           "rejected": _as_completion(chosen.prompt, rejected.text), "score_chosen": chosen.score,
           "score_rejected": rejected.score, "model_chosen": chosen.model, "model_rejected": rejected.model,
           "margin": margin, "strategy": strategy}
    return {k: v for k, v in row.items() if v is not None}


def build_pairs(responses: list[Response], strategies: list[str], rules: Rules, seed: int = 0
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(output rows, counts). A pair found by two strategies is written once, labelled with the
    first strategy; each strategy's `pairs` count includes it.

    Randomness (best-vs-random) comes from a generator seeded with the seed and the prompt,
    so a prompt's draw does not depend on the other prompts or on the file order.
    """
    groups = group_by_prompt(responses)
    tallies = {name: Tally() for name in strategies}
    rows, seen, duplicates = [], set(), 0
    for group in groups:
        if len(group) < 2:
            continue
        for name in strategies:
            rng = random.Random(f"{seed}\x00{name}\x00{group[0].prompt_key}")
            pairs = STRATEGY_FUNCTIONS[name](group, rules, rng, tallies[name])
            tallies[name].pairs += len(pairs)
            tallies[name].prompts_without_pair += not pairs
            for chosen, rejected in pairs:
                key = (chosen.prompt_key, chosen.text, rejected.text)
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                rows.append(preference_row(chosen, rejected, name))
    counts = {"responses": len(responses), "prompts": len(groups),
              "prompts_with_fewer_than_2_responses": sum(len(g) < 2 for g in groups),
              "pairs": len(rows), "duplicates_across_strategies": duplicates,
              "strategies": {name: tally.as_dict() for name, tally in tallies.items()}}
    return rows, counts


# --------------------------------------------------------------------------- the command

@dataclass
class PairsConfig(DataArgs):
    input: str = help_field("", "responses JSONL: prompt + response + score and/or model, or ranked rows")
    output: str | None = help_field(None, "preference JSONL to write (default: INPUT stem + .pairs.jsonl)")
    strategy: list[str] = help_field(["best-vs-random"], "one or more pair strategies", choices=STRATEGIES)
    score_field: str = help_field("score", "field holding each response's score")
    min_margin: float = help_field(0.0, "keep a pair only if score_chosen - score_rejected >= this")
    tie_threshold: float = help_field(0.0, "a score difference <= this is a tie and gives no pair")
    model_order: list[str] = help_field([], "models from strongest to weakest (stronger-vs-weaker), "
                                            "space- or comma-separated")
    seed: int = help_field(0, "seed for best-vs-random")
    summary: str | None = help_field(None, "summary JSON path (default: OUTPUT with .summary.json)")


def model_ranks(order: list[str]) -> dict[str, int]:
    names = [name.strip() for item in order for name in item.split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise ConfigError("model_order", f"a model is listed twice: {', '.join(names)}")
    return {name: rank for rank, name in enumerate(names)}


def validate(cfg: PairsConfig) -> Rules:
    if not cfg.input:
        raise ConfigError("input", "required: the responses JSONL (--input FILE)")
    if not cfg.strategy:
        raise ConfigError("strategy", f"give at least one of {', '.join(STRATEGIES)}")
    if cfg.tie_threshold < 0:
        raise ConfigError("tie_threshold", "must be 0 or more")
    if cfg.min_margin < 0:
        raise ConfigError("min_margin", "must be 0 or more")
    ranks = model_ranks(cfg.model_order)
    if "stronger-vs-weaker" in cfg.strategy and len(ranks) < 2:
        raise ConfigError("model_order", "stronger-vs-weaker needs at least two models, strongest first "
                                         "(--model-order strong,weak)")
    return Rules(cfg.min_margin, cfg.tie_threshold, ranks)


def default_output(path: str) -> str:
    source = Path(path)
    return str(source.with_name(source.name.removesuffix(".jsonl") + ".pairs.jsonl"))


def run_pairs(cfg: PairsConfig) -> dict[str, Any]:
    rules = validate(cfg)
    strategies = list(dict.fromkeys(cfg.strategy))
    scores_required = any(name not in SCORE_FREE for name in strategies)
    read = read_responses(cfg.input, cfg.score_field, scores_required, **read_kwargs(cfg))
    if "stronger-vs-weaker" in strategies and not any(r.model in rules.model_rank for r in read.responses):
        raise PosttrainError(f"{cfg.input}: no response comes from a model in --model-order "
                             f"({', '.join(rules.model_rank)}); the rows need a 'model' field")
    rows, counts = build_pairs(read.responses, strategies, rules, cfg.seed)
    output = cfg.output or default_output(cfg.input)
    summary_path = cfg.summary or output.removesuffix(".jsonl") + ".summary.json"
    summary = {"input": cfg.input, "output": output, "rows": read.rows, "unscored_responses": read.unscored,
               **counts, "settings": {"strategy": strategies, "score_field": cfg.score_field,
                                      "min_margin": cfg.min_margin, "tie_threshold": cfg.tie_threshold,
                                      "model_order": list(rules.model_rank), "seed": cfg.seed}}
    write_jsonl(output, rows)
    write_json(summary_path, summary)
    for line in summary_lines(summary):
        print(line)
    print(f"wrote {output} and {summary_path}")
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"{summary['responses']} responses to {summary['prompts']} prompts "
             f"({summary['prompts_with_fewer_than_2_responses']} with fewer than 2 responses, "
             f"{summary['unscored_responses']} unscored) -> {summary['pairs']} pairs"]
    for name, tally in summary["strategies"].items():
        dropped = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in tally.items() if k != "pairs" and v)
        lines.append(f"  {name}: {tally['pairs']} pairs" + (f" (dropped/skipped: {dropped})" if dropped else ""))
    if summary["duplicates_across_strategies"]:
        lines.append(f"  {summary['duplicates_across_strategies']} pairs found by more than one strategy "
                     "were written once")
    return lines


def main(argv: list[str]) -> int:
    cfg = parse_config(PairsConfig, argv, prog="posttrain pairs", positional="input",
                       description=__doc__.splitlines()[0])
    run_pairs(cfg)
    return 0
