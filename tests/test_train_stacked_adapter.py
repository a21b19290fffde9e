"""A LoRA run started from another LoRA run (DPO after LoRA SFT) loads back with both adapters.

Training folds the first adapter into the weights and trains a new one on top; the saved
adapter must name the first run as its base, and loading must fold that run in again.
"""
from __future__ import annotations

import json

import torch

from posttrain.cli import main as cli
from posttrain.data import demo_data_path
from posttrain.models import load_model
from posttrain.models.peft import merge_adapter


def _train(command: str, model: str, data: str, out, extra=()):
    argv = [command, "--model", model, "--data", data, "--peft", "lora", "--learning-rate", "1e-2",
            "--max-steps", "2", "--batch-size", "2", "--output-dir", str(out), "--no-progress", *extra]
    assert cli(argv) == 0


def test_dpo_adapter_on_a_lora_sft_run_keeps_the_sft_adapter(tmp_path):
    from peft import PeftModel

    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    _train("sft", "tiny-random", str(demo_data_path("instruct_chat.jsonl")), sft)
    _train("dpo", str(sft), str(demo_data_path("sample_preference.jsonl")), dpo)

    base = json.loads((dpo / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str((sft / "final").resolve())

    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        loaded = load_model(str(dpo))(input_ids=ids).logits
        by_hand = PeftModel.from_pretrained(merge_adapter(load_model(str(sft))), str(dpo / "final"))(input_ids=ids).logits
        without_sft = PeftModel.from_pretrained(load_model("tiny-random"), str(dpo / "final"))(input_ids=ids).logits
    torch.testing.assert_close(loaded, by_hand)
    assert not torch.allclose(loaded, without_sft, atol=1e-4)  # the SFT adapter matters here
