"""Generation through an OpenAI-compatible completions server (the vLLM wire format), against a local stub.

The stub is a real HTTP server on 127.0.0.1 speaking vLLM's `/v1/completions` with token-id
prompts and token-id outputs, and its runtime LoRA endpoints. What cannot be tested here:
vLLM itself (its sampling, its adapter loading, full-weight sync); see docs/distributed.md.
"""
from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from posttrain.errors import ConfigError
from posttrain.rollout.generation import SamplingParams, generate
from posttrain.rollout.server_generation import CompletionsServer, LoraWeightSync, ServerError, server_generate


class VllmStub:
    """`handler(path, body) -> (status, body)`; scripted replies are used first, in order."""

    def __init__(self, handler):
        self.handler, self.requests, self.script = handler, [], deque()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                stub.requests.append((self.path, body))
                status, reply = stub.script.popleft() if stub.script else stub.handler(self.path, body)
                data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(reply, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tiny():
    from posttrain.models import load_model, load_tokenizer

    return load_model("tiny-random", seed=0).eval(), load_tokenizer("tiny-random")


def completion(choices):
    return 200, {"id": "cmpl-stub", "object": "text_completion", "model": "stub", "choices": choices}


def local_model_handler(model, tokenizer):
    """Answer completions like vLLM would, with the local model: greedy, raw sampled ids
    (EOS included, stop-string tokens included), text, finish_reason."""
    def handle(path, body):
        assert path == "/v1/completions"
        params = SamplingParams(max_new_tokens=body["max_tokens"], temperature=0.0, n=body["n"])
        out = generate(model, tokenizer, body["prompt"], params, batch_size=len(body["prompt"]), return_logprobs=True)
        return completion([{"index": i, "text": g.text, "token_ids": g.response_ids,
                            "logprobs": {"tokens": [f"token_id:{t}" for t in g.response_ids], "token_logprobs": g.logprobs},
                            "finish_reason": "length" if g.finish_reason == "length" else "stop"}
                           for i, g in enumerate(out)])
    return handle


def test_server_generation_equals_local_generation(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode("hello there"), tokenizer.encode("a"), tokenizer.encode("one two three four")]
    params = SamplingParams(max_new_tokens=12, temperature=0.0, n=1)  # (transformers allows n > 1 only when sampling)
    stub = VllmStub(local_model_handler(model, tokenizer))
    try:
        server = CompletionsServer(stub.url + "/v1", model="tiny", concurrency=2)
        remote = server_generate(server, tokenizer, prompts, params, batch_size=2, return_logprobs=True,
                                 eos_ids={tokenizer.eos_token_id})
    finally:
        stub.close()
    local = generate(model, tokenizer, prompts, params, batch_size=3, return_logprobs=True)
    assert [(g.prompt_index, g.sample_index) for g in remote] == [(0, 0), (1, 0), (2, 0)]
    for r, l in zip(remote, local):
        assert (r.prompt_ids, r.response_ids, r.text, r.finish_reason) == (l.prompt_ids, l.response_ids, l.text, l.finish_reason)
        assert r.logprobs == pytest.approx(l.logprobs, abs=1e-5)
    sent = [body for _, body in stub.requests]
    chunks = sorted((body["prompt"] for body in sent), key=len, reverse=True)  # two chunks, in flight together
    assert chunks == [prompts[:2], prompts[2:]]
    assert all(body["model"] == "tiny" and body["n"] == 1 and body["return_token_ids"] is True for body in sent)


def test_raw_server_tokens_are_cut_at_eos_and_after_stop_strings(tiny):
    _, tokenizer = tiny
    eos = tokenizer.eos_token_id
    word = lambda text: tokenizer.encode(text, add_special_tokens=False)
    tokens_with_stop = word("yes") + word(" STOP") + word(" more")
    stub = VllmStub(lambda path, body: completion([
        {"index": 1, "text": "", "token_ids": tokens_with_stop, "finish_reason": "stop", "stop_reason": " STOP"},
        {"index": 0, "text": "", "logprobs": {"tokens": [f"token_id:{t}" for t in [*word("ok"), eos, *word("junk")]],
                                              "token_logprobs": [-0.5] * (len(word("ok")) + 1 + len(word("junk")))},
         "finish_reason": "stop"},
        {"index": 2, "text": "", "token_ids": word("abc"), "finish_reason": "length"},
    ]))
    try:
        server = CompletionsServer(stub.url, model="m")
        out = server_generate(server, tokenizer, [[1, 2]], SamplingParams(max_new_tokens=8, n=3, stop=[" STOP"]),
                              return_logprobs=True)
    finally:
        stub.close()
    eos_cut, stop_cut, length = out
    assert eos_cut.response_ids == [*word("ok"), eos] and eos_cut.finish_reason == "eos" and eos_cut.text == "ok"
    assert eos_cut.logprobs == [-0.5] * (len(word("ok")) + 1)
    assert stop_cut.finish_reason == "stop" and stop_cut.text == "yes"
    assert stop_cut.response_ids == tokens_with_stop[:len(stop_cut.response_ids)]
    assert " STOP" in tokenizer.decode(stop_cut.response_ids) and "more" not in tokenizer.decode(stop_cut.response_ids)
    assert length.finish_reason == "length" and length.response_ids == word("abc") and length.logprobs is None


def test_transient_failures_are_retried_and_others_are_one_line_errors(tiny):
    _, tokenizer = tiny
    good = completion([{"index": 0, "text": "", "token_ids": [5, 6], "finish_reason": "length"}])
    stub = VllmStub(lambda path, body: good)
    try:
        server = CompletionsServer(stub.url, model="m", max_retries=2)
        stub.script.extend([(503, {"error": {"message": "busy"}}), (429, "slow down")])
        [g] = server_generate(server, tokenizer, [[1]], SamplingParams(max_new_tokens=2))
        assert g.response_ids == [5, 6] and len(stub.requests) == 3
        stub.script.append((400, {"error": {"message": "This model's maximum context length is 8"}}))
        with pytest.raises(ServerError, match="HTTP 400: This model's maximum context length is 8"):
            server_generate(server, tokenizer, [[1]], SamplingParams(max_new_tokens=2))
        stub.script.append(completion([{"index": 0, "text": "only text", "finish_reason": "stop"}]))
        with pytest.raises(ServerError, match="without token ids"):
            server_generate(server, tokenizer, [[1]], SamplingParams(max_new_tokens=2))
        stub.script.append(completion([]))
        with pytest.raises(ServerError, match="expected 2 choices for 1 prompts x n=2, got 0"):
            server_generate(server, tokenizer, [[1]], SamplingParams(max_new_tokens=2, n=2))
    finally:
        stub.close()
    with pytest.raises(ConfigError, match="expected an http:// or https:// URL"):
        CompletionsServer("localhost:8000", model="m")


def test_lora_weight_sync_saves_the_adapter_and_swaps_the_served_name(tiny, tmp_path):
    from posttrain.models import load_model
    from posttrain.models.peft import apply_peft

    _, tokenizer = tiny
    stub = VllmStub(lambda path, body: (200, "Success: LoRA adapter loaded.") if "lora" in path else
                    completion([{"index": 0, "text": "", "token_ids": [7], "finish_reason": "length"}]))
    try:
        server = CompletionsServer(stub.url, model="base")
        sync = LoraWeightSync(server, tmp_path / "pushed")
        policy = apply_peft(load_model("tiny-random", seed=0), "lora", r=2, target_modules="all-linear")
        assert sync.push(policy, 1) == "policy-step-1"
        assert sync.push(policy, 2) == "policy-step-2"
        server_generate(server, tokenizer, [[1]], SamplingParams(max_new_tokens=1))
        with pytest.raises(ConfigError, match="needs a LoRA policy"):
            sync.push(load_model("tiny-random", seed=0), 3)
    finally:
        stub.close()
    paths = [(path, body) for path, body in stub.requests]
    assert paths[0] == ("/v1/load_lora_adapter", {"lora_name": "policy-step-1", "lora_path": str((tmp_path / "pushed" / "step-1").resolve())})
    assert paths[1][0] == "/v1/load_lora_adapter" and paths[1][1]["lora_name"] == "policy-step-2"
    assert paths[2] == ("/v1/unload_lora_adapter", {"lora_name": "policy-step-1"})
    assert paths[3][0] == "/v1/completions" and paths[3][1]["model"] == "policy-step-2"
    assert (tmp_path / "pushed" / "step-2" / "adapter_model.safetensors").is_file()
