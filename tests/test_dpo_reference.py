"""Reference strategies agree: a frozen copy and the adapter-disabled policy give the same log-probs;
the on-disk cache equals what it caches, is reused by a rerun, and is never used when stale."""
from __future__ import annotations

import json
import os

import pytest
import torch

from posttrain.errors import ConfigError
from posttrain.train import reference as ref_module
from posttrain.train.accelerator import make_accelerator
from posttrain.train.dpo import DPOConfig, train_dpo
from posttrain.train.preference_batch import BatchLayout
from posttrain.train.preference_data import load_pairs
from posttrain.train.reference import (
    adapter_reference,
    build_reference,
    copy_reference,
    load_reference_model,
    resolve_strategy,
)
from posttrain.train.setup import load_trainable_model


def setup(tmp_path, data, **overrides):
    from posttrain.data import get_template
    from posttrain.models import load_tokenizer

    cfg = DPOConfig(**{**dict(model="tiny-random", data=str(data), output_dir=str(tmp_path / "run"), batch_size=4,
                              max_length=64, progress=False, seed=5), **overrides})
    tokenizer = load_tokenizer("tiny-random")
    template = get_template(cfg.template, tokenizer)
    examples, _ = load_pairs(cfg.data, tokenizer, template, max_length=cfg.max_length, length_policy="drop")
    return cfg, examples, BatchLayout(tokenizer.pad_token_id)


def test_copy_and_adapter_references_agree_with_lora(tmp_path, preference_file):
    cfg, examples, layout = setup(tmp_path, preference_file(6), peft="lora", lora_r=4)
    policy = load_trainable_model(cfg, seed=cfg.seed, quiet=True)
    copy = copy_reference(load_reference_model(cfg, torch.device("cpu")))
    adapter = adapter_reference(policy)
    batch = layout.pairs(examples)
    at_init = copy.sequence_logps(batch, (0, 1))
    torch.testing.assert_close(adapter.sequence_logps(batch, (0, 1)), at_init, rtol=0, atol=1e-6)
    # Train-like change to the adapter: the policy moves, the adapter-disabled reference does not.
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
    from posttrain.train.preference_batch import sequence_logps

    assert (sequence_logps(policy, batch).logps - at_init).abs().max() > 1e-3
    torch.testing.assert_close(adapter.sequence_logps(batch, (0, 1)), at_init, rtol=0, atol=1e-6)
    assert policy.training  # the reference pass restored train mode


def score_pairs(layout):
    def score(reference, chunk):
        return reference.sequence_logps(layout.pairs(chunk), (0, 1)).view(2, -1).T
    return score


def cached(cfg, examples, layout, policy, accelerator, key_parts=None):
    return build_reference("cached", cfg, policy, accelerator, datasets=[(cfg.data, examples)],
                           score=score_pairs(layout), token_fields=("prompt_ids", "chosen_ids", "rejected_ids"),
                           key_parts=key_parts or {"recipe": "test", "model": "tiny-random:5"})


def test_cache_equals_computed_is_reused_and_never_stale(tmp_path, preference_file):
    data = preference_file(10)
    cfg, examples, layout = setup(tmp_path, data)
    accelerator = make_accelerator(cfg)
    policy = load_trainable_model(cfg, seed=cfg.seed, quiet=True)
    expected = copy_reference(load_reference_model(cfg, torch.device("cpu"))).sequence_logps(layout.pairs(examples), (0, 1))

    passes = ref_module.cache_passes
    first = cached(cfg, examples, layout, policy, accelerator)
    assert ref_module.cache_passes == passes + 1 and not first.caches[0].hit
    path = first.caches[0].path
    # In posttrain's cache root ($POSTTRAIN_CACHE, set per session in conftest.py), not beside the data.
    assert path.startswith(os.path.join(os.environ["POSTTRAIN_CACHE"], "reference", "pairs.jsonl.ref-"))
    assert not (data.parent / ".posttrain-cache").exists()
    torch.testing.assert_close(first.sequence_logps(layout.pairs(examples), (0, 1)), expected, rtol=0, atol=1e-5)

    # A rerun (fresh examples, same everything) reads the file: no new pass.
    cfg, examples, layout = setup(tmp_path, data)
    second = cached(cfg, examples, layout, policy, accelerator)
    assert ref_module.cache_passes == passes + 1 and second.caches[0].hit and second.caches[0].path == path
    torch.testing.assert_close(second.table, first.table)

    # Another reference model, or changed data, gives another key: computed again, old file untouched.
    third = cached(cfg, examples, layout, policy, accelerator, key_parts={"recipe": "test", "model": "other"})
    assert not third.caches[0].hit and third.caches[0].path != path
    with open(data, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "new", "chosen": "YES a", "rejected": "NO! a"}) + "\n")
    cfg, examples, layout = setup(tmp_path, data)
    fourth = cached(cfg, examples, layout, policy, accelerator)
    assert not fourth.caches[0].hit and fourth.table.shape == (11, 2)
    assert ref_module.cache_passes == passes + 3


def test_a_damaged_cache_file_is_recomputed(tmp_path, preference_file):
    cfg, examples, layout = setup(tmp_path, preference_file(6))
    accelerator = make_accelerator(cfg)
    policy = load_trainable_model(cfg, seed=cfg.seed, quiet=True)
    first = cached(cfg, examples, layout, policy, accelerator)
    with open(first.caches[0].path, "r+b") as handle:
        handle.truncate(40)
    cfg, examples, layout = setup(tmp_path, cfg.data)
    again = cached(cfg, examples, layout, policy, accelerator)
    assert not again.caches[0].hit
    torch.testing.assert_close(again.table, first.table)


def test_rerun_of_dpo_reads_the_cache_and_trains_identically(tmp_path, preference_file, monkeypatch):
    # A cache of its own: another test that trained on the same rows (same key) must not
    # make the first run here a hit.
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    data = preference_file(8)
    results = []
    for name in ("a", "b"):
        cfg = DPOConfig(model="tiny-random", data=str(data), output_dir=str(tmp_path / name), batch_size=4, max_steps=1,
                        learning_rate=1e-3, progress=False, max_length=64)
        passes = ref_module.cache_passes
        train_dpo(cfg)
        report = json.loads((tmp_path / name / "data_report.json").read_text())
        results.append((ref_module.cache_passes - passes, report["reference"]["caches"][0]["hit"],
                        json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])))
    assert [r[:2] for r in results] == [(1, False), (0, True)]
    assert results[0][2]["loss"] == results[1][2]["loss"]


def test_cached_reference_matches_copy_in_training(tmp_path, preference_file):
    """Two steps with --reference copy and with --reference cached log the same metrics."""
    data = preference_file(8)
    rows = {}
    for strategy in ("copy", "cached"):
        cfg = DPOConfig(model="tiny-random", data=str(data), output_dir=str(tmp_path / strategy), batch_size=4,
                        max_steps=2, learning_rate=1e-3, progress=False, max_length=64, reference=strategy)
        train_dpo(cfg)
        rows[strategy] = [json.loads(line) for line in (tmp_path / strategy / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows["copy"], rows["cached"]):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected"):
            assert a[key] == pytest.approx(b[key], abs=1e-5)


def test_strategy_resolution(tmp_path, preference_file):
    local = [str(preference_file(2))]
    assert resolve_strategy("auto", needs_reference=False, peft="lora", ref_model=None, data_paths=local) is None
    assert resolve_strategy("auto", needs_reference=True, peft="none", ref_model=None, data_paths=local) == "cached"
    assert resolve_strategy("auto", needs_reference=True, peft="lora", ref_model=None, data_paths=["org/hub-set"]) == "adapter"
    assert resolve_strategy("auto", needs_reference=True, peft="none", ref_model=None, data_paths=["org/hub-set"]) == "copy"
    with pytest.raises(ConfigError, match="needs a PEFT adapter"):
        resolve_strategy("adapter", needs_reference=True, peft="none", ref_model=None, data_paths=local)
    with pytest.raises(ConfigError, match="not a local file"):
        resolve_strategy("cached", needs_reference=True, peft="none", ref_model=None, data_paths=["org/hub-set"])
