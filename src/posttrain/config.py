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
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from .errors import ConfigError, PosttrainError

T = TypeVar("T")


def help_field(default: Any, help: str, choices: Sequence[str] | None = None,
               aliases: Sequence[str] = (), **kwargs: Any) -> Any:
    """A dataclass field with help text (and optional choices), for compact configs.

    `aliases` are other names of the same option (an older spelling, or what another tool
    calls it), accepted as `--flag` and as a YAML key; they are listed in the help.
    """
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    if aliases:
        metadata["aliases"] = list(aliases)
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


def from_mapping(cls: type[T], data: dict[str, Any], source: str | None = None) -> T:
    """Build `cls` from a mapping (YAML keys may use - or _); unknown keys are errors."""
    types_by_name = _field_types(cls)
    values: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for key, value in data.items():
        name = canonical_name(cls, key)
        if name not in types_by_name:
            raise ConfigError(str(key), f"unknown field (known: {', '.join(sorted(types_by_name))})", source)
        if name in values:
            raise ConfigError(name, f"given twice, as '{spelt[name]}' and as '{key}'", source)
        values[name], spelt[name] = coerce(name, types_by_name[name], value, source), str(key)
    cfg = cls(**values)
    validate_choices(cfg, source)
    return cfg


def to_mapping(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting.

    Abbreviations are off: with them `--lr` would silently mean `--learning-rate`, and a
    typo that happens to be a prefix of some flag would set an option nobody meant to set.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # pragma: no cover - exercised via CLI
        # Not a ConfigError: an unknown flag or a missing value is about the command line, not a field.
        raise PosttrainError(message + self._suggestion(message))

    # Spellings users bring from TRL / transformers.TrainingArguments and other tools.
    FAMILIAR_NAMES = {"--lr": "--learning-rate", "--bs": "--batch-size",
                      "--per-device-train-batch-size": "--batch-size", "--num-train-epochs": "--epochs",
                      "--gradient-accumulation-steps": "--grad-accum", "--model-name-or-path": "--model"}

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


def parse_config(cls: type[T], argv: Sequence[str], prog: str = "posttrain", description: str = "",
                 positional: str | None = None) -> T:
    """Parse `argv` into `cls`: defaults < YAML (`--config`) < flags.

    `positional` names one field that may also be given as a bare argument
    (e.g. `posttrain data check FILE`).
    """
    parser = build_parser(cls, prog, description)
    if positional:
        parser.add_argument("_positional", nargs="*", metavar=positional.upper())
    args = vars(parser.parse_args(list(argv)))
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
    cfg = from_mapping(cls, data, source)
    flag_values = {k: coerce(k, _field_types(cls)[k], v) for k, v in args.items()}
    cfg = dataclasses.replace(cfg, **flag_values)
    validate_choices(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), so a run can be reproduced."""
    from .jsonl import atomic_write

    with atomic_write(path) as handle:
        yaml.safe_dump(to_mapping(cfg), handle, sort_keys=False)
