"""Flat per-command configuration: a dataclass, loadable from YAML, every field a flag.

Each command declares one flat dataclass. `parse_config(Cls, argv)` builds an
argparse parser from its fields (`learning_rate` -> `--learning-rate`), reads an
optional `--config FILE.yaml`, and applies flags over the file (flags win).
Unknown or ill-typed fields are a `ConfigError` naming the field.

Field help text comes from `field(metadata={"help": ...})`; `choices` in metadata
restricts a string field. Supported field types: str, int, float, bool,
`list[str]` / `list[float]` / `list[int]`, and `dict[str, X]`, each optionally `| None`.

How values read on the command line and in YAML:
- a list flag takes several values, and repeating it adds more
  (`--data a.jsonl --data b.jsonl` == `--data a.jsonl b.jsonl`); a flag replaces the YAML
  list as a whole (flags win over the file);
- a YAML string given for a list field is a one-element list (`data: a.jsonl`);
- a mapping flag takes KEY=VALUE pairs (`--reward-weights math=1 length=0.2`);
- `help_field(..., aliases=["old_name"])` accepts other spellings of an option, as flags
  and as YAML keys; the field's own name is the canonical one (the one saved and shown first);
- flags must be spelt in full: `--lr` is an error, not `--learning-rate`.

Every numeric field has a declared range (`Range`), checked once here for every command,
from YAML, flags and pipeline stages alike: a value outside it (or NaN/infinity) is a
`ConfigError` naming the field before anything is written. A field declares its range with
`help_field(..., range=AT_LEAST_1)`; fields that many commands share by name (batch_size,
temperature, seed, ...) take theirs from `FIELD_RANGES` below. tests/test_config_ranges.py
fails when a command's numeric field has neither.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import yaml

from . import trl_names
from .errors import ConfigError, PosttrainError
from .jsonl import atomic_write

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: `low`..`high` (None: unbounded on that side), each end
    included unless `*_open`. Values must always be finite: NaN and infinity are never accepted."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why `value` is outside the range, or None when it is inside."""
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self}, got {value:g}" if too_low or too_high else None

    def __str__(self) -> str:
        """In words where they are plain ("0 or more", "at least 1", "between 0 and 1"), else an interval."""
        low, high = self.low, self.high
        if low is not None and high is not None:
            if self.low_open == self.high_open:
                return f"{'strictly ' if self.low_open else ''}between {low:g} and {high:g}"
            return f"in {'(' if self.low_open else '['}{low:g}, {high:g}{')' if self.high_open else ']'}"
        if low is not None:
            return f"more than {low:g}" if self.low_open else "0 or more" if low == 0 else f"at least {low:g}"
        if high is not None:
            return f"less than {high:g}" if self.high_open else f"at most {high:g}"
        return "a finite number"


# The usual ranges, by what they mean.
ANY_NUMBER = Range()  # any finite value (score thresholds, reward weights)
AT_LEAST_0 = Range(0)  # counts where 0 means "off" or "all", seeds, coefficients
AT_LEAST_1 = Range(1)  # sizes and counts that must not be empty
POSITIVE = Range(0, low_open=True)  # learning rates, temperatures of a loss, timeouts
FRACTION = Range(0, 1)  # shares and ratios, both ends allowed
FRACTION_BELOW_1 = Range(0, 1, high_open=True)  # a held-out share, a dropout probability
PROBABILITY_OPEN = Range(0, 1, low_open=True, high_open=True)  # confidence levels, alpha, power
UP_TO_1 = Range(0, 1, low_open=True)  # top_p, similarity thresholds

# Ranges of fields that several commands declare under the same name (a field's own
# `help_field(range=...)` wins). A key `ClassName.field` applies to that class and its subclasses.
FIELD_RANGES: dict[str, Range] = {
    # sizes and counts
    **dict.fromkeys(["batch_size", "micro_batch_size", "generation_batch_size", "train_batch_size", "num_samples",
                     "num_minibatches", "ppo_epochs", "prompts_per_step", "iterations", "rounds", "max_new_tokens",
                     "attacker_max_new_tokens", "judge_max_new_tokens", "concurrency", "judge_concurrency",
                     "chunk_size", "k", "kl_horizon", "looks", "min_labels", "nnodes", "shingle", "max_length",
                     "max_words", "bertscore_layers"], AT_LEAST_1),
    **dict.fromkeys(["seed", "limit", "benign_limit", "eval_limit", "eval_every", "critique_max_new_tokens",
                     "eval_max_new_tokens", "examples", "max_retries", "judge_max_retries", "train_max_steps",
                     "mix_total", "nproc", "node_rank", "top_k", "min_words", "ngram",
                     "max_line_bytes"], AT_LEAST_0),
    "RLArgs.max_steps": AT_LEAST_1,  # rollout steps; offline recipes take 0 as "from epochs" (train/args.py)
    "ScoreConfig.max_length": AT_LEAST_0,  # 0: what the model was trained with
    "FilterConfig.ngram": AT_LEAST_1,
    "bootstrap_resamples": Range(100),
    "num_perm": Range(8),
    "port": Range(1, 65535),
    "main_port": Range(0, 65535),  # 0: a free port
    # optimisation and losses
    **dict.fromkeys(["train_learning_rate", "beta", "dpo_beta", "kl_target", "epsilon", "epsilon_high",
                     "train_epochs", "desirable_weight", "undesirable_weight"], POSITIVE),
    **dict.fromkeys(["policy_coef", "dpo_coef", "bc_coef"], AT_LEAST_0),  # weights of a combined objective
    "bc_batch_size": AT_LEAST_1,
    "value_warmup_steps": AT_LEAST_0,
    **dict.fromkeys(["value_learning_rate", "orpo_lambda", "rpo_alpha", "simpo_gamma", "kl_coef", "entropy_coef",
                     "vf_coef", "cliprange_value", "missing_eos_penalty", "loss_weights", "data_weights",
                     "mixing_temperature"], AT_LEAST_0),
    "label_smoothing": Range(0, 0.5),
    "gamma": FRACTION,
    "lam": FRACTION,
    "reward_weights": ANY_NUMBER,  # a negative weight is a penalty
    # sampling
    **dict.fromkeys(["temperature", "attacker_temperature"], AT_LEAST_0),
    "top_p": UP_TO_1,
    # statistics and thresholds
    **dict.fromkeys(["confidence", "alpha", "power"], PROBABILITY_OPEN),
    "mde": POSITIVE,
    "eval_fraction": FRACTION_BELOW_1,
    "threshold": UP_TO_1,  # Jaccard similarity
    "BestOfNConfig.threshold": ANY_NUMBER,  # a reward score
    **dict.fromkeys(["tie_threshold", "min_margin", "pair_min_margin"], AT_LEAST_0),
    **dict.fromkeys(["max_echo", "max_non_alpha", "max_repetition"], FRACTION),
    **dict.fromkeys(["min_score", "max_score"], ANY_NUMBER),
    # time
    **dict.fromkeys(["backoff", "backoff_max"], AT_LEAST_0),
    **dict.fromkeys(["timeout", "judge_timeout", "lease_minutes"], POSITIVE),
}


def help_field(default: Any, help: str, choices: Sequence[str] | None = None,
               aliases: Sequence[str] = (), range: Range | None = None,
               check: Callable[[Any], None] | None = None, **kwargs: Any) -> Any:
    """A dataclass field with help text (and optional choices), for compact configs.

    `aliases` are other names of the same option (an older spelling, or what another tool
    calls it), accepted as `--flag` and as a YAML key; they are listed in the help.
    `range`: the values a numeric field accepts (else `FIELD_RANGES` decides).
    `check(value)`: raises ConfigError when the value cannot work here (e.g. a tracker that is
    not installed); run by `parse_config`, before any data or model is loaded.
    """
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    if range is not None:
        metadata["range"] = range
    if aliases:
        metadata["aliases"] = list(aliases)
    if check is not None:
        metadata["check"] = check
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); `X` -> (X, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_aliases(cls: type) -> dict[str, str]:
    """{alias: field name} for every `aliases=` of `cls`'s fields."""
    return {alias: f.name for f in dataclasses.fields(cls) for alias in f.metadata.get("aliases", ())}


def canonical_name(cls: type, key: str) -> str:
    """A YAML key or flag name (`max-tokens`, `max_tokens`) -> the field it sets (`max_new_tokens`)."""
    name = str(key).replace("-", "_")
    return field_aliases(cls).get(name, name)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _pairs(name: str, items: list[str], typed: bool, source: str | None) -> dict[str, Any]:
    """`["math=1", "rm:runs/rm=0.5"]` (a mapping flag's values) -> {"math": "1", "rm:runs/rm": "0.5"}.

    Split at the last `=` (keys such as reward specs may hold one; values are short).
    Without a declared value type, a value is read as YAML (`loss=[ipo]` -> a list).
    """
    pairs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        if not sep or not key:
            raise ConfigError(name, f"expected KEY=VALUE, got {item!r}", source)
        if key in pairs:  # `--columns prompt=a prompt=b`: the last one would silently win
            raise ConfigError(name, f"{key!r} is given twice ({key}={pairs[key]} and {item})", source)
        try:
            pairs[key] = value if typed else yaml.safe_load(value)
        except yaml.YAMLError:
            pairs[key] = value
    return pairs


def coerce(name: str, tp: Any, value: Any, source: str | None = None) -> Any:
    """Check/convert one value to the field's type; a mismatch names the field."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(name, "must not be empty", source)
    if typing.get_origin(base) is list:
        (item_type,) = typing.get_args(base) or (str,)
        items = value if isinstance(value, list) else [value]
        return [coerce(name, item_type, item, source) for item in items]
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(name, f"expected true or false, got {value!r}", source)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(name, f"expected an integer, got {value!r}", source)
        try:
            return int(value)
        except ValueError:
            raise ConfigError(name, f"expected an integer, got {value!r}", source) from None
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(name, f"expected a number, got {value!r}", source)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected a number, got {value!r}", source) from None
    if base is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(name, f"expected a string, got {value!r}", source)
        return str(value)
    if base is dict or typing.get_origin(base) is dict:
        _, value_type = typing.get_args(base) or (str, Any)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = _pairs(name, value, value_type is not Any, source)  # from the command line: KEY=VALUE ...
        if not isinstance(value, dict):
            raise ConfigError(name, f"expected a mapping, got {value!r}", source)
        if value_type is Any:
            return dict(value)
        return {key: coerce(f"{name}.{key}", value_type, item, source) for key, item in value.items()}
    return value


def validate_choices(cfg: Any, source: str | None = None) -> None:
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None:
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v not in choices:
                    raise ConfigError(f.name, f"{v!r} is not one of {', '.join(map(str, choices))}", source)


def is_numeric(tp: Any) -> bool:
    """int or float, alone, optional, or as the items of a list or the values of a dict."""
    base, _ = _unwrap_optional(tp)
    if typing.get_origin(base) is list:
        base = (typing.get_args(base) or (str,))[0]
    elif typing.get_origin(base) is dict:
        base = (typing.get_args(base) or (str, Any))[1]
    return base in (int, float)


def field_range(cls: type, f: dataclasses.Field) -> Range | None:
    """The declared range of field `f` of config class `cls` (None: none declared).

    The nearest class along `cls`'s bases decides, so a subclass that redeclares a field
    for another default or help text (`SFTConfig.learning_rate`) keeps its base's range.
    """
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(f.name)
        if declared is not None and "range" in declared.metadata:
            return declared.metadata["range"]
        if f"{klass.__name__}.{f.name}" in FIELD_RANGES:
            return FIELD_RANGES[f"{klass.__name__}.{f.name}"]
    return FIELD_RANGES.get(f.name)


def validate_ranges(cfg: Any, source: str | None = None, from_flags: Sequence[str] = ()) -> None:
    """Check every numeric field against its range; NaN and infinity are refused even without one.

    `source` names the YAML file the values came from, except for the fields in `from_flags`.
    """
    types_by_name = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        if not is_numeric(types_by_name[f.name]):
            continue
        value = getattr(cfg, f.name)
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        allowed = field_range(type(cfg), f) or ANY_NUMBER
        for item in values:
            if isinstance(item, (int, float)) and (problem := allowed.problem(item)):
                raise ConfigError(f.name, problem, None if f.name in from_flags else source)


def load_yaml_mapping(path: str) -> dict[str, Any]:
    if not Path(path).exists():
        raise ConfigError("config", f"file not found: {path}")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("config", f"{path}: invalid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path}: expected a mapping of field: value")
    return data


def from_mapping(cls: type[T], data: dict[str, Any], source: str | None = None, check_ranges: bool = True) -> T:
    """Build `cls` from a mapping (YAML keys may use - or _); unknown keys and values out of
    their field's range are errors."""
    types_by_name = _field_types(cls)
    values: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    problems: list[ConfigError] = []
    for key, value in data.items():
        name = canonical_name(cls, key)
        if name == "report_to" and value in ("none", ["none"]):
            value = []  # TRL's spelling of "no tracker"
        if name in types_by_name:
            settings = {name: value}
        else:  # a TRL / TrainingArguments key (`num_train_epochs: 3`, `bf16: true`)?
            try:
                settings = trl_names.translate(trl_names.familiar_name(key), value, set(types_by_name), source)
            except ConfigError as exc:  # no equivalent: reported with every other such key, below
                problems.append(exc)
                continue
            if settings is None:
                problems.append(ConfigError(str(key), f"unknown field (known: {', '.join(sorted(types_by_name))})",
                                            source))
                continue
        for name, value in settings.items():
            if name in values:
                raise ConfigError(name, f"given twice, as '{spelt[name]}' and as '{key}'", source)
            values[name], spelt[name] = coerce(name, types_by_name[name], value, source), str(key)
    raise_all(problems, source)
    cfg = cls(**values)
    validate_choices(cfg, source)
    if check_ranges:
        validate_ranges(cfg, source)
    return cfg


def raise_all(problems: list[ConfigError], source: str | None = None) -> None:
    """Raise the first ConfigError, naming the fields of the others too (a TRL config with several
    options posttrain lacks is fixed in one go, not one run per option)."""
    if not problems:
        return
    first, rest = problems[0], problems[1:]
    if not rest:
        raise first
    others = "; ".join(f"'{e.field}': {str(e).split(f'config field {e.field!r}: ', 1)[-1]}" for e in rest)
    raise ConfigError(first.field, f"{str(first).split(f'config field {first.field!r}: ', 1)[-1]} "
                      f"(and {len(rest)} more: {others})", source) from None


def to_mapping(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting.

    Abbreviations are off: with them `--lr` would silently mean `--learning-rate`, and a
    typo that happens to be a prefix of some flag would set an option nobody meant to set.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # Read `--learning-rate -1e-4` as a (negative) value, as argparse already does for `-1` and
        # `-0.5`, so that it meets the field's range check instead of "expected one argument".
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> typing.NoReturn:  # pragma: no cover - exercised via CLI
        # Not a ConfigError: an unknown flag or a missing value is about the command line, not a field.
        raise PosttrainError(message + self._suggestion(message))

    # Spellings users bring from TRL / transformers.TrainingArguments and other tools.
    # (TRL's full names, --num_train_epochs and the like, are translated before parsing: trl_names.py.)
    FAMILIAR_NAMES = {"--lr": "--learning-rate", "--bs": "--batch-size"}

    def _suggestion(self, message: str) -> str:
        """' (did you mean --learning-rate?)' for an unknown flag that starts or resembles a known one."""
        if not message.startswith("unrecognized arguments"):
            return ""
        known = [s for s in self._option_string_actions if s.startswith("--")]
        for word in message.split(":", 1)[1].split():
            flag = word.split("=", 1)[0]
            if not flag.startswith("--"):
                continue
            familiar = self.FAMILIAR_NAMES.get(flag.replace("_", "-"))
            close = [familiar] if familiar in known else []
            close += [s for s in difflib.get_close_matches(flag, known, n=2, cutoff=0.7) if s not in close]
            close += [s for s in sorted(known) if s.startswith(flag) and s not in close]
            if close:
                return f" (did you mean {' or '.join(close[:3])}?)"
        return ""


def build_parser(cls: type, prog: str, description: str = "") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file; flags override it")
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(_field_types(cls)[f.name])
        aliases = [_flag(alias) for alias in f.metadata.get("aliases", ())]
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        choices = f.metadata.get("choices")
        shown = f" [{'|'.join(map(str, choices))}]" if choices else ""  # list fields too (--loss, --suite)
        # A help text that already explains its default is not followed by the raw value (often None).
        suffix = "" if "(default" in help_text else f" (default: {default!r})"
        also = f" (also {', '.join(aliases)})" if aliases else ""
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:  # repeats add up: --data a --data b == --data a b
            kwargs.update(action="extend", nargs="+", metavar="VALUE")
        elif tp is dict or typing.get_origin(tp) is dict:
            kwargs.update(action="extend", nargs="+", metavar="KEY=VALUE")
        else:
            kwargs["metavar"] = f.name.upper()
        parser.add_argument(_flag(f.name), help=f"{help_text}{shown}{suffix}{also}", **kwargs)
        for alias in aliases:  # same destination; listed in the canonical flag's help only
            parser.add_argument(alias, help=argparse.SUPPRESS, **kwargs)
    return parser


def _bool_word(token: str | None) -> bool:
    return token is not None and token.lower() in trl_names.BOOL_WORDS


def _value_tokens(name: str, value: Any, types_by_name: dict[str, Any]) -> list[str]:
    """One field setting as command-line tokens: `--packing`, `--no-packing`, `--data a b`, `--seed 3`."""
    tp, _ = _unwrap_optional(types_by_name[name])
    if tp is bool:
        return [_flag(name) if trl_names._truth(value) else "--no-" + name.replace("_", "-")]
    if isinstance(value, list):
        return [_flag(name), *map(str, value)] if value else []
    return [_flag(name), str(value)]


def normalize_argv(cls: type, argv: Sequence[str]) -> list[str]:
    """Rewrite the spellings other tools use into posttrain's flags, before argparse reads them.

    - our own options spelt with underscores: `--learning_rate 1e-4` -> `--learning-rate 1e-4`;
    - a bool option with a value, as TRL writes it: `--packing True` -> `--packing`,
      `--gradient_checkpointing false` -> `--no-gradient-checkpointing`;
    - TRL / TrainingArguments names (trl_names.py): `--num_train_epochs 3` -> `--epochs 3`,
      `--bf16` -> `--mixed-precision bf16`; one without an equivalent is a one-line error.
    Anything else is left for argparse (which reports unknown flags).
    """
    types_by_name = _field_types(cls)
    aliases = field_aliases(cls)
    tokens = list(argv)
    out: list[str] = []
    problems: list[ConfigError] = []
    i = 0

    def take_value(inline: str | None, boolean: bool) -> str | None:
        nonlocal i
        if inline is not None:
            return inline
        following = tokens[i] if i < len(tokens) else None
        if following is not None and not following.startswith("--") and (not boolean or _bool_word(following)):
            i += 1
            return following
        return None

    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or token == "--":
            out.append(token)
            continue
        flag, eq, rest = token.partition("=")
        inline = rest if eq else None
        name = trl_names.familiar_name(flag)
        negated = name.startswith("no_") and aliases.get(name[3:], name[3:]) in types_by_name
        field_name = aliases.get(name, name)
        if field_name in types_by_name or negated or name == "config":
            tp = _unwrap_optional(types_by_name[field_name])[0] if field_name in types_by_name else None
            if tp is bool and not negated:
                value = take_value(inline, boolean=True)
                out += _value_tokens(field_name, True if value is None else value, types_by_name)
            elif field_name == "report_to" and (inline or (tokens[i] if i < len(tokens) else "")) == "none":
                i += 0 if inline else 1  # TRL's `--report_to none`: no tracker (posttrain's default)
            else:
                out.append("--" + name.replace("_", "-") + (eq + rest if eq else ""))
            continue
        if not trl_names.is_familiar(name):
            out.append(token)
            continue
        target = trl_names.RENAMES.get(name)
        target_type = _unwrap_optional(types_by_name[target])[0] if target in types_by_name else None
        if target is not None and target_type is not bool:
            # Same option, same values: rename the flag, and leave its values where they are
            # (a list flag may take several).
            out.append(_flag(target) + (eq + rest if eq else "") if target in types_by_name else token)
            continue
        boolean = target_type is bool or name in trl_names.BOOLEAN_NAMES
        if name == "report_to" and inline is None:  # several trackers: --report_to wandb tensorboard
            value: Any = []
            while i < len(tokens) and not tokens[i].startswith("--"):
                value.append(tokens[i])
                i += 1
        else:
            value = take_value(inline, boolean)
        try:
            settings = trl_names.translate(name, value, set(types_by_name))
        except ConfigError as exc:  # no equivalent: reported together with any other, below
            problems.append(exc)
            continue
        if settings is None:  # not an option of this command: argparse reports it
            out.append(token)
            if value is not None and inline is None:
                out += value if isinstance(value, list) else [value]
            continue
        for setting, setting_value in settings.items():
            out += _value_tokens(setting, setting_value, types_by_name)
    raise_all(problems)
    return out


def parse_config(cls: type[T], argv: Sequence[str], prog: str = "posttrain", description: str = "",
                 positional: str | None = None) -> T:
    """Parse `argv` into `cls`: defaults < YAML (`--config`) < flags.

    `positional` names one field that may also be given as a bare argument
    (e.g. `posttrain data check FILE`).
    """
    parser = build_parser(cls, prog, description)
    if positional:
        parser.add_argument("_positional", nargs="*", metavar=positional.upper())
    args = vars(parser.parse_args(normalize_argv(cls, argv)))
    data: dict[str, Any] = {}
    source = None
    if args.get("config"):
        source = args["config"]
        data.update(load_yaml_mapping(source))
    bare = args.pop("_positional", None)
    args.pop("config", None)
    if positional and bare:
        tp, _ = _unwrap_optional(_field_types(cls)[positional])
        args[positional] = bare if typing.get_origin(tp) is list else " ".join(bare)
    cfg = from_mapping(cls, data, source, check_ranges=False)  # a flag may still replace a YAML value
    flag_values = {k: coerce(k, _field_types(cls)[k], v) for k, v in args.items()}
    cfg = dataclasses.replace(cfg, **flag_values)
    validate_choices(cfg)
    validate_ranges(cfg, source, from_flags=list(flag_values))
    for f in dataclasses.fields(cfg):
        if "check" in f.metadata:
            f.metadata["check"](getattr(cfg, f.name))
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), so a run can be reproduced."""

    with atomic_write(path) as handle:
        yaml.safe_dump(to_mapping(cfg), handle, sort_keys=False)
