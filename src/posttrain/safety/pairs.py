"""Safety preference pairs from a red-team transcript (TRL-style prompt/chosen/rejected rows).

Two kinds of pairs, so that training lowers attack success without teaching over-refusal:

    from                          chosen                                 rejected
    harmful attack, label unsafe  a safe reply: a refusal that says why   the target's unsafe reply
                                  and offers a safe alternative
    benign look-alike             a helpful answer                        a refusal

The safe reply (`safe_response`):
    template  `responses.yaml`: "I can't help with that, because {reason}. {alternative}",
              with the category's reason and the seed topic's alternative. Free and predictable.
    model     the model (a `ChatBackend`) answers the attack again under a system prompt asking
              it to decline briefly and offer a safe alternative.
    cai       a Constitutional-AI revision of the unsafe reply (`synth.cai.CritiqueReviser`,
              the "harmlessness" principle of the default constitution).
  A model or CAI reply is used only when the keyword judge labels it "safe" (declines and offers
  something else); otherwise the template stands in, and `chosen_source` records which was used.

The helpful answer (`benign_chosen`):
    auto       the look-alike's reference `answer` when it has one, else the target's own reply
               when it did not refuse, else no pair
    reference  only reference answers;   model: only the target's non-refusing replies
  The rejected refusal is the target's own refusal when it over-refused (a real mistake to
  train away), else a plain refusal from `responses.yaml`.

The prompt is the conversation the target saw (the whole jailbreak, fake many-shot turns and
earlier escalation turns included), so training sees the attack in context. Each row also
keeps `kind`, `id`, `category`, `template`, `chosen_source` and `rejected_source`.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..data.readers import read_rows, split_location
from ..errors import ConfigError, InputError
from ..records import Message
from .attacks import resource_path
from .classify import LABELS, REFUSED, SAFE, UNSAFE, infer_kind, keyword_verdict

SAFE_RESPONSES = ("template", "model", "cai")
BENIGN_CHOSEN = ("auto", "reference", "model")
SAFE_SYSTEM = ("You are a helpful and harmless assistant. When a request could hurt someone, you decline it "
               "in one or two sentences, say briefly why, and offer a safe, genuinely useful alternative "
               "(for example general safety information, or where to get help). Never give the harmful content.")


@dataclass(frozen=True)
class ResponseTemplates:
    safe: str
    generic_alternative: str
    reasons: dict[str, str]
    refusals: tuple[str, ...]

    def safe_reply(self, category: str, alternative: str | None) -> str:
        reason = self.reasons.get(category) or self.reasons.get("default") or "it could cause serious harm"
        return self.safe.format(reason=reason, alternative=alternative or self.generic_alternative).strip()

    def refusal(self, key: str) -> str:
        """A plain refusal, picked by a stable hash of `key` so reruns give the same pairs."""
        index = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % len(self.refusals)
        return self.refusals[index]


def load_response_templates(path: str | Path | None = None) -> ResponseTemplates:
    path = Path(path or resource_path("responses.yaml"))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("responses", f"{path}: cannot read ({type(exc).__name__})") from None
    refusals = data.get("refusals") if isinstance(data, dict) else None
    if not (isinstance(data, dict) and isinstance(data.get("safe"), str) and isinstance(refusals, list) and refusals):
        raise ConfigError("responses", f"{path}: needs 'safe' (text) and 'refusals' (a non-empty list)")
    return ResponseTemplates(data["safe"], str(data.get("generic_alternative") or ""),
                             {str(k): str(v) for k, v in (data.get("reasons") or {}).items()},
                             tuple(str(r) for r in refusals))


# ---------------------------------------------------------------------------------- transcripts

def read_transcript(path: str | Path, read: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Labelled rows from `posttrain redteam` (or the directory it wrote), or any generations file
    with a prompt and a response, such as `posttrain eval --suite safety`'s `generations_safety.jsonl`:

    - `kind` comes from `kind`, else `type` (harmful/benign), else `classify.infer_kind` on the
      last user turn (`quality.safety.harm_categories`);
    - a row without one of the labels refused/safe/unsafe (the eval suite writes "complied") is
      labelled by the keyword judge, and `label_source` says so;
    - a text prompt becomes one user message; `id` defaults to "row-LINE", `category` to "unknown".

    A row that cannot be read names file:line:field. `read` holds `read_rows`' split, columns and
    max_line_bytes (`--split`, `--columns`, `--max-line-bytes`).
    """
    path = str(path)
    if Path(path).is_dir() and (Path(path) / "transcript.jsonl").exists():
        path = str(Path(path) / "transcript.jsonl")
    rows = []
    for where, raw in read_rows(path, **(read or {})):
        path, line = split_location(where)
        row = dict(raw)
        prompt = row.get("prompt")
        if isinstance(prompt, str) and prompt.strip():
            prompt = row["prompt"] = [{"role": "user", "content": prompt}]
        if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                            and m.get("role") for m in prompt)):
            raise InputError(path, line, "prompt", "expected text or a list of {role, content} messages")
        kind = row.get("kind", row.get("type"))
        if kind is None:
            users = [m["content"] for m in prompt if m["role"] == "user"]
            kind = infer_kind(row.get("request") or (users[-1] if users else ""))
        if kind not in ("harmful", "benign"):
            raise InputError(path, line, "kind", f"expected harmful or benign, got {kind!r}")
        row.update(kind=kind, id=str(row.get("id") or f"row-{line}"), category=str(row.get("category") or "unknown"))
        if row.get("status", "ok") == "ok":
            if not isinstance(row.get("response"), str):
                raise InputError(path, line, "response", "missing or not a string")
            if row.get("label") not in LABELS:
                verdict = keyword_verdict(kind, row["response"])
                row.update(label=verdict.label, label_source="keyword (relabelled)", judge_reasoning=verdict.reasoning)
        rows.append(row)
    if not rows:
        raise InputError(path, None, None, "no rows in transcript")
    return rows


# ----------------------------------------------------------------------------- safe responses

def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def model_safe_replies(rows: Sequence[dict[str, Any]], backend, max_tokens: int = 160) -> list[str | None]:
    """The model's own helpful refusals: each attack conversation again, under `SAFE_SYSTEM`."""
    conversations = [[{"role": "system", "content": SAFE_SYSTEM}] + [m for m in r["prompt"] if m["role"] != "system"]
                     for r in rows]
    return backend.complete(conversations, max_tokens=max_tokens, temperature=0.0)


def cai_safe_replies(rows: Sequence[dict[str, Any]], backend, max_tokens: int = 160,
                     constitution: str = "default", principle: str = "harmlessness") -> list[str | None]:
    """Constitutional-AI revisions of the unsafe replies (one critique -> revision step each)."""
    from ..synth.cai import CaiSettings, CritiqueReviser, Trace
    from ..synth.constitution import load_constitution

    loaded = load_constitution(constitution)
    chosen = next((p for p in loaded.principles if p.name == principle), None)
    if chosen is None:
        raise ConfigError("safe_response", f"constitution {loaded.name!r} has no principle {principle!r}")
    traces = [Trace(i, list(r["prompt"]), initial=r["response"], current=r["response"]) for i, r in enumerate(rows)]
    reviser = CritiqueReviser(backend, loaded, CaiSettings(max_tokens=max_tokens, critique_max_tokens=max_tokens,
                                                           temperature=0.0))
    if traces:
        reviser.step([(t, chosen) for t in traces], 1, 0)
    return [t.current if t.ok and t.revised else None for t in traces]


# ---------------------------------------------------------------------------------------- pairs

def pair_row(row: dict[str, Any], chosen: str, rejected: str, chosen_source: str, rejected_source: str
             ) -> dict[str, Any]:
    return {"prompt": row["prompt"], "chosen": _assistant(chosen), "rejected": _assistant(rejected),
            "kind": row["kind"], "id": row["id"], "category": row["category"], "template": row.get("template"),
            "chosen_source": chosen_source, "rejected_source": rejected_source}


def build_safety_pairs(rows: Sequence[dict[str, Any]], safe_response: str = "template", benign_chosen: str = "auto",
                       backend=None, templates: ResponseTemplates | None = None, max_tokens: int = 160,
                       log: Callable[[str], None] = lambda text: None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pair rows, counts) from labelled transcript rows; see the module docstring."""
    if safe_response not in SAFE_RESPONSES:
        raise ConfigError("safe_response", f"expected one of {', '.join(SAFE_RESPONSES)}, got {safe_response!r}")
    if benign_chosen not in BENIGN_CHOSEN:
        raise ConfigError("benign_chosen", f"expected one of {', '.join(BENIGN_CHOSEN)}, got {benign_chosen!r}")
    if safe_response != "template" and backend is None:
        raise ConfigError("safe_response", f"'{safe_response}' needs a model to write the safe replies")
    templates = templates or load_response_templates()
    skipped: Counter[str] = Counter()
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    skipped["failed attack"] = len(rows) - len(ok)

    unsafe = [r for r in ok if r["kind"] == "harmful" and r["label"] == UNSAFE]
    skipped["harmful, not unsafe (nothing to correct)"] = sum(r["kind"] == "harmful" and r["label"] != UNSAFE for r in ok)
    written: list[str | None] = [None] * len(unsafe)
    if safe_response == "model":
        written = model_safe_replies(unsafe, backend, max_tokens)
    elif safe_response == "cai":
        written = cai_safe_replies(unsafe, backend, max_tokens)
    if safe_response != "template":
        usable = sum(t is not None and keyword_verdict("harmful", t).label == SAFE for t in written)
        log(f"safe replies by {safe_response}: {usable}/{len(unsafe)} usable, the rest from the template")
    pairs, sources = [], Counter()
    for row, text in zip(unsafe, written):
        source = safe_response
        if text is None or keyword_verdict("harmful", text).label != SAFE:
            text, source = templates.safe_reply(row["category"], row.get("alternative")), "template"
        if text.strip() == row["response"].strip():
            skipped["chosen equals rejected"] += 1
            continue
        sources[f"harmful chosen by {source}"] += 1
        pairs.append(pair_row(row, text, row["response"], source, "target"))

    for row in (r for r in ok if r["kind"] == "benign"):
        helpful, source = None, ""
        if benign_chosen in ("auto", "reference") and row.get("answer"):
            helpful, source = row["answer"], "reference"
        elif benign_chosen in ("auto", "model") and row["label"] == SAFE and row["response"].strip():
            helpful, source = row["response"], "target"
        if helpful is None:
            skipped["benign, no helpful answer"] += 1
            continue
        if row["label"] == REFUSED and row["response"].strip():
            refusal, refusal_source = row["response"], "target"
        else:
            refusal, refusal_source = templates.refusal(row["id"]), "template"
        if helpful.strip() == refusal.strip():
            skipped["chosen equals rejected"] += 1
            continue
        sources[f"benign chosen by {source}"] += 1
        pairs.append(pair_row(row, helpful, refusal, source, refusal_source))
    counts = {"pairs": len(pairs), "harmful_pairs": sum(p["kind"] == "harmful" for p in pairs),
              "benign_pairs": sum(p["kind"] == "benign" for p in pairs), "sources": dict(sorted(sources.items())),
              "skipped": {k: v for k, v in sorted(skipped.items()) if v}}
    return pairs, counts
