"""Prompt templates: turn messages into the text a model reads.

A `Template` does two things:

- `prompt(messages, extra)` renders a conversation up to the point where the
  assistant's answer begins (for chat templates: `add_generation_prompt=True`).
- `turn(messages, content)` renders one assistant answer that follows
  `prompt(messages)`, ending with the end marker (the token that stops
  generation, usually the tokenizer's EOS). Text the template puts after the
  end marker (often a newline) is not part of the turn; it is carried into the
  next prompt, so it is never trained on.

So `prompt(m[:i]) + turn(m[:i], m[i])` is exactly what a model sees when it
generates answer i, and training on it teaches what generation will use.

Templates (pick one by name with `get_template(name, tokenizer)`):

- `chat`: the tokenizer's own chat template (Jinja, from tokenizer_config).
- `auto`: `chat` when the tokenizer has one, otherwise `basic`.
- `basic`: plain text; each user turn then a newline, each answer then EOS.
- `conversational`: "User:" / "Assistant:" labelled turns.
- `with_input`: "Instruction:" / "Input:" / "Response:" fields (Alpaca's
  instruction and input kept apart, no preamble).
- `alpaca`: an Alpaca-style preamble and "### Instruction / ### Input /
  ### Response" sections, written in our own words.

The built-in templates put the tokenizer's BOS text first when the tokenizer
adds BOS by itself, since segments are tokenised without special tokens.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..records import Message

TEMPLATE_NAMES = ("auto", "chat", "basic", "conversational", "with_input", "alpaca")


class Template:
    """Base class: subclasses set `name` and implement `prompt` and `turn`."""

    name = "template"
    end_marker = ""

    def prompt(self, messages: list[Message], extra: dict[str, Any] | None = None) -> str:
        raise NotImplementedError

    def turn(self, messages: list[Message], content: str, extra: dict[str, Any] | None = None) -> str:
        raise NotImplementedError

    def segments(self, messages: list[Message], extra: dict[str, Any] | None = None) -> list[tuple[str, bool]]:
        """Split a conversation into `(text, is_assistant_answer)` pieces, in order.

        The pieces concatenate to the conversation as a model sees it, up to the
        end of the last assistant answer. Each context piece is the next
        generation prompt minus what came before, so every answer is preceded by
        exactly the prompt that generation would use.
        """
        pieces: list[tuple[str, bool]] = []
        rendered = ""
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.prompt(messages[:index], extra)
            if not prompt.startswith(rendered):
                raise ValueError(
                    f"template {self.name!r} does not render this conversation incrementally: the prompt for "
                    f"assistant turn {index} does not extend the text before it")
            pieces.append((prompt[len(rendered):], False))
            answer = self.turn(messages[:index], message["content"], extra)
            pieces.append((answer, True))
            rendered = prompt + answer
        return [(text, trained) for text, trained in pieces if text]


class ChatTemplate(Template):
    """The tokenizer's chat template (`tokenizer.apply_chat_template`)."""

    name = "chat"

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.end_marker = tokenizer.eos_token or ""

    def render(self, messages: list[Message], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt)

    def prompt(self, messages: list[Message], extra: dict[str, Any] | None = None) -> str:
        return self.render(messages, True)

    def turn(self, messages: list[Message], content: str, extra: dict[str, Any] | None = None) -> str:
        prompt = self.render(messages, True)
        full = self.render(list(messages) + [{"role": "assistant", "content": content}], False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders an answer that does not extend its generation prompt")
        answer = full[len(prompt):]
        # Keep the answer up to and including its end marker; what follows is context.
        if self.end_marker and self.end_marker in answer:
            answer = answer[: answer.rindex(self.end_marker) + len(self.end_marker)]
        return answer


def _bos_text(tokenizer: Any) -> str:
    """The BOS token's text if this tokenizer adds BOS on its own (Llama-2 style), else ""."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None or not tokenizer.bos_token:
        return ""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == bos_id else ""


class _TextTemplate(Template):
    """Built-in templates: a header, then each message rendered by role."""

    def __init__(self, tokenizer: Any = None):
        self.end_marker = (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""
        self.bos = _bos_text(tokenizer) if tokenizer is not None else ""

    # Subclasses override these four.
    def header(self, messages: list[Message], extra: dict[str, Any] | None) -> str:
        system = [m["content"] for m in messages if m["role"] == "system"]
        return "".join(f"{text}\n\n" for text in system if text)

    def user(self, content: str, first: bool, extra: dict[str, Any] | None) -> str:
        raise NotImplementedError

    def answer_prefix(self) -> str:
        return ""

    def after_answer(self) -> str:
        return "\n"

    def prompt(self, messages: list[Message], extra: dict[str, Any] | None = None) -> str:
        text = self.bos + self.header(messages, extra)
        first_user = True
        for message in messages:
            if message["role"] == "user":
                text += self.user(message["content"], first_user, extra)
                first_user = False
            elif message["role"] == "assistant":
                text += self.answer_prefix() + message["content"] + self.end_marker + self.after_answer()
            elif message["role"] == "tool":
                text += f"[tool output]\n{message['content']}\n"
        return text + self.answer_prefix()

    def turn(self, messages: list[Message], content: str, extra: dict[str, Any] | None = None) -> str:
        return content + self.end_marker


class BasicTemplate(_TextTemplate):
    """`<system>\\n\\n<user>\\n<answer><eos>\\n<user>\\n...`: the least text around the content."""

    name = "basic"

    def user(self, content: str, first: bool, extra: dict[str, Any] | None) -> str:
        return f"{content}\n"


class ConversationalTemplate(_TextTemplate):
    """`System: ...\\nUser: ...\\nAssistant: ...<eos>\\n` labelled turns."""

    name = "conversational"

    def header(self, messages: list[Message], extra: dict[str, Any] | None) -> str:
        system = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
        return "".join(f"System: {text}\n" for text in system)

    def user(self, content: str, first: bool, extra: dict[str, Any] | None) -> str:
        return f"User: {content}\n"

    def answer_prefix(self) -> str:
        return "Assistant: "


def _instruction_parts(content: str, first: bool, extra: dict[str, Any] | None) -> tuple[str, str]:
    """(instruction, input): from an Alpaca row's fields for its first turn, else the turn's text."""
    if first and extra and isinstance(extra.get("instruction"), str):
        return extra["instruction"], extra.get("input") or ""
    return content, ""


class WithInputTemplate(_TextTemplate):
    """`Instruction: ...\\nInput: ...\\nResponse: ` with no preamble."""

    name = "with_input"

    def user(self, content: str, first: bool, extra: dict[str, Any] | None) -> str:
        instruction, input_text = _instruction_parts(content, first, extra)
        text = f"Instruction: {instruction}\n"
        if input_text.strip():
            text += f"Input: {input_text}\n"
        return text

    def answer_prefix(self) -> str:
        return "Response: "


class AlpacaTemplate(_TextTemplate):
    """A short preamble, then `### Instruction:` / `### Input:` / `### Response:` sections."""

    name = "alpaca"
    PREAMBLE = "The following is a task for you to carry out. Read it, then write a reply that does what it asks."
    PREAMBLE_WITH_INPUT = ("The following is a task for you to carry out, together with material to work from. "
                           "Read both, then write a reply that does what the task asks.")

    def header(self, messages: list[Message], extra: dict[str, Any] | None) -> str:
        system = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
        if system:  # a system prompt replaces the preamble
            return "\n".join(system) + "\n\n"
        has_input = bool(extra and isinstance(extra.get("input"), str) and extra["input"].strip())
        return (self.PREAMBLE_WITH_INPUT if has_input else self.PREAMBLE) + "\n\n"

    def user(self, content: str, first: bool, extra: dict[str, Any] | None) -> str:
        instruction, input_text = _instruction_parts(content, first, extra)
        text = f"### Instruction:\n{instruction}\n\n"
        if input_text.strip():
            text += f"### Input:\n{input_text}\n\n"
        return text

    def answer_prefix(self) -> str:
        return "### Response:\n"

    def after_answer(self) -> str:
        return "\n\n"


BUILTIN_TEMPLATES: dict[str, type[_TextTemplate]] = {
    "basic": BasicTemplate,
    "conversational": ConversationalTemplate,
    "with_input": WithInputTemplate,
    "alpaca": AlpacaTemplate,
}


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def get_template(name: str, tokenizer: Any = None) -> Template:
    """A template by name (see `TEMPLATE_NAMES`); `chat`/`auto` use the tokenizer's own template."""
    if name not in TEMPLATE_NAMES:
        raise ConfigError("template", f"{name!r} is not one of {', '.join(TEMPLATE_NAMES)}")
    if name == "auto":
        name = "chat" if tokenizer is not None and has_chat_template(tokenizer) else "basic"
    if name == "chat":
        if tokenizer is None or not has_chat_template(tokenizer):
            builtin = ", ".join(BUILTIN_TEMPLATES)
            raise ConfigError("template", "'chat' needs a tokenizer with a chat template; this one has none "
                              f"(use one of {builtin})")
        return ChatTemplate(tokenizer)
    return BUILTIN_TEMPLATES[name](tokenizer)
