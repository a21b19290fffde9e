"""Tokenisation with loss only on the assistant's answers, and the max-length policy.

`tokenize_conversation` renders a conversation piece by piece with a `Template`
(context, answer, context, answer, ...), tokenises each piece on its own and
concatenates them. Context tokens get label -100 (ignored by the loss); every
assistant answer, in every turn, keeps its token ids as labels. Tokenising the
generation prompt on its own is exactly what happens at generation time, so the
training tokens match the tokens the model will be conditioned on later.

`tokenize_prompt_response` gives `(prompt_ids, response_ids)` for the pairwise
and unpaired methods (DPO, reward models, KTO); the response ends with the
end-of-turn / EOS token.

Max-length policy (`policy`), applied when an example has more than
`max_length` tokens:

- "error": raise `InputError` naming the example's file and line and its length.
- "drop": skip the example (the function returns None) and count it.
- "truncate": keep the end of the prompt and the start of the response. The
  response (everything from the first trained token on) is guaranteed
  `min(len(response), max_length // 2)` tokens; the prompt is cut from the left
  (oldest context goes first, so the question nearest the answer stays) to fit
  the rest; if it still does not fit the response is cut from the right. A cut
  response loses its end marker, so the model is not taught to stop there.

Raw text rows (`Text`, for language modelling / continued pre-training) are
trained on every token: `tokenize_text` appends EOS and, instead of applying the
length policy, cuts a text longer than `max_length` into consecutive pieces of
`max_length` tokens, so no text is lost.

`encode` tokenises a long text in pieces of at most `ENCODE_CHUNK_CHARS`
characters, cut at a line break or space, so the tokenizer's memory does not
grow with the longest text (the ids at a cut can differ from tokenising the
whole text at once only when a token would have spanned the cut).

`LengthStats` counts what the policy did, for the training log and `data check`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import InputError
from ..records import Conversation, Message, Text
from .readers import split_location
from .templates import Template

IGNORE_INDEX = -100
POLICIES = ("error", "truncate", "drop")
ENCODE_CHUNK_CHARS = 64 * 1024


@dataclass
class TokenizedExample:
    """One training sequence. `labels[i]` is `input_ids[i]` on trained tokens, -100 elsewhere."""

    input_ids: list[int]
    labels: list[int]
    source: str | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class LengthStats:
    """How many examples were seen, and how many the max-length policy cut or dropped."""

    seen: int = 0
    truncated: int = 0
    dropped: int = 0
    longest: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)

    def add(self, length: int) -> None:
        self.seen += 1
        self.longest = max(self.longest, length)
        self.lengths.append(length)

    @property
    def kept(self) -> int:
        return self.seen - self.dropped

    def summary(self) -> str:
        return (f"{self.seen} examples, longest {self.longest} tokens; "
                f"{self.truncated} truncated, {self.dropped} dropped")

    def to_dict(self) -> dict[str, int]:
        return {"seen": self.seen, "kept": self.kept, "truncated": self.truncated, "dropped": self.dropped,
                "longest": self.longest}


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added (templates write their own); a text
    longer than ENCODE_CHUNK_CHARS is tokenised piece by piece (see the module doc)."""
    ids: list[int] = []
    for piece in text_pieces(text, ENCODE_CHUNK_CHARS):
        ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def text_pieces(text: str, size: int) -> list[str]:
    """`text` cut into pieces of at most `size` characters, each cut just before a line break or
    a space in the second half of the piece when there is one (so words stay whole)."""
    pieces, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n", start + size // 2, end)
            if cut <= start:
                cut = text.rfind(" ", start + size // 2, end)
            if cut > start:
                end = cut
        pieces.append(text[start:end])
        start = end
    return pieces


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


def too_long_error(source: str | None, field_name: str, length: int, max_length: int) -> InputError:
    path, line = split_location(source)
    return InputError(path, line, field_name, f"example is {length} tokens, longer than max_length {max_length}"
                      " (use the 'truncate' or 'drop' length policy, or raise max_length)")


def _truncate(prompt: list[int], responses: list[list[int]], max_length: int) -> tuple[list[int], list[list[int]]]:
    """Cut `prompt` from the left and each response from the right to fit `max_length` (see module doc)."""
    longest = max((len(r) for r in responses), default=0)
    reserved = min(longest, max_length // 2)  # response tokens that are guaranteed to stay
    keep = min(len(prompt), max_length - reserved)
    prompt = prompt[len(prompt) - keep:]
    room = max_length - len(prompt)
    return prompt, [r[:room] for r in responses]


def apply_length_policy(prompt: list[int], responses: list[list[int]], max_length: int | None, policy: str,
                        source: str | None = None, stats: LengthStats | None = None,
                        field_name: str = "prompt") -> tuple[list[int], list[list[int]]] | None:
    """Fit `prompt + response` (for each response) into `max_length` under `policy`.

    Several responses share one prompt (chosen/rejected), so they are cut
    consistently: the prompt is cut once, by what the longest response needs.
    Returns the fitted ids, or None when the policy drops the example.
    """
    _check_policy(policy)
    length = len(prompt) + max((len(r) for r in responses), default=0)
    if stats is not None:
        stats.add(length)
    if max_length is None or length <= max_length:
        return prompt, responses
    if policy == "error":
        raise too_long_error(source, field_name, length, max_length)
    if policy == "drop":
        if stats is not None:
            stats.dropped += 1
        return None
    if stats is not None:
        stats.truncated += 1
    return _truncate(prompt, responses, max_length)


def tokenize_conversation(conversation: Conversation, tokenizer: Any, template: Template,
                          max_length: int | None = None, policy: str = "error",
                          stats: LengthStats | None = None) -> TokenizedExample | None:
    """Tokenise an SFT conversation with labels on every assistant answer (-100 elsewhere).

    Returns None when `policy="drop"` drops an over-long example.
    """
    try:
        pieces = template.segments(conversation.messages, conversation.extra)
    except ValueError as exc:
        path, line = split_location(conversation.source)
        raise InputError(path, line, "messages", str(exc)) from None
    input_ids: list[int] = []
    labels: list[int] = []
    for text, trained in pieces:
        ids = encode(tokenizer, text)
        input_ids += ids
        labels += ids if trained else [IGNORE_INDEX] * len(ids)
    if not any(label != IGNORE_INDEX for label in labels):
        path, line = split_location(conversation.source)
        raise InputError(path, line, "messages", "no assistant tokens to train on")
    # For the length policy the "prompt" is everything before the first trained token.
    start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    fitted = apply_length_policy(input_ids[:start], [input_ids[start:]], max_length, policy,
                                 conversation.source, stats, field_name="messages")
    if fitted is None:
        return None
    prompt, (rest,) = fitted
    cut_left = start - len(prompt)
    kept_labels = labels[cut_left: cut_left + len(prompt) + len(rest)]
    return TokenizedExample(prompt + rest, kept_labels, conversation.source)


def tokenize_text(record: Text, tokenizer: Any, max_length: int | None = None,
                  stats: LengthStats | None = None) -> list[TokenizedExample]:
    """A raw text as training examples with every token trained on, ending with EOS; cut into
    consecutive pieces of `max_length` tokens when longer (the length policy does not apply)."""
    ids = encode(tokenizer, record.text)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.append(eos)
    if stats is not None:
        stats.add(len(ids))
    step = max_length or len(ids)
    return [TokenizedExample(ids[i:i + step], ids[i:i + step], record.source) for i in range(0, len(ids), step)]


def tokenize_prompt_response(prompt_messages: list[Message], response: str, tokenizer: Any, template: Template,
                             extra: dict[str, Any] | None = None) -> tuple[list[int], list[int]]:
    """`(prompt_ids, response_ids)`; the response ends with the end-of-turn / EOS token.

    The prompt is the generation prompt (ending where the answer begins).
    Use `apply_length_policy` on the result to fit a max length.
    """
    prompt_ids = encode(tokenizer, template.prompt(prompt_messages, extra))
    turn = template.turn(prompt_messages, response, extra)
    response_ids = encode(tokenizer, turn)
    eos = getattr(tokenizer, "eos_token_id", None)
    # A turn that does not end with the template's end marker still needs a stop token to learn.
    ends_with_marker = bool(template.end_marker) and turn.endswith(template.end_marker)
    if eos is not None and not ends_with_marker and (not response_ids or response_ids[-1] != eos):
        response_ids.append(eos)
    return prompt_ids, response_ids


def tokenize_conversations(conversations: Sequence[Conversation | Text], tokenizer: Any, template: Template,
                           max_length: int | None = None, policy: str = "error"
                           ) -> tuple[list[TokenizedExample], LengthStats]:
    """Tokenise many conversations (and raw texts, see `tokenize_text`); dropped ones are left
    out and counted in the stats."""
    stats = LengthStats()
    examples = []
    for conversation in conversations:
        if isinstance(conversation, Text):
            examples += tokenize_text(conversation, tokenizer, max_length, stats)
            continue
        example = tokenize_conversation(conversation, tokenizer, template, max_length, policy, stats)
        if example is not None:
            examples.append(example)
    return examples, stats
