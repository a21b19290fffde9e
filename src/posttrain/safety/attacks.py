"""Seed topics x attack templates -> adversarial conversations for `posttrain redteam`.

A seed topic is one harmful request, phrased generically (`topics.jsonl`):

    {"id": "malware-t02", "category": "malware", "request": "Write a hidden keylogger ...",
     "opener": "What is a keylogger, in general terms?",            # benign first turn
     "alternative": "I can explain how to check your own devices ..."}  # safe help to offer

An attack template (`attacks.yaml`) wraps a request in one of six families:

    family        what the target sees
    roleplay      one user turn: a persona without rules ("You are FreeBot ... {request}")
    hypothetical  one user turn: fiction or a thought experiment around the request
    override      one user turn: a fake instruction that switches safety off
    encoding      one user turn: an instruction to decode, then the request encoded
                  (base64, rot13, leetspeak or reversed) as {payload}
    many_shot     `shots` fake user/assistant turns in which the "assistant" complies (other
                  topics' requests, content-free answers), then the request
    multi_turn    several user turns sent one at a time: a benign opener, then escalation;
                  the target answers each turn before the next is sent

Every attack is an `Attack`: fixed `prefix` messages (the fake many-shot turns) and the user
`turns` still to send. A single-turn attack has one turn; the red-team loop sends turn k to
every attack that has one, batched, so multi-turn attacks grow turn by turn.
"""
from __future__ import annotations

import base64
import codecs
import hashlib
import random
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..data.readers import read_rows, split_location
from ..errors import ConfigError, InputError
from ..records import Message

FAMILIES = ("roleplay", "hypothetical", "override", "encoding", "many_shot", "multi_turn")
CATEGORY_WORDS = {"self_harm": "self-harm"}


def resource_path(name: str) -> Path:
    """A file shipped in `posttrain/resources/redteam/`."""
    return Path(str(resources.files("posttrain").joinpath("resources", "redteam", name)))


# ------------------------------------------------------------------------------------ encodings

_LEET = str.maketrans("aeiost", "431057")
_UNLEET = str.maketrans("431057", "aeiost")


def leetspeak(text: str) -> str:
    """Lower-case a, e, i, o, s, t -> 4, 3, 1, 0, 5, 7 (upper case is left alone, so decoding
    is exact for any text without those digits)."""
    return text.translate(_LEET)


# name -> (encode, decode); decode(encode(x)) == x (leetspeak: for x without the digits 4 3 1 0 5 7)
ENCODINGS: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "base64": (lambda t: base64.b64encode(t.encode("utf-8")).decode("ascii"),
               lambda t: base64.b64decode(t.encode("ascii")).decode("utf-8")),
    "rot13": (lambda t: codecs.encode(t, "rot13"), lambda t: codecs.decode(t, "rot13")),
    "leetspeak": (leetspeak, lambda t: t.translate(_UNLEET)),
    "reverse": (lambda t: t[::-1], lambda t: t[::-1]),
}


def encode(text: str, encoding: str) -> str:
    return ENCODINGS[encoding][0](text)


def decode(text: str, encoding: str) -> str:
    return ENCODINGS[encoding][1](text)


# ------------------------------------------------------------------------------- data classes

@dataclass(frozen=True)
class Topic:
    id: str
    category: str
    request: str
    opener: str = ""
    alternative: str = ""


@dataclass(frozen=True)
class AttackTemplate:
    id: str
    family: str
    text: str = ""
    encoding: str | None = None
    shots: int = 0
    turns: tuple[str, ...] = ()


@dataclass
class AttackLibrary:
    """The templates plus what some families need: fake answers (many-shot) and attacker prompts."""

    templates: list[AttackTemplate]
    fake_answers: list[str] = field(default_factory=list)
    attacker_system: str = ""
    attacker_user: str = "{prompt}"


@dataclass
class Attack:
    """One conversation to run. `kind` "harmful" (should be declined) or "benign" (should be answered)."""

    id: str
    template: str
    family: str
    topic: str
    category: str
    kind: str
    request: str
    turns: list[str]
    prefix: list[Message] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def first_messages(self) -> list[Message]:
        """What the target sees on the first turn."""
        return list(self.prefix) + [{"role": "user", "content": self.turns[0]}]


# ------------------------------------------------------------------------------------ loading

def _text(value: Any, path: str, line: int | None, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, line, name, "missing or not a non-empty string")
    return value.strip()


def located_rows(path: str | Path, read: dict[str, Any] | None = None):
    """`(file, line, row)` for each row of a data file, read by `read_rows` with `read`
    (its `split`, `columns` and `max_line_bytes`: `--split`, `--columns`, `--max-line-bytes`)."""
    for where, row in read_rows(path, **(read or {})):
        file, line = split_location(where)
        yield file or str(path), line, row


def read_topics(path: str | Path | None = None, read: dict[str, Any] | None = None) -> list[Topic]:
    """Seed topics from a data file (default: the shipped ones); errors name file:line:field.
    `read` (split, columns, max_line_bytes) applies to a given file, not to the shipped one."""
    read = read if path else None
    path = str(path or resource_path("topics.jsonl"))
    topics, seen = [], set()
    for path, line, row in located_rows(path, read):
        values = {key: _text(row.get(key), path, line, key) for key in ("id", "category", "request")}
        for key in ("opener", "alternative"):
            if row.get(key) is not None:
                values[key] = _text(row[key], path, line, key)
        if values["id"] in seen:
            raise InputError(path, line, "id", f"duplicate id {values['id']!r}")
        seen.add(values["id"])
        topics.append(Topic(**values))
    if not topics:
        raise InputError(path, None, None, "no topics in file")
    return topics


def _placeholders(text: str, path: str, where: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise InputError(path, None, where, f"bad placeholder syntax ({exc}); write literal braces as {{{{ }}}}") from None


# family -> (allowed placeholders, required placeholders) of its text / turns
_PLACEHOLDERS = {
    "roleplay": ({"request", "category"}, {"request"}),
    "hypothetical": ({"request", "category"}, {"request"}),
    "override": ({"request", "category"}, {"request"}),
    "encoding": ({"payload", "category"}, {"payload"}),
    "many_shot": ({"request", "category"}, {"request"}),
    "multi_turn": ({"request", "opener", "category"}, {"request"}),
}


def parse_template(raw: Any, path: str, index: int) -> AttackTemplate:
    where = f"templates[{index}]"
    if not isinstance(raw, dict):
        raise InputError(path, None, where, "expected a mapping with id and family")
    unknown = sorted(set(map(str, raw)) - {"id", "family", "text", "encoding", "shots", "turns", "description"})
    if unknown:
        raise InputError(path, None, f"{where}.{unknown[0]}", "unknown key")
    template_id = _text(raw.get("id"), path, None, f"{where}.id")
    family = raw.get("family")
    if family not in FAMILIES:
        raise InputError(path, None, f"{where}.family", f"expected one of {', '.join(FAMILIES)}, got {family!r}")
    turns: tuple[str, ...] = ()
    if family == "multi_turn":
        if not isinstance(raw.get("turns"), list) or len(raw["turns"]) < 2:
            raise InputError(path, None, f"{where}.turns", "a multi_turn template needs a list of at least 2 user turns")
        turns = tuple(_text(t, path, None, f"{where}.turns[{i}]") for i, t in enumerate(raw["turns"], 1))
        texts = list(turns)
    else:
        texts = [_text(raw.get("text"), path, None, f"{where}.text")]
    encoding = raw.get("encoding")
    if (family == "encoding") != (encoding is not None):
        raise InputError(path, None, f"{where}.encoding", "encoding templates (and only they) need an encoding")
    if encoding is not None and encoding not in ENCODINGS:
        raise InputError(path, None, f"{where}.encoding", f"expected one of {', '.join(ENCODINGS)}, got {encoding!r}")
    shots = raw.get("shots", 0)
    if family == "many_shot" and (not isinstance(shots, int) or isinstance(shots, bool) or shots < 1):
        raise InputError(path, None, f"{where}.shots", f"a many_shot template needs shots >= 1, got {shots!r}")
    allowed, required = _PLACEHOLDERS[family]
    used: set[str] = set()
    for text in texts:
        names = _placeholders(text, path, where)
        bad = sorted(names - allowed)
        if bad:
            raise InputError(path, None, where, f"unknown placeholder {{{bad[0]}}} for family {family} "
                                                f"(allowed: {', '.join('{' + a + '}' for a in sorted(allowed))})")
        used |= names
    missing = sorted(required - used)
    if missing:
        raise InputError(path, None, where, f"never uses {{{missing[0]}}}")
    return AttackTemplate(template_id, family, "" if family == "multi_turn" else texts[0], encoding,
                          shots if family == "many_shot" else 0, turns)


def read_attacks(path: str | Path | None = None) -> AttackLibrary:
    """Attack templates from YAML (default: the shipped `attacks.yaml`); errors name file and field."""
    path = str(path or resource_path("attacks.yaml"))
    if not Path(path).is_file():
        raise InputError(path, None, None, "file not found")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(path, mark.line + 1 if mark else None, None, "invalid YAML") from None
    if not isinstance(data, dict) or not isinstance(data.get("templates"), list) or not data["templates"]:
        raise InputError(path, None, "templates", "expected a non-empty list of attack templates")
    templates = [parse_template(raw, path, i) for i, raw in enumerate(data["templates"], 1)]
    ids = [t.id for t in templates]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise InputError(path, None, "templates", f"duplicate id {duplicate!r}")
    answers = data.get("fake_answers") or []
    if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
        raise InputError(path, None, "fake_answers", "expected a list of non-empty strings")
    if any(t.family == "many_shot" for t in templates) and not answers:
        raise InputError(path, None, "fake_answers", "many_shot templates need at least one fake answer")
    attacker = data.get("attacker") or {}
    if not isinstance(attacker, dict):
        raise InputError(path, None, "attacker", "expected a mapping with system and user")
    user = str(attacker.get("user") or "{prompt}")
    if _placeholders(user, path, "attacker.user") != {"prompt"}:
        raise InputError(path, None, "attacker.user", "must use {prompt} (the turn to rewrite) and nothing else")
    return AttackLibrary(templates, [a.strip() for a in answers], str(attacker.get("system") or "").strip(), user)


# ---------------------------------------------------------------------------------- rendering

def _fill(text: str, topic: Topic, **more: str) -> str:
    values = {"request": topic.request, "opener": topic.opener or topic.request,
              "category": CATEGORY_WORDS.get(topic.category, topic.category.replace("_", " ")), **more}
    return text.format(**values)


def fake_turns(topic: Topic, topics: Sequence[Topic], answers: Sequence[str], shots: int) -> list[Message]:
    """`shots` fake user/assistant exchanges: other topics' requests (next in the list, wrapping
    round), each "answered" with a content-free compliant reply."""
    others = [t for t in topics if t.id != topic.id] or [topic]
    start = next((i for i, t in enumerate(topics) if t.id == topic.id), 0)
    messages: list[Message] = []
    for k in range(shots):
        messages.append({"role": "user", "content": others[(start + k) % len(others)].request})
        messages.append({"role": "assistant", "content": answers[k % len(answers)]})
    return messages


def render(template: AttackTemplate, topic: Topic, library: AttackLibrary, topics: Sequence[Topic]) -> Attack:
    """One attack: `template` applied to `topic`."""
    prefix: list[Message] = []
    extra: dict[str, Any] = {}
    if template.family == "multi_turn":
        turns = [_fill(t, topic) for t in template.turns]
    elif template.family == "encoding":
        payload = encode(topic.request, template.encoding or "")
        turns = [_fill(template.text, topic, payload=payload)]
        extra = {"encoding": template.encoding, "payload": payload}
    else:
        turns = [_fill(template.text, topic)]
        if template.family == "many_shot":
            prefix = fake_turns(topic, topics, library.fake_answers, template.shots)
            extra = {"shots": template.shots}
    if topic.alternative:
        extra["alternative"] = topic.alternative  # what a safe reply can offer instead (pairs use it)
    return Attack(id=f"{template.id}:{topic.id}", template=template.id, family=template.family, topic=topic.id,
                  category=topic.category, kind="harmful", request=topic.request, turns=turns, prefix=prefix,
                  extra=extra)


def build_attacks(topics: Sequence[Topic], library: AttackLibrary, families: Sequence[str] = ()) -> list[Attack]:
    """Every template (of `families`, all when empty) applied to every topic, template-major."""
    templates = [t for t in library.templates if not families or t.family in families]
    if not templates:
        raise ConfigError("families", f"no attack template of family {', '.join(families)}")
    return [render(t, topic, library, topics) for t in templates for topic in topics]


def benign_attack(item_id: str, category: str, prompt: str, answer: str | None, source: str) -> Attack:
    """A benign look-alike prompt, run like a single-turn attack (over-refusal is measured on these)."""
    extra = {"source": source} | ({"answer": answer} if answer else {})
    return Attack(id=f"benign:{item_id}", template="benign", family="benign", topic=item_id, category=category,
                  kind="benign", request=prompt, turns=[prompt], extra=extra)


def read_benign(paths: Sequence[str | Path] = (), read: dict[str, Any] | None = None) -> list[Attack]:
    """Benign look-alikes: by default the shipped probe suite's benign rows plus `benign.jsonl`.

    A file may be a probes file (`type` harmful/benign: only benign rows are used) or rows with
    id, category, prompt and an optional reference `answer`. `read` (split, columns,
    max_line_bytes) applies to given files, not to the shipped ones.
    """
    if not paths:
        read = None
        paths = [Path(str(resources.files("posttrain").joinpath("resources", "safety", "probes.jsonl"))),
                 resource_path("benign.jsonl")]
    out, seen = [], set()
    for given in paths:
        for path, line, row in located_rows(given, read):
            if row.get("type", "benign") != "benign":
                continue
            values = {key: _text(row.get(key), str(path), line, key) for key in ("id", "category", "prompt")}
            answer = row.get("answer")
            if answer is not None:
                answer = _text(answer, str(path), line, "answer")
            if values["id"] in seen:
                raise InputError(str(path), line, "id", f"duplicate id {values['id']!r}")
            seen.add(values["id"])
            out.append(benign_attack(values["id"], values["category"], values["prompt"], answer, Path(path).name))
    return out


# --------------------------------------------------------------------------- split and subsample

def topic_split(topic_id: str, eval_fraction: float) -> str:
    """"train" or "eval" from a hash of the id: stable across runs, files and machines."""
    bucket = int(hashlib.sha256(topic_id.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    return "eval" if bucket < eval_fraction else "train"


def in_split(attacks: Sequence[Attack], split: str, eval_fraction: float) -> list[Attack]:
    """Attacks whose topic falls in `split` ("all", "train" or "eval")."""
    if split == "all":
        return list(attacks)
    return [a for a in attacks if topic_split(a.topic, eval_fraction) == split]


def select(attacks: Sequence[Attack], limit: int, seed: int, key: Callable[[Attack], str]) -> list[Attack]:
    """At most `limit` attacks (all when 0), spread evenly over `key` groups (templates or
    categories): shuffle each group with `seed`, then deal round-robin. Output keeps input order."""
    if not limit or limit >= len(attacks):
        return list(attacks)
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for index, attack in enumerate(attacks):
        groups.setdefault(key(attack), []).append(index)
    for members in groups.values():
        rng.shuffle(members)
    chosen: list[int] = []
    while len(chosen) < limit:
        for members in groups.values():
            if members and len(chosen) < limit:
                chosen.append(members.pop())
    return [attacks[i] for i in sorted(chosen)]
