"""The documentation is complete and in step with the code.

- docs/cli.md is what scripts/gen_cli_docs.py writes today (else: run the script);
- every command is in it, and has a guide page (or section) linked from docs/README.md;
- docs/README.md links every page, and every relative link in docs/ and README.md resolves
  (file and heading anchor);
- every `posttrain ...` command line shown in the docs parses: its flags exist and its
  values have the right types and choices (so a renamed flag cannot rot in a page);
- the Python snippets of docs/extending.md run against the real APIs.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

import cli_docs_script
from posttrain.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REGENERATE = "run `.venv/bin/python scripts/gen_cli_docs.py` and commit docs/cli.md"


_load_script = cli_docs_script.load


@pytest.fixture(scope="module")
def gen():
    return _load_script()


@pytest.fixture(scope="module")
def specs(gen):
    return {spec.name: spec for spec in gen.all_specs()}


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _links(text: str) -> list[str]:
    """Targets of markdown links outside fenced code blocks."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


# --------------------------------------------------------------------------- the reference


def test_cli_reference_is_up_to_date(gen, specs):
    expected = gen.render(list(specs.values()))
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    if current != expected:
        import difflib

        diff = "".join(list(difflib.unified_diff(current.splitlines(True), expected.splitlines(True),
                                                 "docs/cli.md", "generated", n=1))[:40])
        pytest.fail(f"docs/cli.md is stale: {REGENERATE}\n{diff}")


def test_every_command_has_a_section_in_the_reference():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = [name for name in COMMANDS if f"\n## `posttrain {name}`\n" not in text]
    assert not missing, f"not in docs/cli.md: {missing}; {REGENERATE}"


def test_every_command_has_a_guide_linked_from_the_index(gen):
    index = set(_links((DOCS / "README.md").read_text(encoding="utf-8")))
    linked_pages = {link.split("#")[0] for link in index}
    without_guide = [name for name in sorted(COMMANDS) if not gen.find_guides(name)]
    assert not without_guide, (f"no page documents these commands (a heading naming `posttrain CMD`, a table row "
                               f"starting with it, or a section opening with a code block running it): {without_guide}")
    unlinked = {name: gen.find_guides(name)[0].page for name in COMMANDS
                if gen.find_guides(name)[0].page not in linked_pages}
    assert not unlinked, f"guide pages not linked from docs/README.md: {unlinked}"


# --------------------------------------------------------------------------- the index and links


def test_index_links_every_page():
    linked = {link.split("#")[0] for link in _links((DOCS / "README.md").read_text(encoding="utf-8"))}
    missing = [page.name for page in _pages() if page.name != "README.md" and page.name not in linked]
    assert not missing, f"add these pages to docs/README.md: {missing}"


def _anchors(page: Path, gen) -> set[str]:
    return {anchor for _, _, anchor, _ in gen._sections(page.read_text(encoding="utf-8")) if anchor}


def test_relative_links_resolve(gen):
    broken = []
    for page in [*_pages(), ROOT / "README.md"]:
        for link in _links(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path, gen):
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


# --------------------------------------------------------------------------- commands shown in the docs


def _command_lines(text: str) -> list[str]:
    """`posttrain ...` lines of fenced code blocks, continuation lines joined, comments cut."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"^\$\s+", "", line.strip())
            if line.startswith("posttrain ") and not re.match(r"posttrain [a-z -]+:", line):  # not an error line
                lines.append(re.split(r"\s+#\s", line)[0].strip())
    return lines


def _concrete(line: str) -> bool:
    """A real invocation, not a synopsis (`[--kind A|B]`, `...`, `<x>`, `$VAR`, pipes)."""
    return not re.search(r"[\[\]<>|$]|\.\.\.|…", line)


def _doc_invocations() -> list[tuple[str, str]]:
    found = []
    for page in [*_pages(), ROOT / "README.md"]:
        for line in _command_lines(page.read_text(encoding="utf-8")):
            if _concrete(line):
                found.append((page.name, line))
    return found


def test_command_lines_in_the_docs_parse(gen, specs):
    from posttrain.cli import _resolve
    from posttrain.config import parse_config
    from posttrain.errors import PosttrainError

    problems, checked = [], 0
    for page, line in _doc_invocations():
        try:
            argv = shlex.split(line)[1:]
        except ValueError as exc:
            problems.append(f"{page}: {line}: {exc}")
            continue
        if not argv or argv[0] in ("--help", "-h", "--version"):
            continue
        resolved = _resolve(argv)
        if resolved is None:
            problems.append(f"{page}: {line}: unknown command")
            continue
        name, rest = resolved
        spec = specs[name]
        if spec.config is None or "--help" in rest:
            continue
        if name == "launch":  # its own options, then the launched command's
            continue
        positional = next((a.metavar.lower() for a in spec.parser._actions if not a.option_strings), None)
        rest = _without_config_file(rest)  # the YAML file named in an example does not exist here
        try:
            parse_config(spec.config, _merge_repeated(rest), prog=f"posttrain {name}", positional=positional)
            checked += 1
        except PosttrainError as exc:
            problems.append(f"{page}: {line}\n    -> {exc}")
    assert not problems, "command lines in the docs that do not parse:\n" + "\n".join(problems)
    assert checked > 20


def _without_config_file(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("--config="):
            out.append(arg)
    return out


def _merge_repeated(argv: list[str]) -> list[str]:
    """`--reward a --reward b` -> `--reward a b`, as the RL commands accept it."""
    from posttrain.rl.loop import merge_repeated_flags

    return merge_repeated_flags(argv, "--reward")


# --------------------------------------------------------------------------- extending.md runs


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block."""
    return re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.DOTALL)


def test_extending_snippets_run(tmp_path, monkeypatch):
    """docs/extending.md, top to bottom: a block starting `# file: NAME` is saved as NAME, every
    other ```python block runs (in one namespace, in a temporary directory), `# not run` is skipped."""
    from posttrain.losses import PREFERENCE_LOSSES
    from posttrain.pipeline import STAGE_TYPES

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    # the page registers a loss and a stage type at run time; leave the dicts as they were
    saved = [(registry, dict(registry)) for registry in (PREFERENCE_LOSSES, STAGE_TYPES)]
    try:
        _run_extending_blocks(tmp_path)
        assert "offset" in PREFERENCE_LOSSES and "shuffle" in STAGE_TYPES
    finally:
        for registry, content in saved:
            registry.clear()
            registry.update(content)
        sys.modules.pop("my_stages", None)


def _run_extending_blocks(tmp_path: Path) -> None:
    namespace: dict = {"__name__": "extending_md"}
    ran = 0
    for number, (language, code) in enumerate(_blocks((DOCS / "extending.md").read_text(encoding="utf-8")), 1):
        first = code.splitlines()[0] if code.strip() else ""
        if first.startswith("# file: "):
            (tmp_path / first[len("# file: "):].strip()).write_text(code, encoding="utf-8")
            continue
        if language != "python" or "# not run" in first:
            continue
        try:
            exec(compile(code, f"docs/extending.md block {number}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - say which block
            pytest.fail(f"docs/extending.md block {number} failed: {type(exc).__name__}: {exc}\n{code}")
        ran += 1
    assert ran >= 6
