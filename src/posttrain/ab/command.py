"""`posttrain ab LOG [LOG ...]`: analyse A/B feedback logs and recommend ship / keep / collect more data."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from ..config import help_field, parse_config
from ..errors import ConfigError
from ..evaluate.results import json_safe
from ..jsonl import append_jsonl, write_json
from .analysis import METRICS, Settings, analyze
from .report import format_report
from .schema import read_feedback, split_log_spec
from .sequential import CORRECTIONS


@dataclass
class ABConfig:
    logs: list[str] = help_field([], "feedback logs (JSONL); NAME=PATH fills in variant NAME for rows without one")
    control: str | None = help_field(None, "the control variant (default: 'A' if present, else the first by name)")
    primary: str | None = help_field(None, "the primary metric the decision rests on (default: the first with data "
                                           "among thumbs, rating, success, preference)", choices=METRICS)
    guardrails: list[str] | None = help_field(None, "metrics that must not get significantly worse "
                                                    "(default: every other metric with data)", choices=METRICS)
    alpha: float = help_field(0.05, "significance level (family-wise over treatments and looks)")
    power: float = help_field(0.8, "power for the sample-size and detectable-effect calculations")
    mde: float | None = help_field(None, "smallest improvement worth detecting, in the primary metric's units "
                                         "(default: 0.02 for rates, 0.1 rating points, 0.05 preference share)")
    looks: int = help_field(1, "how many times these data have been analysed, this time included "
                               "(look rows in the log also count)")
    correction: str = help_field("obrien-fleming", "correction for repeated looks", choices=CORRECTIONS)
    bootstrap_resamples: int = help_field(2000, "bootstrap resamples for rating intervals")
    seed: int = help_field(0, "random seed for the bootstrap")
    output: str | None = help_field(None, "write the full results JSON here")
    record_look: bool = help_field(False, "append a {\"event\": \"look\"} row to the first log after analysing")


def validate(cfg: ABConfig) -> None:
    if not cfg.logs:
        raise ConfigError("logs", "give at least one feedback log")
    if not 0 < cfg.alpha < 1:
        raise ConfigError("alpha", f"must be between 0 and 1, got {cfg.alpha}")
    if not 0 < cfg.power < 1:
        raise ConfigError("power", f"must be between 0 and 1, got {cfg.power}")
    if cfg.mde is not None and cfg.mde <= 0:
        raise ConfigError("mde", f"must be positive, got {cfg.mde}")
    if cfg.looks < 1:
        raise ConfigError("looks", f"must be at least 1, got {cfg.looks}")
    if cfg.bootstrap_resamples < 100:
        raise ConfigError("bootstrap_resamples", f"use at least 100, got {cfg.bootstrap_resamples}")


def run(cfg: ABConfig) -> dict:
    """Library entry point: read the logs, analyse, write `output` if set; returns the results dict."""
    validate(cfg)
    log = read_feedback(cfg.logs)
    settings = Settings(control=cfg.control, primary=cfg.primary, guardrails=cfg.guardrails, alpha=cfg.alpha,
                        power=cfg.power, mde=cfg.mde, looks=cfg.looks, correction=cfg.correction,
                        n_resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    result = analyze(log, settings)
    if cfg.output:
        write_json(cfg.output, json_safe(result))
    if cfg.record_look:
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        append_jsonl(split_log_spec(cfg.logs[0])[1], {"event": "look", "timestamp": stamp})
    return result


def main(argv: list[str]) -> int:
    cfg = parse_config(ABConfig, argv, prog="posttrain ab", description=__doc__, positional="logs")
    result = run(cfg)
    print(format_report(result))
    if cfg.output:
        print(f"\nresults written to {cfg.output}")
    return 0
