"""Sampling through an OpenAI-compatible completions server (vLLM), and pushing LoRA weights to it.

Status: a library seam, not yet a command option. No posttrain command calls it (the RL
commands sample in-process with `transformers.generate`); it is tested against a stub server
only, never a real vLLM. docs/distributed.md says the same.

For online RL at scale the trainer's GPUs should not also run `generate`: a
vLLM server (`vllm serve MODEL`) on other GPUs samples far faster (paged KV
cache, continuous batching). `server_generate` is a drop-in for
`rollout.generation.generate`: the same token-id prompts and `SamplingParams`
in, the same `Generation` records out (response token ids up to and including
EOS, cut after a stop string; text cut before it; finish reason eos/stop/length;
optional per-token log-probs).

Wire format (POST {url}/v1/completions, one request per chunk of prompts):
    {"model", "prompt": [[ids...], ...], "n", "max_tokens", "temperature",
     "top_p", "top_k" (-1: off), "seed", "stop", "skip_special_tokens": false,
     "include_stop_str_in_output": true, "return_token_ids": true,
     "logprobs": 0, "return_tokens_as_token_ids": true}
The last four are vLLM extensions that return the sampled token ids (newer vLLM:
`choices[i].token_ids`; older: `logprobs.tokens` as "token_id:N"), so the trainer
scores exactly the tokens that were sampled, never a re-tokenisation of text.
Choice `index` k answers prompt k // n, sample k % n.

Weights: `LoraWeightSync` saves the trainer's LoRA adapter to a directory the
server can read and registers it under a new name with vLLM's runtime adapter
API (`POST /v1/load_lora_adapter`; start vLLM with `--enable-lora` and
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), then unloads the previous one; later
requests name the new adapter. Full-weight sync (NCCL broadcast into the vLLM
workers, as TRL and OpenRLHF do) needs vLLM itself and GPUs, and is not
implemented here; see docs/distributed.md.

Layer note: this module is rollout-level (it builds `rollout.generation`
records, imported lazily); nothing in train/ imports it.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, PosttrainError
from ..models.saving import save_model_files
from .generation import Generation, cut_at_eos, cut_at_stop

TOKEN_ID_PREFIX = "token_id:"


class ServerError(PosttrainError):
    """The generation server failed or answered something that is not a completion."""


@dataclass
class CompletionsServer:
    """Where to send completion requests. `url`: the server root, its `/v1` base, or the endpoint."""

    url: str
    model: str  # the served model's name, or the name a LoRA adapter was loaded under
    timeout: float = 600.0
    max_retries: int = 3
    concurrency: int = 4  # chunks in flight at once
    api_key_env: str = ""  # name of an environment variable holding a bearer token
    _client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        url = self.url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError("generation_server", f"expected an http:// or https:// URL, got {self.url!r}")
        for suffix in ("/v1/completions", "/completions", "/v1"):
            url = url.removesuffix(suffix)
        self.root = url

    def endpoint(self, path: str) -> str:
        return f"{self.root}/v1/{path}"

    def post(self, path: str, body: dict[str, Any], expect_json: bool = True) -> Any:
        """POST JSON; retry timeouts, connection errors, 429 and 5xx; raise ServerError otherwise.
        Returns the decoded JSON reply (or the text, with `expect_json=False`: vLLM's adapter
        endpoints answer in plain text)."""
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        headers = {}
        if self.api_key_env and os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
            try:
                response = self._client.post(self.endpoint(path), json=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise ServerError(f"{self.endpoint(path)}: HTTP {response.status_code}: {error_message(response)}")
            if not expect_json:
                return response.text
            try:
                return response.json()
            except ValueError:
                raise ServerError(f"{self.endpoint(path)}: the reply is not JSON") from None
        raise ServerError(f"{self.endpoint(path)}: gave up after {self.max_retries + 1} tries ({problem})")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def error_message(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))[:200]
    return str(error or body)[:200]


def request_body(model: str, prompts: Sequence[Sequence[int]], params, return_logprobs: bool) -> dict[str, Any]:
    """The completions request for token-id prompts (see the module docstring)."""
    greedy = params.temperature <= 0
    return {
        "model": model, "prompt": [list(p) for p in prompts], "n": params.n, "max_tokens": params.max_new_tokens,
        "temperature": 0.0 if greedy else params.temperature, "top_p": 1.0 if greedy else params.top_p,
        "top_k": -1 if greedy or not params.top_k else params.top_k, "seed": params.seed,
        "stop": list(params.stop) or None, "skip_special_tokens": False, "include_stop_str_in_output": True,
        "return_token_ids": True, "logprobs": 0, "return_tokens_as_token_ids": True,
    }


def choice_tokens(choice: dict[str, Any]) -> tuple[list[int], list[float] | None]:
    """(sampled token ids, their log-probs or None) of one returned choice."""
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs")
    if isinstance(choice.get("token_ids"), list):
        ids = [int(t) for t in choice["token_ids"]]
    elif isinstance(logprobs.get("tokens"), list) and all(
            isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in logprobs["tokens"]):
        ids = [int(t[len(TOKEN_ID_PREFIX):]) for t in logprobs["tokens"]]
    else:
        raise ServerError("the server returned text without token ids; posttrain needs the sampled ids "
                          "(vLLM: return_token_ids or return_tokens_as_token_ids)")
    if values is not None and len(values) != len(ids):
        values = None
    return ids, None if values is None else [float(v) for v in values]


def server_generate(server: CompletionsServer, tokenizer, prompts: Sequence[Sequence[int]], params,
                    batch_size: int = 64, return_logprobs: bool = False,
                    eos_ids: set[int] | None = None) -> list:
    """`rollout.generation.generate`, with the sampling done by `server`. Prompt-major order."""

    if not prompts:
        return []
    eos = set(eos_ids) if eos_ids is not None else {tokenizer.eos_token_id}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    starts = list(range(0, len(prompts), batch_size))

    def run(start: int) -> list:
        chunk = prompts[start:start + batch_size]
        reply = server.post("completions", request_body(server.model, chunk, params, return_logprobs))
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or len(choices) != len(chunk) * params.n:
            got = len(choices) if isinstance(choices, list) else "no"
            raise ServerError(f"expected {len(chunk) * params.n} choices for {len(chunk)} prompts x n={params.n}, got {got}")
        out = []
        for position, choice in enumerate(sorted(choices, key=lambda c: c.get("index", 0))):
            prompt, sample = divmod(int(choice.get("index", position)), params.n)
            tokens, logprobs = choice_tokens(choice)
            tokens, hit_eos = cut_at_eos(tokens, eos, pad_id)
            if params.stop:
                tokens, text, hit_stop = cut_at_stop(tokens, decode, params.stop)
            else:
                text, hit_stop = decode(tokens), False
            reason = "stop" if hit_stop else "eos" if hit_eos else "length"
            kept = logprobs[:len(tokens)] if return_logprobs and logprobs is not None else None
            out.append(Generation(start + prompt, sample, list(chunk[prompt]), tokens, text, reason, kept))
        return out

    with ThreadPoolExecutor(max_workers=max(1, min(server.concurrency, len(starts)))) as pool:
        results = [g for part in pool.map(run, starts) for g in part]
    return sorted(results, key=lambda g: (g.prompt_index, g.sample_index))


class LoraWeightSync:
    """Push the trainer's LoRA adapter to a vLLM server after each update (main process only).

    `push(model, step)` saves the adapter to `directory/step-N` (which the server
    must be able to read: same machine or shared storage), loads it as
    `{prefix}-step-N`, points `server.model` at it, and unloads the previous one.
    """

    def __init__(self, server: CompletionsServer, directory: str | Path, prefix: str = "policy"):
        self.server = server
        self.directory = Path(directory)
        self.prefix = prefix
        self.loaded: str | None = None

    def push(self, model, step: int) -> str:

        if getattr(model, "peft_config", None) is None:
            raise ConfigError("peft", "pushing weights to a generation server needs a LoRA policy (--peft lora); "
                                      "full-weight sync is not implemented (docs/distributed.md)")
        name = f"{self.prefix}-step-{step}"
        path = self.directory / f"step-{step}"
        save_model_files(model, path)
        self.server.post("load_lora_adapter", {"lora_name": name, "lora_path": str(path.resolve())}, expect_json=False)
        previous, self.loaded, self.server.model = self.loaded, name, name
        if previous is not None:
            self.server.post("unload_lora_adapter", {"lora_name": previous}, expect_json=False)
        return name
