"""Constitutions for `posttrain cai`: principles, each with a critique and a revision request.

A constitution is a YAML file:

```yaml
name: my-constitution
system: "You are a helpful assistant."   # optional system turn for every model call
principles:
  - name: honesty
    critique: "Which claims in your last response are false or unsupported?"
    revision: "Rewrite your last response so that every claim is accurate."
    rubric: "Prefer the more truthful response."   # optional, for --pair-mode judged
```

`load_constitution("default")` reads the shipped one
(`posttrain/resources/constitutions/default.yaml`); any other value is a path.
Every problem is a one-line `ConfigError` naming the file and the YAML field
(`principles[2].critique`), raised before any model is loaded.

`--principles` chooses which principles a prompt gets in each round:
`all` (in file order), `sample:K` (K distinct principles drawn per prompt and
round), or a comma-separated list of names.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

FIELD = "constitution"
PRINCIPLE_KEYS = {"name", "critique", "revision", "rubric"}
TOP_KEYS = {"name", "description", "system", "principles"}


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str   # the critique request (a user turn)
    revision: str   # the revision request (a user turn)
    rubric: str     # what a judge compares by (defaults to the critique request)


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    system: str | None = None

    def names(self) -> list[str]:
        return [p.name for p in self.principles]


def shipped_constitutions() -> list[str]:
    folder = resources.files("posttrain") / "resources" / "constitutions"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read(name_or_path: str) -> tuple[str, str]:
    """(YAML text, where) for a shipped name or a file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(FIELD, f"file not found: {name_or_path}")
        return path.read_text(encoding="utf-8"), str(path)
    resource = resources.files("posttrain") / "resources" / "constitutions" / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise ConfigError(FIELD, f"unknown constitution '{name_or_path}' (shipped: "
                                 f"{', '.join(shipped_constitutions())}; or give a .yaml path)")
    return resource.read_text(encoding="utf-8"), f"constitution '{name_or_path}'"


def _text(data: dict[str, Any], key: str, where: str, label: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(FIELD, f"{where}: {label}: missing")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(FIELD, f"{where}: {label}: expected non-empty text, got {value!r}")
    return value.strip()


def parse_principle(data: Any, where: str, index: int) -> Principle:
    label = f"principles[{index}]"
    if not isinstance(data, dict):
        raise ConfigError(FIELD, f"{where}: {label}: expected a mapping with name, critique and revision")
    unknown = sorted(set(map(str, data)) - PRINCIPLE_KEYS)
    if unknown:
        raise ConfigError(FIELD, f"{where}: {label}.{unknown[0]}: unknown key "
                                 f"(known: {', '.join(sorted(PRINCIPLE_KEYS))})")
    name = _text(data, "name", where, f"{label}.name")
    if "," in name or ":" in name:
        raise ConfigError(FIELD, f"{where}: {label}.name: must not contain ',' or ':' (got {name!r})")
    label = f"{label}.{{}} ({name})"
    critique = _text(data, "critique", where, label.format("critique"))
    revision = _text(data, "revision", where, label.format("revision"))
    rubric = _text(data, "rubric", where, label.format("rubric"), required=False) or critique
    return Principle(name, critique, revision, rubric)


def parse_constitution(data: Any, where: str) -> Constitution:
    """Validate a constitution mapping (from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(FIELD, f"{where}: expected a mapping with a 'principles' list")
    unknown = sorted(set(map(str, data)) - TOP_KEYS)
    if unknown:
        raise ConfigError(FIELD, f"{where}: {unknown[0]}: unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    items = data.get("principles")
    if not isinstance(items, list) or not items:
        raise ConfigError(FIELD, f"{where}: principles: expected a non-empty list of principles")
    principles = tuple(parse_principle(item, where, i) for i, item in enumerate(items))
    names = [p.name for p in principles]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(FIELD, f"{where}: principles: the name '{repeated[0]}' is used twice")
    system = _text(data, "system", where, "system", required=False)
    return Constitution(str(data.get("name") or where), principles, system)


def load_constitution(name_or_path: str = "default") -> Constitution:
    text, where = _read(name_or_path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(FIELD, f"{where}: invalid YAML{line}") from None
    return parse_constitution(data, where)


# --------------------------------------------------------------------------- choosing principles

@dataclass(frozen=True)
class Selection:
    """How principles are chosen: all of them, K sampled, or the named ones (in the given order)."""

    mode: str                    # "all", "sample" or "names"
    k: int = 0
    names: tuple[str, ...] = ()


def parse_selection(spec: str, constitution: Constitution) -> Selection:
    """`all` | `sample:K` | `name,name,...`, checked against the constitution."""
    spec = spec.strip()
    if spec == "all":
        return Selection("all")
    if spec.startswith("sample:"):
        count = spec.removeprefix("sample:")
        if not count.isdigit() or not 1 <= int(count) <= len(constitution.principles):
            raise ConfigError("principles", f"sample:K needs 1 <= K <= {len(constitution.principles)} "
                                            f"(the constitution's principles), got {spec!r}")
        return Selection("sample", k=int(count))
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in constitution.names()]
    if not names or unknown:
        raise ConfigError("principles", f"expected all, sample:K or principle names; unknown: "
                                        f"{', '.join(unknown) or spec!r} (known: {', '.join(constitution.names())})")
    return Selection("names", names=names)


def choose(constitution: Constitution, selection: Selection, rng: random.Random) -> list[Principle]:
    """The principles one prompt gets in one round (sampled ones in the order drawn)."""
    if selection.mode == "all":
        return list(constitution.principles)
    if selection.mode == "sample":
        return rng.sample(list(constitution.principles), selection.k)
    by_name = {p.name: p for p in constitution.principles}
    return [by_name[n] for n in selection.names]


def plan(constitution: Constitution, selection: Selection, prompts: int, rounds: int, seed: int
         ) -> list[list[list[Principle]]]:
    """plan[prompt][round] = that prompt's principles in that round.

    Each (prompt, round) has its own generator seeded from (seed, prompt index, round), so
    the draw for one prompt does not change when other prompts are added or removed.
    """
    return [[choose(constitution, selection, random.Random(f"{seed}/{i}/{r}")) for r in range(rounds)]
            for i in range(prompts)]
