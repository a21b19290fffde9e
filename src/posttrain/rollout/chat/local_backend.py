"""A local Hugging Face causal LM as a chat backend.

Conversations are rendered with the tokenizer's chat template (with the
assistant generation prompt), sorted by length so each batch holds similar
lengths (less padding), left-padded (so every row's last prompt token sits at
the same position and generation continues from there), and generated in
batches of `batch_size`. Temperature 0 means greedy decoding; above 0, sampling.

A conversation longer than the model's context (minus `max_tokens`) is not
truncated: cutting a judge prompt would silently drop the question or an
answer. It fails instead (reply `None`, counted in `stats` as "prompt too long").
"""
from __future__ import annotations

from typing import Any, Sequence

from .backends import BackendStats, Message


def _context_limit(model: Any, tokenizer: Any) -> int | None:
    """The model's maximum sequence length, where it states one."""
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]  # HF uses 1e30 for "unset"
    return min(limits) if limits else None


class LocalChatBackend:
    """`ChatBackend` over an in-process `transformers` model and tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "local", batch_size: int = 8):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{name}: the tokenizer has no chat template")
        self.model, self.tokenizer, self.name, self.batch_size = model.eval(), tokenizer, name, max(1, batch_size)
        if tokenizer.pad_token_id is None:  # many base models ship without one; eos is the usual stand-in
            tokenizer.pad_token = tokenizer.eos_token
        self.stats = BackendStats()

    @classmethod
    def from_name(cls, name: str, *, batch_size: int = 8, device: str | None = None) -> "LocalChatBackend":
        """Load a model by alias (`smollm2-135m`, `tiny-random`), hub id or local path.

        `device` None means "auto": CUDA when available (in bfloat16/float16), else CPU.
        """
        from ...models import load_model, load_tokenizer

        model = load_model(name, device=device or "auto")
        return cls(model, load_tokenizer(name, padding_side="left"), name=name, batch_size=batch_size)

    def complete(self, conversations: Sequence[list[Message]], *, max_tokens: int = 512,
                 temperature: float = 0.0) -> list[str | None]:
        texts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                 for m in conversations]
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        self.stats.add(requests=len(ids))
        replies: list[str | None] = [None] * len(ids)
        limit = _context_limit(self.model, self.tokenizer)
        todo = []
        for i, row in enumerate(ids):
            if limit is not None and len(row) + max_tokens > limit:
                self.stats.add_failure("prompt too long")
            else:
                todo.append(i)
        todo.sort(key=lambda i: len(ids[i]))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for i, text in zip(chunk, self._generate([ids[i] for i in chunk], max_tokens, temperature)):
                replies[i] = text
            self.stats.add(completed=len(chunk))
        return replies

    def _generate(self, rows: list[list[int]], max_tokens: int, temperature: float) -> list[str]:
        """Left-pad token rows into one batch, generate, and decode only the new tokens."""
        import torch  # imported here so HTTP-only use of the chat backends does not load torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        device = next(self.model.parameters()).device
        sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature} if temperature > 0 else {
            "do_sample": False}
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                         max_new_tokens=max_tokens, pad_token_id=pad, **sampling)
        return self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
