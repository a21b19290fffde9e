"""Comparing two runs' results JSONs: the right interval for each kind of metric."""
import json

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import confint_proportions_2indep

from posttrain.errors import InputError
from posttrain.evaluate.accuracy import accuracy, perplexity_result
from posttrain.evaluate.compare import compare_files, compare_results, format_comparison
from posttrain.evaluate.intervals import newcombe_paired_diff_interval
from posttrain.evaluate.reference import bleu
from posttrain.evaluate.results import MetricResult, mean_result, read_results, write_results
from posttrain.evaluate.winrate import length_controlled_win_rate

PRED_A = ["the cat sat on the mat", "a fox jumps", "hello world", "models are evaluated here", "rain in city"]
PRED_B = ["the cat is sitting on the mat", "the quick brown fox jumped", "hello world", "posttrain evaluates models",
          "today it rains in the city"]
REF = ["the cat is sitting on the mat", "the quick brown fox jumped over the lazy dog", "hello world",
       "posttrain evaluates language models", "today it rains in the city"]
IDS = [f"q{i}" for i in range(5)]


def make_runs(tmp_path):
    rng = np.random.default_rng(0)
    scores_a = rng.normal(0.5, 0.1, 30)
    run_a = [accuracy([True] * 30 + [False] * 20, name="acc"), mean_result("score", scores_a, item_ids=range(30)),
             bleu(PRED_A, REF, item_ids=IDS, n_resamples=50),
             perplexity_result([[-1.0, -2.0], [-0.5]], n_resamples=50),
             MetricResult("only_a", 1.0, "mean", 1)]
    run_b = [accuracy([True] * 40 + [False] * 10, name="acc"),
             mean_result("score", scores_a + 0.05, item_ids=range(30)),
             bleu(PRED_B, REF, item_ids=IDS, n_resamples=50),
             perplexity_result([[-0.5, -1.0], [-0.25]], n_resamples=50)]
    write_results(tmp_path / "a.json", "run-a", run_a)
    (tmp_path / "b").mkdir()
    write_results(tmp_path / "b" / "results.json", "run-b", run_b)
    return tmp_path / "a.json", tmp_path / "b"


def test_compare_runs(tmp_path):
    path_a, path_b = make_runs(tmp_path)
    table, rows = compare_files(str(path_a), str(path_b), n_resamples=500)
    by = {r.metric: r for r in rows}
    expected = confint_proportions_2indep(40, 50, 30, 50, method="newcomb", compare="diff")
    assert by["acc"].difference == pytest.approx(0.2)
    assert by["acc"].ci == pytest.approx(expected) and by["acc"].method == "newcombe"
    # paired items shifted by exactly +0.05: every paired resample gives 0.05
    assert by["score"].method == "paired bootstrap" and by["score"].ci == pytest.approx((0.05, 0.05))
    assert by["bleu"].method == "paired bootstrap" and by["bleu"].difference > 0
    assert by["bleu"].ci[0] <= by["bleu"].difference <= by["bleu"].ci[1]
    assert by["perplexity"].method == "bootstrap" and by["perplexity"].difference < 0
    assert by["only_a"].method == "only in A" and by["only_a"].value_b is None
    assert "run-a" in table and "run-b" in table and "paired bootstrap" in table
    assert compare_files(str(path_a), str(path_b), n_resamples=500)[0] == table  # deterministic


def test_wald_and_mover(tmp_path):
    a = {"acc": accuracy([True] * 3 + [False] * 7, name="acc")}
    b = {"acc": accuracy([True] * 6 + [False] * 4, name="acc")}
    (row,) = compare_results(a, b, proportion_method="wald")
    assert row.ci == pytest.approx(confint_proportions_2indep(6, 10, 3, 10, method="wald", compare="diff"))
    outcomes = ["win", "loss", "tie", "win", "win", "loss", "win", "win"]
    lc_a = length_controlled_win_rate(outcomes, [10, 20, 30, 40, 50, 60, 70, 80], [45] * 8, n_resamples=50)
    lc_b = length_controlled_win_rate(outcomes[::-1], [10, 20, 30, 40, 50, 60, 70, 80], [45] * 8, n_resamples=50)
    (row,) = compare_results({"lc_win_rate": lc_a}, {"lc_win_rate": lc_b})
    assert row.method == "MOVER" and row.ci[0] < row.difference < row.ci[1]


def test_results_round_trip(tmp_path):
    metric = accuracy([True, False, True], name="acc", item_ids=["x", "y", "z"])
    write_results(tmp_path / "r.json", "r", [metric], meta={"model": "tiny-random"})
    run, metrics = read_results(tmp_path / "r.json")
    assert run == "r" and metrics["acc"].per_item == [1.0, 0.0, 1.0] and metrics["acc"].ci == metric.ci


@pytest.mark.parametrize("doc,message", [
    ({"metrics": {"acc": {"value": 0.5, "n": 2, "kind": "ratio"}}},
     "field 'metrics.acc.kind': expected one of proportion, mean, corpus, got 'ratio'"),
    ({"metrics": {"acc": {"value": "high", "n": 2, "kind": "mean"}}},
     "field 'metrics.acc.value': expected a number, got 'high'"),
    ({"metrics": {"acc": {"value": 0.5, "n": 2, "kind": "proportion"}}},
     "field 'metrics.acc.successes': a proportion needs its count of successes"),
    ({"metrics": {"acc": {"value": 0.5, "n": 2, "kind": "mean", "colour": 1}}},
     "field 'metrics.acc.colour': unknown field"),
    ({"results": []}, "field 'metrics': expected a results JSON with a 'metrics' mapping"),
])
def test_bad_results_json(tmp_path, doc, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as info:
        read_results(path)
    assert str(info.value) == f"{path}: {message}"


def test_malformed_and_missing(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"metrics": {\n  "a": 1,,}}')
    with pytest.raises(InputError, match=r"bad.json:2: malformed JSON"):
        read_results(path)
    with pytest.raises(InputError, match="file not found"):
        read_results(tmp_path / "nope")


def paired_runs():
    """20 items: 8 right in both, 1 right in A only, 7 right in B only, 4 wrong in both."""
    ids = [f"item{i}" for i in range(20)]
    out_a = [1] * 8 + [1] + [0] * 7 + [0] * 4
    out_b = [1] * 8 + [0] + [1] * 7 + [0] * 4
    return ids, out_a, out_b


def test_paired_proportions_use_newcombe_paired_and_mcnemar():
    ids, out_a, out_b = paired_runs()
    a = {"acc": accuracy(out_a, item_ids=ids, name="acc")}
    b = {"acc": accuracy(out_b, item_ids=ids, name="acc")}
    (row,) = compare_results(a, b)
    assert row.paired_counts == {"both": 8, "a_only": 1, "b_only": 7, "neither": 4}
    assert row.method == "paired newcombe, exact McNemar"
    assert row.ci == pytest.approx(newcombe_paired_diff_interval(8, 1, 7, 4))
    assert row.p_value == pytest.approx(mcnemar([[8, 1], [7, 4]], exact=True).pvalue)  # 2 * 9/256 = 0.0703
    assert row.difference == pytest.approx(0.3)
    # the same counts treated as independent give a wider interval
    independent = confint_proportions_2indep(15, 20, 9, 20, method="newcomb", compare="diff")
    assert row.ci[1] - row.ci[0] < independent[1] - independent[0]
    saved = row.to_dict()
    assert saved["p_value"] == row.p_value and saved["paired_counts"]["b_only"] == 7
    table = format_comparison([row], "base", "tuned")
    assert table.splitlines()[0].split()[-2:] == ["p", "method"] and "0.07031" in table


def test_pairing_matches_ids_in_any_order_and_falls_back():
    ids, out_a, out_b = paired_runs()
    order = list(range(20))[::-1]
    a = {"acc": accuracy(out_a, item_ids=ids, name="acc")}
    shuffled = {"acc": accuracy([out_b[i] for i in order], item_ids=[ids[i] for i in order], name="acc")}
    (row,) = compare_results(a, shuffled)
    assert row.paired_counts == {"both": 8, "a_only": 1, "b_only": 7, "neither": 4}
    # other items, missing ids (results written before ids were stored): independent samples, no p
    other = {"acc": accuracy(out_b, item_ids=[f"x{i}" for i in range(20)], name="acc")}
    no_ids = {"acc": accuracy(out_b, name="acc")}
    for b in (other, no_ids):
        (row,) = compare_results(a, b)
        assert row.method == "newcombe" and row.p_value is None and row.paired_counts is None
        assert row.ci == pytest.approx(confint_proportions_2indep(15, 20, 9, 20, method="newcomb", compare="diff"))
    assert "  p  " not in format_comparison([row])
    # Wald was asked for explicitly: independent Wald interval, but the paired test is still reported
    (row,) = compare_results(a, {"acc": accuracy(out_b, item_ids=ids, name="acc")}, proportion_method="wald")
    assert row.method == "wald, exact McNemar" and row.p_value == pytest.approx(0.0703125)
    assert row.ci == pytest.approx(confint_proportions_2indep(15, 20, 9, 20, method="wald", compare="diff"))


def test_old_results_json_without_ids_still_compares(tmp_path):
    """A results.json from before per-item ids: proportion with successes only."""
    for name, k in (("a", 9), ("b", 15)):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"run": name, "metrics": {"acc": {"value": k / 20, "n": 20, "kind": "proportion", "successes": k}}}))
    _, rows = compare_files(str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert rows[0].method == "newcombe" and rows[0].p_value is None
