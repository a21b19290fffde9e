"""`posttrain kto` on tiny-random: data handling, z0 over the whole global batch, learning, bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from posttrain.cli import main
from posttrain.losses import kto_loss
from posttrain.train.accelerator import make_accelerator
from posttrain.train.kto import KTOConfig, make_loss, make_prepare_step, train_kto
from posttrain.train.metrics import read_metrics
from posttrain.train.preference_batch import BatchLayout, sequence_logps
from posttrain.train.preference_data import load_unpaired
from posttrain.train.reference import copy_reference, load_reference_model
from posttrain.train.setup import load_trainable_model


def config(tmp_path, data, **overrides) -> KTOConfig:
    base = dict(model="tiny-random", data=str(data), output_dir=str(tmp_path / "run"), batch_size=4, max_steps=2,
                learning_rate=1e-3, lr_scheduler="constant", progress=False, max_length=64)
    return KTOConfig(**{**base, **overrides})


def tokenized(path):
    from posttrain.data import get_template
    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-random")
    return load_unpaired(str(path), tokenizer, get_template("auto", tokenizer), max_length=64, length_policy="drop")


def test_preference_rows_become_one_desirable_and_one_undesirable_example(preference_file):
    examples, report = tokenized(preference_file(5))
    assert report.rows == 5 and len(examples) == 10
    assert [e.desirable for e in examples] == [True, False] * 5
    assert examples[0].prompt_ids == examples[1].prompt_ids and examples[0].completion_ids != examples[1].completion_ids
    # Every example has a mismatched completion: one written for ANOTHER prompt.
    for e in examples:
        owners = [o for o in examples if o.completion_ids == e.mismatched_ids]
        assert owners and all(o.prompt_ids != e.prompt_ids for o in owners)


def test_z0_is_one_number_for_the_whole_global_batch(tmp_path, unpaired_file):
    cfg = config(tmp_path, unpaired_file(8), grad_accum=2, batch_size=3)
    examples, _ = tokenized(cfg.data)
    accelerator = make_accelerator(cfg)
    policy = load_trainable_model(cfg, seed=cfg.seed, quiet=True)
    reference = copy_reference(load_reference_model(cfg, torch.device("cpu")))
    with torch.no_grad():  # move the policy away from the reference so the log-ratios are not 0
        for param in policy.parameters():
            param.add_(0.02 * torch.randn_like(param))
    layout = BatchLayout(pad_id=3)
    state = {}
    micro = [examples[:3], examples[3:6]]
    make_prepare_step(state, reference, layout, accelerator, grad_accum=2)(policy, micro)
    # By hand: each example alone, the mean over both micro-batches.
    ratios = []
    for e in examples[:6]:
        batch = layout.unpaired([e], "mismatched_ids")
        with torch.no_grad():
            ratios.append(float(sequence_logps(policy, batch).logps - reference.sequence_logps(batch, (1,))))
    mean = sum(ratios) / 6
    assert abs(mean) > 1e-3
    assert state["z0"] == pytest.approx(max(0.0, mean), abs=1e-5)
    assert (state["n"], state["desirable"], state["undesirable"]) == (6, 3, 3)
    # The loss of each micro-batch uses that z0, with the configured weights.
    cfg.desirable_weight, cfg.undesirable_weight = 2.0, 0.5
    state["z0"] = 0.3  # any z0: check it is the one used
    batch = layout.unpaired(examples[:3])
    out = make_loss(cfg, reference, state)(policy, batch)
    pol, ref = sequence_logps(policy, batch).logps, reference.sequence_logps(batch, (0,))
    expected = kto_loss(pol, ref, batch["desirable"], 0.3, beta=cfg.beta, desirable_weight=2.0,
                        undesirable_weight=0.5).losses.sum()
    torch.testing.assert_close(out.loss_sum, expected)
    assert float(out.metric_sums["kl"]) == pytest.approx(0.3 * 3)


def test_kto_learns_the_desirable_pattern(tmp_path, unpaired_file):
    result = train_kto(config(tmp_path, unpaired_file(48, seed=1), eval_data=str(unpaired_file(16, seed=2, name="held.jsonl")),
                              max_steps=20, learning_rate=3e-4, grad_accum=2))
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logits/rejected",
            "grad_norm", "lr"} <= set(rows[0])
    assert rows[0]["rewards/margins"] == 0 and rows[0]["loss"] == pytest.approx(0.5)  # policy == reference
    assert sum(r["rewards/margins"] for r in rows[-4:]) / 4 > 0.3
    assert rows[-1]["loss"] < 0.45
    assert result.eval_metrics["eval/rewards/margins"] > 0.3
    assert math.isfinite(result.eval_metrics["eval/kl"])


def test_kto_with_lora_and_the_adapter_reference(tmp_path, unpaired_file):
    train_kto(config(tmp_path, unpaired_file(8), peft="lora", lora_r=4, reference="adapter", padding_free=True))
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["reference"] == {"strategy": "adapter"}
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


def test_kto_bad_rows(capsys, tmp_path):
    data = tmp_path / "bad.jsonl"
    rows = [{"prompt": "a", "completion": "b", "label": True},
            {"prompt": "a", "responses": ["x", "y"], "ranking": [0, 1]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["kto", "--model", "tiny-random", "--data", str(data), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"posttrain kto: error: {data}:2: kto needs unpaired rows")
    rows[1] = {"prompt": "a", "completion": "b", "label": "maybe"}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["kto", "--model", "tiny-random", "--data", str(data), "--output-dir", str(tmp_path / "run")])
    assert code == 2 and f"{data}:2: field 'label': expected true or false" in capsys.readouterr().err
