"""The benchmark harness (benchmarks/): FLOP formula by hand and against a real model's weights,
MFU and device peaks, the synthetic data, the results table (GPU columns included), and a
smoke run of both frameworks on tiny-random (slow). Nothing here times anything."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.data import LengthSpec, make_rows, pair_tokens, sequence_lengths, sft_tokens  # noqa: E402
from benchmarks.flops import ModelShape, mfu, peak_flops, training_flops  # noqa: E402


def test_training_flops_by_hand():
    shape = ModelShape(hidden=4, layers=2, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)
    # per block: q,o 2*4*4 = 32; k,v 2*4*2 = 16; gated MLP 3*4*8 = 96 -> 144; N = 2*144 + head 10*4 = 328
    assert shape.block_params == 144 and shape.matmul_params == 328
    # sequences of 3 and 5 tokens: 6*328*8 + 12*2*(2*2)*(9 + 25)
    assert training_flops(shape, [3, 5]) == 6 * 328 * 8 + 12 * 2 * 4 * 34 == 19008


def test_matmul_params_equal_the_linear_weights_of_a_real_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                         head_dim=8, intermediate_size=80, vocab_size=97, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # blocks + lm_head
    assert ModelShape.from_config(config).matmul_params == linear


def test_smollm2_and_gpu_configs_have_the_advertised_size():
    from benchmarks.models import RANDOM_CONFIGS
    from transformers import LlamaConfig

    smollm2 = ModelShape(hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, intermediate=1536, vocab=49152)
    assert smollm2.matmul_params == 134_479_872  # 135M with the tied embedding counted once, as the head
    sizes = {name: ModelShape.from_config(LlamaConfig(**cfg)).matmul_params for name, cfg in RANDOM_CONFIGS.items()}
    assert 0.4e9 < sizes["llama-0.5b"] < 0.6e9 and 0.95e9 < sizes["llama-1b"] < 1.2e9


def test_mfu_and_device_peaks():
    assert mfu(989e12 * 0.45 * 2.0, 2.0, 989e12) == pytest.approx(0.45)
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12  # the SXM part
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Some CPU") is None
    with pytest.raises(ValueError):
        mfu(1.0, 0.0, 1.0)


def test_synthetic_rows_are_varied_bounded_and_reproducible():
    spec = LengthSpec(median=40, sigma=0.8, minimum=16, maximum=128)
    rows = make_rows(200, spec, spec, seed=3, eos_id=2, vocab=1000)
    assert rows == make_rows(200, spec, spec, seed=3, eos_id=2, vocab=1000)
    prompts = [len(r["prompt"]) for r in rows]
    assert min(prompts) >= 16 and max(prompts) <= 128 and len(set(prompts)) > 30
    assert sorted(prompts)[100] in range(30, 51)  # the median is near 40
    assert all(r["chosen"][-1] == 2 and r["rejected"][-1] == 2 and r["chosen"] != r["rejected"] for r in rows)
    assert all(4 <= t < 1000 for r in rows for t in r["prompt"])
    row = rows[0]
    p, c, r = len(row["prompt"]), len(row["chosen"]), len(row["rejected"])
    assert pair_tokens(row["prompt"], row["chosen"], row["rejected"]) == 2 * p + c + r == sum(sequence_lengths("dpo", row))
    assert sft_tokens(row["prompt"], row["chosen"]) == p + c == sum(sequence_lengths("sft", row))


def test_synthetic_rows_from_a_tokenizer_are_slices_of_real_text():
    from posttrain.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    rows = make_rows(5, LengthSpec(), LengthSpec(), seed=0, eos_id=tokenizer.eos_token_id, tokenizer=tokenizer)
    text = tokenizer.decode(rows[0]["prompt"])
    assert sum(ch.isalpha() or ch in " ." for ch in text) > 0.95 * len(text)


def fake_result(framework, method, mode, tokens_per_s, peak, seconds=2.0, load=3.0):
    return {"framework": framework, "method": method, "mode": mode, "tokens_per_s": tokens_per_s,
            "peak_rss_mb_wait4": peak, "seconds": seconds, "flops": 989e12 * 0.4 * seconds, "cuda_peak_mb": peak / 2,
            "device_name": "NVIDIA H100 80GB HBM3", "load_before": load, "load_after": load}


def test_summary_takes_medians_and_ratios_and_gpu_columns():
    from benchmarks.run import markdown, parse_args, summarise

    args = parse_args(["--methods", "dpo", "--modes", "full", "--device", "cuda", "--model", "llama-1b", "--reps", "3"])
    results = [fake_result("posttrain", "dpo", "full", v, 600) for v in (150, 170, 160)]
    results += [fake_result("trl", "dpo", "full", v, 1000) for v in (100, 90, 80)]
    results.append({"framework": "trl", "method": "dpo", "mode": "full", "error": "exit 1"})  # ignored
    [row] = summarise(results, args)
    assert row["posttrain_tok_s"] == 160 and row["trl_tok_s"] == 90
    assert row["speed_ratio"] == pytest.approx(160 / 90) and row["memory_ratio"] == pytest.approx(0.6)
    assert row["posttrain_mfu"] == pytest.approx(0.4) and row["trl_runs"] == 3
    table = markdown([row], args)
    assert "| dpo | full | 160 | 90 | 1.78x | 600 | 1000 | 0.60x | 40.0% | 40.0% |" in table
    assert "--device cuda" in table and "--model llama-1b" in table and "--dpo-layout auto" in table


def test_every_module_imports_without_a_gpu():
    import importlib

    for name in ("run", "child", "posttrain_side", "trl_side", "measure", "models", "profile_step"):
        importlib.import_module(f"benchmarks.{name}")


@pytest.mark.slow
def test_smoke_run_of_both_frameworks_on_tiny_random(tmp_path):
    from benchmarks.run import main

    code = main(["--model", "tiny-random", "--methods", "sft", "dpo", "--modes", "lora", "--reps", "1", "--steps", "1",
                 "--batch-size", "2", "--out", str(tmp_path)])
    assert code == 0
    runs = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["method"], r["framework"]) for r in runs} == {(m, f) for m in ("sft", "dpo") for f in ("posttrain", "trl")}
    for method in ("sft", "dpo"):  # same examples in the same steps: the same token counts
        counts = {r["framework"]: r["batch_tokens"] for r in runs if r["method"] == method}
        assert counts["posttrain"] == counts["trl"]
    assert "| sft | lora |" in (tmp_path / "results.md").read_text()


def test_table_from_earlier_results_later_files_replace_a_configuration(tmp_path):
    from benchmarks.run import main

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    old = [fake_result(f, "rm", "lora", v, 900) for f, v in (("posttrain", 500), ("trl", 50))]
    kept = [fake_result(f, "sft", "full", v, 1000) for f, v in (("posttrain", 60), ("trl", 40))]
    new = [fake_result(f, "rm", "lora", v, 1000) for f, v in (("posttrain", 120), ("trl", 60))]
    first.write_text("".join(json.dumps(r) + "\n" for r in old + kept))
    second.write_text("".join(json.dumps(r) + "\n" for r in new))
    assert main(["--device", "cpu", "--methods", "sft", "rm", "--modes", "full", "lora", "--out", str(tmp_path),
                 "--from-results", str(first), str(second)]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "| rm | lora | 120 | 60 | 2.00x |" in table and "| sft | full | 60 | 40 | 1.50x |" in table
