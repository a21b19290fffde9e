"""Write docs/cli.md, the command reference, from the code.

    .venv/bin/python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    .venv/bin/python scripts/gen_cli_docs.py --check    # exit 1 if docs/cli.md is stale

Every command in `posttrain.cli.COMMANDS` gets a section: its one-line help, a synopsis,
a link to the guide page that documents it, and a table of every option with its type,
default, choices and help text. New commands appear as soon as they are in COMMANDS.

How the options are found: each command's `main(argv)` builds its parser with
`posttrain.config.parse_config`. We call `main([])` with argparse's `parse_known_args`
replaced by a function that raises, so nothing runs past the parsing step, and record the
config dataclass that `build_parser` was given. Types, defaults, choices and help come
from the dataclass fields (exact, unlike a rendering of `--help`). A command that builds
a plain argparse parser is rendered from the parser's actions; one that uses no argparse
at all is rendered from its captured `--help` output.

Options that several commands inherit from one base dataclass (`TrainArgs`, `ModelArgs`,
`RLArgs`) are listed once, in "Shared options"; a command's own table lists its own fields
and the shared ones it overrides (another default or help text).

Guide pages are discovered in docs/*.md: a page documents `posttrain CMD` if a heading names
it, a table row starts with it, or a section opens with a code block whose first line runs
it. `tests/test_docs.py` uses the same discovery to check that every command has one.

Output is deterministic: it depends only on COMMANDS, the config classes and the docs'
headings, so tests/test_docs.py can regenerate it in memory and compare.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OUTPUT = DOCS / "cli.md"
# Overview pages mention every command; they are not any command's guide.
OVERVIEW_PAGES = {"README.md", "cli.md", "getting-started.md", "extending.md", "comparison.md"}
SKIPPED_ACTIONS = {"help", "config"}


# --------------------------------------------------------------------------- capturing a parser


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


@dataclass
class CommandSpec:
    name: str
    help: str
    target: str
    parser: argparse.ArgumentParser | None = None
    config: type | None = None  # the dataclass given to build_parser
    help_text: str | None = None  # captured --help, when neither of the above is known


@contextlib.contextmanager
def _intercept_parsing():
    """Record the dataclass handed to `build_parser`; stop at the first parse."""
    import posttrain.config as config_module

    seen: dict[str, Any] = {}
    real_build = config_module.build_parser

    def build_parser(cls, *args, **kwargs):
        seen.setdefault("config", cls)
        return real_build(cls, *args, **kwargs)

    def parse_known_args(self, *args, **kwargs):
        raise _Captured(self)

    real_parse = argparse.ArgumentParser.parse_known_args
    config_module.build_parser = build_parser
    argparse.ArgumentParser.parse_known_args = parse_known_args
    try:
        yield seen
    finally:
        config_module.build_parser = real_build
        argparse.ArgumentParser.parse_known_args = real_parse


def _help_output(function) -> str:
    """`--help` of a command that does not use argparse (fallback), at a fixed width."""
    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            try:
                function(["--help"])
            except SystemExit:
                pass
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue().strip()


def command_spec(name: str) -> CommandSpec:
    """Import one command and capture its parser (and config dataclass) without running it."""
    from posttrain.cli import COMMANDS

    target, help_line = COMMANDS[name]
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    spec = CommandSpec(name, help_line, target)
    with _intercept_parsing() as seen:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                function([])
        except _Captured as captured:
            spec.parser = captured.parser
            spec.config = seen.get("config")
        except BaseException:  # noqa: BLE001 - a command that validates before parsing
            pass
    if spec.parser is None:
        spec.help_text = _help_output(function)
    return spec


def all_specs() -> list[CommandSpec]:
    from posttrain.cli import COMMANDS

    return [command_spec(name) for name in sorted(COMMANDS)]


# --------------------------------------------------------------------------- formatting values


def type_name(tp: Any) -> str:
    """`int`, `list[str]`, `str | None` ... as written in the dataclass."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def value_text(value: Any) -> str:
    """A default as a YAML user would write it."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return "`\"\"`" if value == "" else f"`{value}`"
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}`"
    return f"`{value!r}`"


def cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def flag_name(name: str, is_bool: bool, aliases: list[str] = ()) -> str:
    flag = "--" + name.replace("_", "-")
    text = f"`{flag}` / `--no-{flag[2:]}`" if is_bool else f"`{flag}`"
    if aliases:  # other accepted spellings (flags and YAML keys), see help_field(aliases=...)
        text += " (also " + ", ".join(f"`--{a.replace('_', '-')}`" for a in aliases) + ")"
    return text


@dataclass
class Option:
    name: str  # the dataclass field (YAML key)
    flag: str
    type: str
    default: str
    choices: str
    help: str


def _field_option(cls: type, f: dataclasses.Field) -> Option:
    from posttrain.config import _unwrap_optional

    tp = typing.get_type_hints(cls)[f.name]
    base, _ = _unwrap_optional(tp)
    choices = f.metadata.get("choices") or []
    return Option(f.name, flag_name(f.name, base is bool, f.metadata.get("aliases", [])), type_name(tp),
                  value_text(field_default(f)),
                  ", ".join(f"`{c}`" for c in choices), cell(f.metadata.get("help", "")))


def _action_option(action: argparse.Action) -> Option:
    """An option of a plain argparse parser (a command without a config dataclass)."""
    flag = ", ".join(f"`{s}`" for s in action.option_strings)
    kind = getattr(action.type, "__name__", None) or ("bool" if action.nargs == 0 else "str")
    if action.nargs in ("+", "*"):
        kind = f"list[{kind}]"
    default = None if action.default is argparse.SUPPRESS else action.default
    choices = ", ".join(f"`{c}`" for c in action.choices or [])
    return Option(action.dest, flag, kind, value_text(default), choices, cell(action.help or ""))


# --------------------------------------------------------------------------- shared option groups


def _dataclass_bases(cls: type) -> list[type]:
    return [b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)]


def shared_bases(specs: list[CommandSpec]) -> list[type]:
    """Dataclasses that command configs inherit from and that are not command configs themselves."""
    configs = {s.config for s in specs if s.config is not None}
    bases = {b for c in configs for b in _dataclass_bases(c) if b not in configs}
    return sorted(bases, key=lambda b: b.__name__)


def _owner(cls: type, name: str, shared: list[type]) -> type | None:
    """The most basic shared dataclass in `cls`'s hierarchy that declares field `name`."""
    for base in reversed(cls.__mro__):
        if base in shared and name in {f.name for f in dataclasses.fields(base)}:
            return base
    return None


def _same(a: dataclasses.Field, b: dataclasses.Field) -> bool:
    return field_default(a) == field_default(b) and a.metadata.get("help") == b.metadata.get("help") \
        and a.metadata.get("choices") == b.metadata.get("choices") and a.metadata.get("aliases") == b.metadata.get("aliases")


def own_options(cls: type, shared: list[type]) -> tuple[list[Option], list[type]]:
    """(options listed in the command's own table, shared groups it also takes)."""
    options, groups = [], []
    for f in dataclasses.fields(cls):
        owner = _owner(cls, f.name, shared)
        if owner is not None:
            if owner not in groups:
                groups.append(owner)
            base_field = {g.name: g for g in dataclasses.fields(owner)}[f.name]
            if _same(f, base_field):
                continue
        options.append(_field_option(cls, f))
    return options, groups


def group_options(base: type, shared: list[type]) -> list[Option]:
    """Fields a shared group declares itself (not those of a shared group below it)."""
    return [_field_option(base, f) for f in dataclasses.fields(base) if _owner(base, f.name, shared) is base]


# --------------------------------------------------------------------------- guide pages


@dataclass
class Guide:
    page: str
    anchor: str  # "" for the page itself (a level-1 heading)
    level: int

    @property
    def link(self) -> str:
        return self.page + (f"#{self.anchor}" if self.anchor else "")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _mentions(text: str, command: str) -> bool:
    words = r"\s+".join(map(re.escape, command.split()))
    return re.search(rf"posttrain\s+{words}(?![\w-])", text) is not None


def _sections(text: str) -> list[tuple[int, str, str, list[str]]]:
    """(level, heading, anchor, body lines) of each section, fenced code blocks respected."""
    sections: list[tuple[int, str, str, list[str]]] = [(0, "", "", [])]
    counts: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"(#{1,6})\s+(.*)", line)
        if match:
            heading = match.group(2)
            anchor = github_anchor(heading)
            n = counts.get(anchor, 0)
            counts[anchor] = n + 1
            sections.append((len(match.group(1)), heading, anchor if n == 0 else f"{anchor}-{n}", []))
        else:
            sections[-1][3].append(line)
    return sections


def _section_runs(command: str, body: list[str]) -> bool:
    """A table row starting with `posttrain CMD`, or the section opening with a code block running it."""
    for line in body:
        if re.match(r"\|\s*`posttrain\s", line) and _mentions(line.split("|")[1], command):
            return True
    content = [line for line in body if line.strip()]
    return len(content) >= 2 and content[0].startswith("```") and _mentions(content[1].split("#")[0], command) \
        and content[1].lstrip().startswith("posttrain ")


def find_guides(command: str, docs_dir: Path = DOCS) -> list[Guide]:
    """Every place in the docs (overview pages aside) that documents `posttrain COMMAND`, best first."""
    guides = []
    for page in sorted(docs_dir.glob("*.md")):
        if page.name in OVERVIEW_PAGES:
            continue
        for level, heading, anchor, body in _sections(page.read_text(encoding="utf-8")):
            if level and _mentions(heading, command):
                guides.append(Guide(page.name, "" if level == 1 else anchor, level))
            elif level and _section_runs(command, body):
                guides.append(Guide(page.name, anchor if level > 1 else "", level + 1))
    return sorted(guides, key=lambda g: (g.level, g.page))


# --------------------------------------------------------------------------- rendering


HEADER = """# Command reference

<!-- Generated by scripts/gen_cli_docs.py from posttrain.cli.COMMANDS and each command's config.
     Do not edit by hand: run `.venv/bin/python scripts/gen_cli_docs.py`. -->

Every `posttrain` command, every option. Generated from the code
(`scripts/gen_cli_docs.py`); `tests/test_docs.py` fails when this page is out of date.
The guide linked from each command explains what it does and shows examples.

Conventions shared by every command:

- Every option is a flag and a YAML key: `posttrain sft --config sft.yaml --learning-rate 1e-4`
  reads `sft.yaml` (keys are the field names, `learning_rate` or `learning-rate`), then applies
  the flags, which win. An unknown or ill-typed key or flag is an error naming it.
- Flags are spelt in full (`--lr` is an error, not a shortcut for another flag). Some options
  also take another spelling, shown as "(also `--old-name`)": an older name or what other tools
  call it; it works as a flag and as a YAML key.
- Yes/no options are `--flag` / `--no-flag`. List options take several values after one flag
  or over repeats (`--data a.jsonl b.jsonl` = `--data a.jsonl --data b.jsonl`), or a YAML list
  (a single string is a one-element list); a list flag replaces the YAML list as a whole.
  Mapping options take `KEY=VALUE` pairs (`--reward-weights math=1 rm:runs/rm=0.5`) or a YAML mapping.
- A *positional* argument, where a synopsis shows one, is the same as its option
  (`posttrain data check FILE` = `posttrain data check --file FILE`).
- Errors a user can fix (bad data, a bad flag, a missing file) print one line,
  `posttrain CMD: error: ...`, on stderr and exit with code 2. Ctrl-C exits with 130 (training
  commands save a checkpoint first). `POSTTRAIN_DEBUG=1` prints a line when a command finishes.
- `posttrain CMD --help` prints the same options in the terminal.
"""


def _table(options: list[Option]) -> list[str]:
    lines = ["| option | type | default | choices | description |", "|---|---|---|---|---|"]
    lines += [f"| {o.flag} | `{cell(o.type)}` | {o.default} | {o.choices} | {o.help} |" for o in options]
    return lines


def _positional(parser: argparse.ArgumentParser) -> str:
    for action in parser._actions:
        if not action.option_strings:
            metavar = str(action.metavar or action.dest).upper()
            return f" [{metavar} ...]" if action.nargs in ("*", "+") else f" [{metavar}]"
    return ""


def _synopsis(spec: CommandSpec) -> str:
    positional = _positional(spec.parser) if spec.parser is not None else ""
    if spec.config is not None and positional:
        # parse_config's bare argument: one value, unless the field is a list
        name = positional.strip(" []. ").lower()
        hints = typing.get_type_hints(spec.config)
        if name in hints and typing.get_origin(hints[name]) is not list:
            positional = f" [{name.upper()}]"
    return f"posttrain {spec.name}{positional} [--config FILE.yaml] [options]"


def group_title(base: type) -> str:
    doc = (base.__doc__ or "").strip().splitlines()
    first = doc[0].rstrip(".") if doc and not doc[0].startswith(base.__name__ + "(") else ""
    return f"`{base.__name__}`" + (f": {first[0].lower()}{first[1:]}" if first else "")


def render(specs: list[CommandSpec] | None = None, docs_dir: Path = DOCS) -> str:
    specs = specs if specs is not None else all_specs()
    shared = shared_bases(specs)
    lines = [HEADER, "| command | what it does | guide |", "|---|---|---|"]
    guides = {s.name: find_guides(s.name, docs_dir) for s in specs}
    for spec in specs:
        anchor = github_anchor(f"`posttrain {spec.name}`")
        guide = guides[spec.name]
        guide_cell = f"[{guide[0].page}]({guide[0].link})" if guide else "–"
        lines.append(f"| [`posttrain {spec.name}`](#{anchor}) | {cell(spec.help)} | {guide_cell} |")
    lines.append("")
    for spec in specs:
        lines += [f"## `posttrain {spec.name}`", "", cell(spec.help) + ".", "", "```", _synopsis(spec), "```", ""]
        guide = guides[spec.name]
        if guide:
            lines += ["Guide: " + ", ".join(f"[{g.page}]({g.link})" for g in guide[:2]), ""]
        if spec.config is not None:
            options, groups = own_options(spec.config, shared)
            if groups:
                links = ", ".join(f"[{g.__name__}](#{github_anchor(f'shared options: {g.__name__}')})" for g in groups)
                lines += [f"Also takes the shared options of {links}"
                          + (" (the rows below override some of them)." if any(
                              _owner(spec.config, o.name, shared) for o in options) else "."), ""]
            lines += _table(options) if options else ["(no options of its own)"]
        elif spec.parser is not None:
            actions = [a for a in spec.parser._actions if a.option_strings and a.dest not in SKIPPED_ACTIONS]
            lines += _table([_action_option(a) for a in actions])
        else:
            lines += ["```", spec.help_text or "", "```"]
        lines.append("")
    if shared:
        lines += ["## Shared options", "",
                  "Options that several commands take, from one base config class each. A command's own",
                  "table lists any of these whose default it changes.", ""]
        for base in shared:
            lines += [f"### Shared options: {base.__name__}", "",
                      f"{group_title(base)} (`{base.__module__}`). Used by: "
                      + ", ".join(f"`{s.name}`" for s in specs if s.config is not None and base in s.config.__mro__)
                      + ".", ""]
            lines += _table(group_options(base, shared)) + [""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is stale; write nothing")
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)
    text = render()
    current = Path(args.output).read_text(encoding="utf-8") if Path(args.output).exists() else ""
    if args.check:
        if text != current:
            print(f"{args.output} is stale: run .venv/bin/python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    if text != current:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(f"{args.output} is up to date")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
