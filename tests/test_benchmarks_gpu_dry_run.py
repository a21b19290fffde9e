"""benchmarks/gpu_bench.py --dry-run: the GPU benchmark's whole path (data, model, both
frameworks' children for SFT, DPO and GRPO, tokens, table) on the CPU with tiny-random.
Nothing is timed here; the numbers of a dry run mean nothing."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # six child processes (posttrain and TRL imports each): minutes on a shared 2-core machine
def test_gpu_benchmark_dry_run_fills_every_row(tmp_path):
    pytest.importorskip("trl")
    bench = load_bench()
    assert bench.main(["--dry-run", "--out", str(tmp_path), "--timeout", "900"]) == 0
    table = (tmp_path / "results.md").read_text()
    for method in ("sft", "dpo", "grpo"):
        for framework in ("posttrain", "trl"):
            assert f"| {method} | {framework} | " in table
            result = json.loads((tmp_path / f"{method}-{framework}.json").read_text())
            assert result["seconds"] > 0
    assert "failed" not in table


def test_data_token_counts_use_the_chat_template(tmp_path):
    from posttrain.models import build_tiny_tokenizer

    bench = load_bench()
    data = bench.make_data(tmp_path, bench.settings(dry_run=True))
    tokenizer = build_tiny_tokenizer()
    sft = bench.data_sequence_lengths("sft", data["sft"], tokenizer)
    dpo = bench.data_sequence_lengths("dpo", data["dpo"], tokenizer)
    assert len(sft) == 4 and len(dpo) == 8  # 2 steps x batch 2; a pair counts both sequences
    row = json.loads(data["sft"].read_text().splitlines()[0])
    text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert sft[0] == len(tokenizer(text, add_special_tokens=False)["input_ids"]) > 20
