"""`posttrain eval --harness`: lm-evaluation-harness tasks on posttrain models (issue 15).

No dataset can be downloaded here, so the end-to-end tests write their own small harness tasks
(a task YAML + a JSONL), one multiple-choice and one generate_until, and run them on tiny-random.
The multiple-choice task is built so its accuracy is known without running anything: each
document offers a one-word choice and a sixteen-word one, and a model that knows nothing (tiny
random weights) gives the long one far less log-likelihood; the answer is the short choice in
three documents of four, so the harness's acc must be exactly 0.75.
"""
from __future__ import annotations

import json
import sys

import pytest

from posttrain.cli import main as cli_main
from posttrain.evaluate.harness import harness_metrics, metric_result, task_names

# ---------------------------------------------------------------- without lm_eval


def test_task_names_split_on_commas_and_spaces():
    assert task_names(["mmlu,hellaswag", "arc_easy mmlu"]) == ["mmlu", "hellaswag", "arc_easy"]


def test_zero_one_documents_become_a_proportion_with_a_wilson_interval():
    m = metric_result("harness/t/acc", 0.75, [1.0, 1.0, 1.0, 0.0], ["t/0", "t/1", "t/2", "t/3"], 0.25, 0.95, True, 0)
    assert (m.kind, m.n, m.successes, m.per_item, m.extra) == ("proportion", 4, 3.0, [1.0, 1.0, 1.0, 0.0], {"stderr": 0.25})
    assert m.ci == pytest.approx((0.3006418, 0.9544127), abs=1e-6)  # Wilson, 3 of 4


def test_a_metric_without_matching_documents_gets_the_harness_stderr_as_a_normal_interval():
    m = metric_result("harness/t/bleu", 12.0, [], [], 2.0, 0.95, True, 0)
    assert m.kind == "corpus" and m.ci == pytest.approx((12.0 - 1.959964 * 2.0, 12.0 + 1.959964 * 2.0), abs=1e-5)


def test_a_group_pools_its_subtasks_documents():
    output = {
        "results": {"grp": {"acc,none": 0.5, "acc_stderr,none": 0.2887, "alias": "grp"},
                    "a": {"acc,none": 1.0, "acc_stderr,none": 0.0, "sample_len": 2},
                    "b": {"acc,none": 0.0, "acc_stderr,none": 0.0, "acc_norm,none": "N/A"}},
        "group_subtasks": {"grp": ["a", "b"]},
        "higher_is_better": {"a": {"acc": True}},
        "samples": {"a": [{"doc_id": 0, "filter": "none", "acc": 1.0}, {"doc_id": 1, "filter": "none", "acc": 1.0}],
                    "b": [{"doc_id": 0, "filter": "none", "acc": 0.0}, {"doc_id": 1, "filter": "none", "acc": 0.0}]},
    }
    metrics = {m.name: m for m in harness_metrics(output)}
    assert sorted(metrics) == ["harness/a/acc", "harness/b/acc", "harness/grp/acc"]
    group = metrics["harness/grp/acc"]
    assert group.kind == "proportion" and group.item_ids == ["a/0", "a/1", "b/0", "b/1"] and group.value == 0.5


def test_missing_lm_eval_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import fails as if not installed
    code = cli_main(["eval", "--model", "tiny-random", "--harness", "mmlu", "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err == ("posttrain eval: error: config field 'harness': lm-evaluation-harness is not "
                                       "installed (pip install 'posttrain[harness]')\n")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- with lm_eval, on tiny-random

SHORT, LONG = "yes", " ".join(["yes"] * 16)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    pytest.importorskip("lm_eval")
    folder = tmp_path_factory.mktemp("harness_tasks")
    docs = [{"question": f"Question {i}: pick one.", "choices": [SHORT, LONG], "answer": int(i == 3)} for i in range(4)]
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'docs.jsonl'}\n"
              "test_split: test\ndoc_to_text: '{{question}}'\n")
    (folder / "mc.yaml").write_text(
        "task: posttrain_test_mc\n" + common + "output_type: multiple_choice\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "gen.yaml").write_text(
        "task: posttrain_test_gen\n" + common + "output_type: generate_until\ndoc_to_target: '{{choices[answer]}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


def eval_harness(model: str, tasks_dir, out, *extra: str) -> int:
    return cli_main(["eval", "--model", model, "--harness", "posttrain_test_mc,posttrain_test_gen",
                     "--harness-include", str(tasks_dir), "--batch-size", "4", *(["--output-dir", str(out)] if out else []),
                     *extra])


@pytest.fixture(scope="module")
def base_results(tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("harness_base")
    assert eval_harness("tiny-random", tasks, out) == 0
    return out


def test_harness_metrics_land_in_results_json_with_intervals(base_results):
    doc = json.loads((base_results / "results.json").read_text())
    acc = doc["metrics"]["harness/posttrain_test_mc/acc"]
    assert (acc["kind"], acc["value"], acc["n"], acc["per_item"]) == ("proportion", 0.75, 4, [1.0, 1.0, 1.0, 0.0])
    assert acc["item_ids"] == [f"posttrain_test_mc/{i}" for i in range(4)]
    assert acc["ci"] == pytest.approx([0.3006418, 0.9544127], abs=1e-6)
    exact = doc["metrics"]["harness/posttrain_test_gen/exact_match"]
    assert exact["n"] == 4 and exact["ci"] is not None and exact["value"] == sum(exact["per_item"]) / 4
    assert doc["meta"]["suites"]["harness"]["tasks"] == ["posttrain_test_mc", "posttrain_test_gen"]
    rows = [json.loads(line) for line in (base_results / "generations_harness.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["task"] for r in rows} == {"posttrain_test_mc", "posttrain_test_gen"}
    mc = [r for r in rows if r["task"] == "posttrain_test_mc"]
    assert [r["choices"] for r in mc] == [[" " + SHORT, " " + LONG]] * 4 and [r["target"] for r in mc] == [0, 0, 0, 1]
    gen = [r for r in rows if r["task"] == "posttrain_test_gen"]
    assert all(r["prompt"].startswith("Question ") and r["target"] in (SHORT, LONG) for r in gen)


def test_a_run_directory_with_a_lora_adapter_is_evaluated_and_compared(tasks, base_results, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: pick one.", "completion": SHORT}) + "\n"
                            for i in range(8)))
    run = tmp_path / "run"
    assert cli_main(["sft", "--model", "tiny-random", "--data", str(data), "--output-dir", str(run), "--peft", "lora",
                     "--max-steps", "2", "--batch-size", "4", "--no-progress"]) == 0
    assert (run / "final" / "adapter_config.json").exists()
    assert eval_harness(str(run), tasks, None) == 0  # results go into the run directory
    doc = json.loads((run / "results.json").read_text())
    assert doc["meta"]["model"] == str(run) and doc["metrics"]["harness/posttrain_test_mc/acc"]["n"] == 4
    capsys.readouterr()
    assert cli_main(["eval", "--compare", str(base_results), str(run)]) == 0
    table = capsys.readouterr().out
    line = next(l for l in table.splitlines() if l.startswith("harness/posttrain_test_mc/acc"))
    assert "paired" in table and "0.75" in line
    assert cli_main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "harness/posttrain_test_mc/acc" in html


def test_harness_needs_a_model_not_outputs(tasks, tmp_path, capsys):
    outputs = tmp_path / "gen.jsonl"
    outputs.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    code = cli_main(["eval", "--outputs", str(outputs), "--harness", "posttrain_test_mc",
                     "--harness-include", str(tasks), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "config field 'model'" in err, err
    assert not (tmp_path / "out").exists()
