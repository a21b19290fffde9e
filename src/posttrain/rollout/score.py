"""Score responses with a reward model: `RewardScorer` and `posttrain score`.

    from posttrain.rollout.score import RewardScorer
    scorer = RewardScorer("runs/rm")                         # a run dir, its final/, or a HF seq-clf model
    scorer.score(["What is 2+2?", "What is 2+2?"], ["4", "5"])   # -> [1.83, -0.42]

`RewardScorer` is the one scoring core: `posttrain score`, the RL reward
functions (it is a reward function itself: `scorer(prompt, response)` and
`scorer.batch(prompts, responses, extras)`, see docs/rewards.md), judges and
best-of-n all call it. It tokenises exactly as `posttrain rm` trained the model
(the template and max length are read from the model directory), groups
responses that share a prompt so the prompt goes through the model once, sorts
by length to keep padding small, and runs batches of at most `batch_size`
responses (`posttrain.train.reward_batch`).

`posttrain score --model RM --input FILE --output FILE` adds scores to each row:

    prompt + response (or completion)   ->  score
    prompt + chosen + rejected          ->  chosen_score, rejected_score
    prompt + responses                  ->  scores (one per response)

The output is written atomically (temporary file, then rename); a row that
already has one of these fields is an error unless `--overwrite` is given (a
ranked data set's `scores` may be human labels).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import help_field, parse_config
from ..data import get_template, read_rows
from ..data.formats import is_transcript, parse_row
from ..data.options import DataArgs, read_kwargs
from ..data.prompts import parse_prompt
from ..data.readers import split_location
from ..errors import ConfigError, InputError, PosttrainError
from ..jsonl import write_jsonl
from ..models.peft import merge_adapter
from ..records import Message, user_prompt

SETTINGS_FILE = "reward_model.json"  # written by `posttrain rm` (train/reward.py)


def _as_messages(prompt: str | list[Message]) -> list[Message]:
    return user_prompt(prompt) if isinstance(prompt, str) else list(prompt)


def read_settings(model_dir: str) -> dict[str, Any]:
    """The tokenisation settings a reward model was trained with ({} when there are none)."""
    from ..models.loading import resolve_run_dir

    path = resolve_run_dir(Path(model_dir).expanduser()) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PosttrainError(f"{path}: not valid JSON ({exc})") from None


class RewardScorer:
    """A trained reward model as a batched scoring function (see the module docstring).

    model_dir: a `posttrain rm` run directory or its `final/` (full or LoRA + head), or a
    Hugging Face sequence-classification model with one label.
    max_length / template: default to what the model was trained with.
    length_policy: "truncate" (default: every response gets a score) or "error".
    merge_adapter: fold a LoRA adapter into the weights for faster inference.
    """

    def __init__(self, model_dir: str, *, device: str | None = "auto", dtype: str = "auto", batch_size: int = 32,
                 max_length: int | None = None, template: str | None = None, length_policy: str = "truncate",
                 layout: str = "auto", attn_implementation: str = "sdpa", merge_adapter: bool = True):
        from ..models import load_tokenizer

        if length_policy not in ("truncate", "error"):
            raise ConfigError("length_policy", f"scoring needs a score for every response: use truncate or error, "
                                               f"not {length_policy!r}")
        if batch_size < 1:
            raise ConfigError("batch_size", "must be at least 1")
        settings = read_settings(model_dir)
        self.model_dir = str(model_dir)
        self.tokenizer = load_tokenizer(self.model_dir, padding_side="right")
        self.template = get_template(template or settings.get("template", "auto"), self.tokenizer)
        self.max_length = max_length or settings.get("max_length")
        self.length_policy = length_policy
        self.batch_size = batch_size
        self._load = dict(device=device, dtype=dtype, attn_implementation=attn_implementation)
        self._merge, self._layout_choice = merge_adapter, layout
        self._model: Any = None
        self._layout: str | None = None
        self.__name__ = f"reward_model({Path(self.model_dir).name})"

    @property
    def model(self):
        """The reward model, loaded on first use (so bad input is reported before a slow load)."""
        if self._model is None:
            from ..models.heads import ScalarHeadModel, load_reward_model

            model = load_reward_model(self.model_dir, **self._load, merge_adapter=self._merge)
            if self._merge and isinstance(model, ScalarHeadModel):
                model.model = merge_adapter(model.model)
            self._model = model.eval()
        return self._model

    @property
    def layout(self) -> str:
        """shared_prompt or padded (see `posttrain.train.reward_batch`)."""
        if self._layout is None:
            from ..train.reward_batch import resolve_layout

            kernel = getattr(self.model.config, "_attn_implementation", self._load["attn_implementation"])
            self._layout = resolve_layout(self._layout_choice, kernel, self.model)
        return self._layout

    @property
    def pad_id(self) -> int:
        """The padding token. A sequence-classification model scores each row's rightmost token that is
        not its config's pad token, so rows are padded with that one: padding with the tokenizer's
        (another id in a TRL model saved with `pad_token_id = eos`) scored a short row at its padding."""
        from ..models.heads import ScalarHeadModel

        if not isinstance(self.model, ScalarHeadModel):
            config = self.model.config
            pad = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "pad_token_id", None)
            if pad is not None:
                return int(pad)
        return self.tokenizer.pad_token_id

    # ------------------------------------------------------------------ the core
    def score_groups(self, prompts: Sequence[str | list[Message]], responses: Sequence[Sequence[str]],
                     sources: Sequence[str | None] | None = None,
                     on_batch: Callable[[int, int], None] | None = None,
                     fields: Sequence[Sequence[str]] | None = None) -> list[list[float]]:
        """Scores of each prompt's responses: `responses[i]` all answer `prompts[i]`.

        `sources` ("FILE:LINE") and `fields` (names of each response's field) only
        serve error messages (length policy "error").

        The prompt of a group is computed once (shared_prompt layout); a group with more
        than `batch_size` responses is split into several.
        """
        from ..train.reward_batch import rewards_for_groups, tokenize_group

        groups, owners = [], []
        for index, (prompt, texts) in enumerate(zip(prompts, responses)):
            source = sources[index] if sources else None
            messages = _as_messages(prompt)
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start:start + self.batch_size])
                names = (list(fields[index]) if fields else [f"responses[{i}]" for i in range(len(texts))])
                groups.append(tokenize_group(messages, chunk, self.tokenizer, self.template, source=source,
                                             max_length=self.max_length, policy=self.length_policy,
                                             fields=names[start:start + len(chunk)]))
                owners.append(index)
        rewards = rewards_for_groups(self.model, groups, self.layout, self.pad_id,
                                     max_responses=self.batch_size, on_batch=on_batch)
        out: list[list[float]] = [[] for _ in prompts]
        for owner, values in zip(owners, rewards):
            out[owner].extend(float(v) for v in values)
        return out

    def score(self, prompts: Sequence[str | list[Message]], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response); responses to the same prompt share its forward."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        keys: dict[str, int] = {}
        unique: list[list[Message]] = []
        members: list[list[int]] = []
        for index, prompt in enumerate(prompts):
            messages = _as_messages(prompt)
            key = json.dumps(messages, sort_keys=True)
            if key not in keys:
                keys[key] = len(unique)
                unique.append(messages)
                members.append([])
            members[keys[key]].append(index)
        grouped = self.score_groups(unique, [[responses[i] for i in m] for m in members])
        scores = [0.0] * len(responses)
        for indices, values in zip(members, grouped):
            for i, value in zip(indices, values):
                scores[i] = value
        return scores

    # ------------------------------------------------------------------ reward-function interface
    def __call__(self, prompt: str | list[Message], response: str, **extra: Any) -> float:
        return self.score([prompt], [response])[0]

    def batch(self, prompts: Sequence[str | list[Message]], responses: Sequence[str],
              extras: Sequence[dict] | None = None) -> list[float]:
        return self.score(prompts, responses)


# --------------------------------------------------------------------------- the command

@dataclass
class ScoreConfig(DataArgs):
    model: str = help_field("", "reward model: a `posttrain rm` run directory (or its final/), or a HF "
                                "sequence-classification model")
    input: str = help_field("", "JSONL (or any data file) with prompt + response | chosen/rejected | responses")
    output: str = help_field("", "JSONL to write: the input rows with their scores added")
    batch_size: int = help_field(32, "responses per forward pass")
    max_length: int = help_field(0, "longest prompt + response in tokens (0: what the model was trained with)")
    length_policy: str = help_field("truncate", "longer examples: truncate (keep the prompt's end and the "
                                                "response's start) or error", choices=["truncate", "error"])
    template: str | None = help_field(None, "prompt template (default: the one the model was trained with)")
    layout: str = help_field("auto", "batch layout (see posttrain rm)", choices=["auto", "shared_prompt", "padded"])
    device: str = help_field("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    dtype: str = help_field("auto", "weights dtype: auto, float32, bfloat16, float16")
    overwrite: bool = help_field(False, "replace score fields that rows already have")
    progress: bool = help_field(True, "show a progress bar")


# output fields per row kind
_FIELDS = {"single": ("score",), "pair": ("chosen_score", "rejected_score"), "list": ("scores",)}


def _text(value: Any, path: str, line: int | None, field: str) -> str:
    """A response: text (may be empty: a model can answer with nothing) or one assistant message."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant":
        value = value[0].get("content")
    if not isinstance(value, str):
        raise InputError(path, line, field, f"expected text, got {type(value).__name__}")
    return value


def _is_conversation(value: Any) -> bool:
    """A whole conversation rather than one reply: an hh-rlhf transcript or a message list that is
    more than one assistant message."""
    if isinstance(value, list):
        return not (len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant")
    return is_transcript(value)


def parse_score_row(row: dict[str, Any], where: str, overwrite: bool) -> tuple[str, list[Message], list[str]]:
    """(kind, prompt messages, responses) of one input row; bad rows are located InputErrors."""

    path, line = split_location(where)
    if any(_is_conversation(row.get(name)) for name in ("chosen", "rejected")):
        # whole conversations (TRL's implicit prompt, ultrafeedback_binarized, hh-rlhf transcripts):
        # the data layer splits them into the shared prompt and the two replies, as dpo reads them
        for name in _FIELDS["pair"]:
            if name in row and not overwrite:
                raise InputError(path, line, name, "already present (human scores?); pass --overwrite to replace it")
        _, pair = parse_row(row, where, kind="preference")
        return "pair", pair.prompt, [pair.chosen, pair.rejected]
    if row.get("chosen") is not None or row.get("rejected") is not None:
        kind, texts = "pair", [_text(row.get("chosen"), path, line, "chosen"),
                               _text(row.get("rejected"), path, line, "rejected")]
    elif row.get("responses") is not None:
        value = row["responses"]
        if not isinstance(value, list) or not value:
            raise InputError(path, line, "responses", "expected a non-empty list of responses")
        kind, texts = "list", [_text(v, path, line, f"responses[{i}]") for i, v in enumerate(value)]
    elif row.get("response") is not None or row.get("completion") is not None:
        name = "response" if row.get("response") is not None else "completion"
        kind, texts = "single", [_text(row[name], path, line, name)]
    else:
        raise InputError(path, line, None, "nothing to score: expected a response, completion, chosen/rejected "
                                           "or responses field")
    for name in _FIELDS[kind]:
        if name in row and not overwrite:
            raise InputError(path, line, name, "already present (human scores?); pass --overwrite to replace it")
    return kind, parse_prompt(row, where).prompt, texts


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="resp", dynamic_ncols=True, mininterval=1.0)


def score_file(cfg: ScoreConfig) -> dict[str, float]:
    """Score `cfg.input` into `cfg.output`; returns counts and throughput."""

    for name in ("model", "input", "output"):
        if not getattr(cfg, name):
            raise ConfigError(name, f"required (--{name} ...)")
    rows, parsed, sources = [], [], []
    for where, row in read_rows(cfg.input, **read_kwargs(cfg)):
        parsed.append(parse_score_row(row, where, cfg.overwrite))
        rows.append(row)
        sources.append(where)
    if not rows:
        raise InputError(cfg.input, None, None, "no rows to score")
    scorer = RewardScorer(cfg.model, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                          max_length=cfg.max_length or None, template=cfg.template, length_policy=cfg.length_policy,
                          layout=cfg.layout)
    total = sum(len(texts) for _, _, texts in parsed)
    bar = _progress_bar(total, cfg.progress)
    tokens = 0

    def on_batch(responses: int, batch_tokens: int) -> None:
        nonlocal tokens
        tokens += batch_tokens
        bar.update(responses)

    started = time.perf_counter()
    names = {"single": lambda row, n: ["response" if row.get("response") is not None else "completion"],
             "pair": lambda row, n: ["chosen", "rejected"],
             "list": lambda row, n: [f"responses[{i}]" for i in range(n)]}
    fields = [names[kind](row, len(texts)) for row, (kind, _, texts) in zip(rows, parsed)]
    scores = scorer.score_groups([p for _, p, _ in parsed], [t for _, _, t in parsed], sources, on_batch, fields)
    seconds = max(time.perf_counter() - started, 1e-9)
    bar.close()
    out_rows = []
    for row, (kind, _, _), values in zip(rows, parsed, scores):
        if kind == "single":
            added = {"score": values[0]}
        elif kind == "pair":
            added = {"chosen_score": values[0], "rejected_score": values[1]}
        else:
            added = {"scores": values}
        out_rows.append({**row, **added})
    write_jsonl(cfg.output, out_rows)
    stats = {"rows": len(rows), "responses": total, "tokens": tokens, "seconds": seconds,
             "responses_per_s": total / seconds, "tokens_per_s": tokens / seconds}
    print(f"scored {total} responses in {len(rows)} rows ({tokens} tokens, layout {scorer.layout}) in {seconds:.1f}s: "
          f"{stats['responses_per_s']:.1f} responses/s, {stats['tokens_per_s']:.0f} tokens/s; wrote {cfg.output}")
    return stats


def main(argv: list[str]) -> int:
    cfg = parse_config(ScoreConfig, argv, prog="posttrain score", description=__doc__.splitlines()[0])
    score_file(cfg)
    return 0
