"""posttrain's decoding loop (`rollout.decode`) against `model.generate`: same tokens, same
log-probabilities, same finish reasons, and finished rows really leave the batch."""
from __future__ import annotations

import pytest
import torch

from posttrain.rollout import decode as decode_module
from posttrain.rollout.generation import SamplingParams, generate


@pytest.fixture(scope="module")
def tiny():
    from posttrain.models import load_model, load_tokenizer

    torch.set_num_threads(1)
    return load_model("tiny-random", seed=3), load_tokenizer("tiny-random", padding_side="left")


@pytest.fixture()
def many_eos(tiny):
    """A seventh of the vocabulary ends a sequence, so sampled rows finish at different steps."""
    model, _ = tiny
    before = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = list(range(2, model.config.vocab_size, 7))
    yield
    model.generation_config.eos_token_id = before


def _prompts(tokenizer):
    return [tokenizer.encode(f"Tell me about the number {i} " * (1 + i % 3)) for i in range(5)]


def _both(model, tokenizer, params, **kwargs):
    ours = generate(model, tokenizer, _prompts(tokenizer), params, engine="posttrain", **kwargs)
    theirs = generate(model, tokenizer, _prompts(tokenizer), params, engine="transformers", **kwargs)
    return ours, theirs


def _same(ours, theirs, logprobs: bool = False):
    assert [g.response_ids for g in ours] == [g.response_ids for g in theirs]
    assert [g.finish_reason for g in ours] == [g.finish_reason for g in theirs]
    assert [g.text for g in ours] == [g.text for g in theirs]
    if logprobs:
        for a, b in zip(ours, theirs):
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


def test_greedy_matches_generate_with_logprobs(tiny, many_eos):
    model, tokenizer = tiny
    ours, theirs = _both(model, tokenizer, SamplingParams(max_new_tokens=12, temperature=0.0), batch_size=3,
                         return_logprobs=True)
    _same(ours, theirs, logprobs=True)
    assert {g.finish_reason for g in ours} == {"eos"}


@pytest.mark.parametrize("share_prompt", [True, False])
def test_seeded_sampling_matches_generate(tiny, many_eos, share_prompt):
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.95, top_k=40, n=3)
    ours, theirs = _both(model, tokenizer, params, batch_size=4, share_prompt=share_prompt,
                         prompt_seeds=[11, 12, 13, 14, 15], return_logprobs=True)
    _same(ours, theirs, logprobs=True)
    assert len({len(g.response_ids) for g in ours}) > 1  # rows finished at different steps


def test_stop_strings_cut_the_same_text(tiny):
    model, tokenizer = tiny
    reference = generate(model, tokenizer, _prompts(tokenizer), SamplingParams(max_new_tokens=12, temperature=0.0),
                         engine="transformers")
    stop = sorted({g.text[3:5] for g in reference if len(g.text) > 6})[:2]  # strings the model does write
    assert stop
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop=stop)
    ours, theirs = _both(model, tokenizer, params)
    _same(ours, theirs)
    assert any(g.finish_reason == "stop" for g in ours)


def test_finished_rows_leave_the_batch(tiny, many_eos):
    """Every decoding step runs only the rows still going: the summed batch rows over the steps
    equal the generated tokens (generate would run every row until the longest ends)."""
    model, tokenizer = tiny
    rows_per_call: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: rows_per_call.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        out = generate(model, tokenizer, _prompts(tokenizer), SamplingParams(max_new_tokens=12, temperature=0.9, n=2),
                       batch_size=5, engine="posttrain", prompt_seeds=[1, 2, 3, 4, 5])
    finally:
        hook.remove()
    assert sum(rows_per_call) == sum(len(g.response_ids) for g in out)  # no prefill pass here (n = 1)
    assert rows_per_call[-1] < rows_per_call[0]


def test_auto_falls_back_to_generate_for_processors_it_lacks(tiny, monkeypatch):
    model, tokenizer = tiny
    assert decode_module.can_decode(model)
    monkeypatch.setattr(model.generation_config, "repetition_penalty", 1.3)
    assert not decode_module.can_decode(model)

    def refuse(*args, **kwargs):
        raise AssertionError("rollout.decode ran although the model asks for a repetition penalty")
    monkeypatch.setattr("posttrain.rollout.generation.decode", refuse)
    out = generate(model, tokenizer, _prompts(tokenizer)[:2], SamplingParams(max_new_tokens=4, temperature=0.0))
    assert len(out) == 2


def test_a_cache_that_cannot_drop_rows_keeps_them_and_ignores_their_tokens(tiny, many_eos, monkeypatch):
    """Some cache classes have no `batch_select_indices`: finished rows then stay in the batch (as
    in `generate`) and what they write after their end is not recorded."""
    from transformers import DynamicCache

    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=10, temperature=0.9, n=3)
    theirs = generate(model, tokenizer, _prompts(tokenizer), params, engine="transformers", prompt_seeds=[1, 2, 3, 4, 5])
    owner = next(c for c in DynamicCache.__mro__ if "batch_select_indices" in vars(c))
    monkeypatch.delattr(owner, "batch_select_indices")
    ours = generate(model, tokenizer, _prompts(tokenizer), params, engine="posttrain", prompt_seeds=[1, 2, 3, 4, 5])
    _same(ours, theirs)
    assert len({len(g.response_ids) for g in ours}) > 1


def test_an_unknown_engine_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="engine 'vllm'"):
        generate(model, tokenizer, _prompts(tokenizer)[:1], SamplingParams(max_new_tokens=2), engine="vllm")
