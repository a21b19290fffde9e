"""Editable judge prompt templates.

A template is a small YAML file:

```yaml
name: pairwise
mode: pairwise            # or pointwise
system: "You are ..."     # optional system turn
user: "... {question} ... {answer_a} ... {answer_b} ..."
rubric: "..."             # default text for {rubric}; `--rubric` replaces it
min_score: 1              # pointwise only: the score range the parser accepts
max_score: 10
```

Placeholders use Python `str.format` syntax; write a literal brace as `{{` or `}}`.
Shipped defaults live in `posttrain/resources/judge_templates/`; `load_template`
takes one of their names or a path to your own file. An unknown or missing
placeholder is a one-line `ConfigError` when the template is loaded, not a
`KeyError` halfway through a run.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

Message = dict[str, str]

# Which placeholders each mode may use, and which it must use (a pairwise prompt that
# never shows answer B cannot be judged).
ALLOWED = {
    "pairwise": {"question", "answer_a", "answer_b", "rubric"},
    "pointwise": {"question", "answer", "rubric", "min_score", "max_score"},
}
REQUIRED = {"pairwise": {"answer_a", "answer_b"}, "pointwise": {"answer"}}
DEFAULT_TEMPLATE = {"pairwise": "pairwise", "pointwise": "pointwise"}


@dataclass(frozen=True)
class JudgeTemplate:
    """A parsed, validated template. `render_*` return chat messages for a backend."""

    name: str
    mode: str
    user: str
    system: str | None = None
    rubric: str = ""
    min_score: float = 1
    max_score: float = 10

    def render_pairwise(self, question: str, answer_a: str, answer_b: str, rubric: str | None = None) -> list[Message]:
        return self._render(question=question, answer_a=answer_a, answer_b=answer_b,
                            rubric=self.rubric if rubric is None else rubric)

    def render_pointwise(self, question: str, answer: str, rubric: str | None = None) -> list[Message]:
        return self._render(question=question, answer=answer, rubric=self.rubric if rubric is None else rubric,
                            min_score=_number_text(self.min_score), max_score=_number_text(self.max_score))

    def _render(self, **values: str) -> list[Message]:
        messages = [{"role": "system", "content": self.system.format(**values).strip()}] if self.system else []
        return messages + [{"role": "user", "content": self.user.format(**values).strip()}]


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def shipped_templates() -> list[str]:
    """Names of the templates shipped with posttrain (file stems)."""
    folder = resources.files("posttrain") / "resources" / "judge_templates"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_template_text(name_or_path: str) -> tuple[str, str]:
    """(text, where) for a shipped template name or a file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError("template", f"file not found: {name_or_path}")
        return path.read_text(encoding="utf-8"), str(path)
    resource = resources.files("posttrain") / "resources" / "judge_templates" / f"{name_or_path}.yaml"
    if not resource.is_file():
        known = ", ".join(shipped_templates())
        raise ConfigError("template", f"unknown template '{name_or_path}' (shipped: {known}; or give a .yaml path)")
    return resource.read_text(encoding="utf-8"), f"template '{name_or_path}'"


def placeholders(text: str, where: str) -> set[str]:
    """The `{names}` used in a format string; a malformed one (`{` unclosed) is an error."""
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as exc:
        raise ConfigError("template", f"{where}: bad placeholder syntax ({exc}); write literal braces as {{{{ and }}}}") from None
    # `{answer.x}` or `{answer[0]}` would index into a string: not supported, report the base name.
    return {name.split(".")[0].split("[")[0] for name in names}


def parse_template(data: Any, where: str, mode: str | None = None) -> JudgeTemplate:
    """Validate a template mapping (from YAML) and build a `JudgeTemplate`."""
    if not isinstance(data, dict):
        raise ConfigError("template", f"{where}: expected a mapping with at least 'mode' and 'user'")
    known_keys = {"name", "mode", "description", "system", "user", "rubric", "min_score", "max_score"}
    unknown = sorted(set(map(str, data)) - known_keys)
    if unknown:
        raise ConfigError("template", f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known_keys))})")
    template_mode = data.get("mode", mode)
    if template_mode not in ALLOWED:
        raise ConfigError("template", f"{where}: 'mode' must be pairwise or pointwise, got {template_mode!r}")
    if mode is not None and template_mode != mode:
        raise ConfigError("template", f"{where}: is a {template_mode} template, but --mode is {mode}")
    if not isinstance(data.get("user"), str) or not data["user"].strip():
        raise ConfigError("template", f"{where}: 'user' (the prompt text) is missing or empty")
    used: set[str] = set()
    for key in ("system", "user"):
        if data.get(key) is None:
            continue
        if not isinstance(data[key], str):
            raise ConfigError("template", f"{where}: '{key}' must be text")
        names = placeholders(data[key], f"{where} '{key}'")
        bad = sorted(names - ALLOWED[template_mode])
        if bad:
            allowed = ", ".join("{" + n + "}" for n in sorted(ALLOWED[template_mode]))
            raise ConfigError("template", f"{where}: unknown placeholder {{{bad[0]}}} in '{key}' (allowed: {allowed})")
        used |= names
    missing = sorted(REQUIRED[template_mode] - used)
    if missing:
        raise ConfigError("template", f"{where}: the prompt never shows {{{missing[0]}}}")
    try:
        low, high = float(data.get("min_score", 1)), float(data.get("max_score", 10))
    except (TypeError, ValueError):
        raise ConfigError("template", f"{where}: min_score and max_score must be numbers") from None
    if template_mode == "pointwise" and not low < high:
        raise ConfigError("template", f"{where}: min_score ({low}) must be below max_score ({high})")
    return JudgeTemplate(name=str(data.get("name", where)), mode=template_mode, user=data["user"],
                         system=data.get("system"), rubric=str(data.get("rubric") or "").strip(),
                         min_score=low, max_score=high)


def load_template(name_or_path: str | None, mode: str) -> JudgeTemplate:
    """Load a shipped template by name, or a YAML file by path; `None` picks the mode's default."""
    text, where = _read_template_text(name_or_path or DEFAULT_TEMPLATE[mode])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("template", f"{where}: invalid YAML{line}") from None
    return parse_template(data, where, mode)
