"""Bias tests against scipy/statsmodels references and hand-built data; `data bias` end to end."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from posttrain.cli import main
from posttrain.quality.bias import (
    LabelledPair,
    binomial_summary,
    labelled_pairs,
    length_bias,
    logistic_regression_1d,
    model_bias,
    position_bias,
    wilson_interval,
)


@pytest.mark.parametrize("successes,n", [(7, 20), (0, 10), (10, 10), (55, 100)])
def test_wilson_matches_statsmodels(successes, n):
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, n, alpha=0.05, method="wilson")
    assert wilson_interval(successes, n) == pytest.approx((lo, hi), abs=1e-12)


def test_binomial_summary_matches_scipy():
    summary = binomial_summary(62, 100)
    assert summary["rate"] == 0.62
    assert summary["p_value"] == pytest.approx(stats.binomtest(62, 100, 0.5).pvalue)
    assert binomial_summary(0, 0)["p_value"] is None


def test_logistic_matches_statsmodels():
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.3 + 0.8 * x)))).astype(int)
    fit = logistic_regression_1d(x, y)
    ref = sm.Logit(y, sm.add_constant(x)).fit(disp=0)
    assert fit["intercept"] == pytest.approx(ref.params[0], abs=1e-8)
    assert fit["slope"] == pytest.approx(ref.params[1], abs=1e-8)
    assert fit["slope_se"] == pytest.approx(ref.bse[1], abs=1e-8)
    assert fit["p_value"] == pytest.approx(ref.pvalues[1], rel=1e-6)


def test_logistic_separation_and_constant_inputs_return_none():
    assert logistic_regression_1d([-2, -1, 1, 2], [0, 0, 1, 1]) is None  # perfectly separated
    assert logistic_regression_1d([1, 1, 1, 1], [0, 1, 0, 1]) is None
    assert logistic_regression_1d([1, 2, 3, 4], [1, 1, 1, 1]) is None


def _pair(winner, first="A", la=None, lb=None, ma=None, mb=None):
    return LabelledPair(winner, first, la, lb, ma, mb, True)


def test_position_bias_counts_first_shown_wins():
    pairs = ([_pair("A", "A")] * 30 + [_pair("B", "B")] * 20   # first shown won 50 times
             + [_pair("B", "A")] * 10 + [_pair("A", "B")] * 10 + [_pair("tie", "A")] * 5)
    result = position_bias(pairs)
    assert (result["n"], result["successes"], result["ties"]) == (70, 50, 5)
    assert result["p_value"] == pytest.approx(stats.binomtest(50, 70).pvalue)
    assert result["p_value"] < 0.001


def test_position_bias_uses_each_judge_order():
    # one swapped judge row: order ab said A, order ba said B (B shown first) -> combined tie,
    # but both orders are first-shown wins
    pair = LabelledPair("tie", "A", None, None, None, None, True, orders=[("A", "A"), ("B", "B")])
    result = position_bias([pair])
    assert (result["n"], result["successes"], result["verdicts"]) == (2, 2, 2)


def test_length_bias_longer_wins_and_correlation():
    rng = np.random.default_rng(1)
    pairs = []
    for _ in range(200):
        la, lb = rng.integers(10, 500, size=2)
        p_a = 1 / (1 + math.exp(-1.5 * math.log2((la + 1) / (lb + 1))))
        pairs.append(_pair("A" if rng.random() < p_a else "B", la=float(la), lb=float(lb)))
    result = length_bias(pairs)
    unequal = [p for p in pairs if p.length_a != p.length_b]
    longer = sum((p.winner == "A") == (p.length_a > p.length_b) for p in unequal)
    assert result["longer_wins"]["successes"] == longer
    assert result["longer_wins"]["p_value"] == pytest.approx(stats.binomtest(longer, len(unequal)).pvalue)
    x = [math.log2((p.length_a + 1) / (p.length_b + 1)) for p in pairs]
    y = [int(p.winner == "A") for p in pairs]
    r, p_value = stats.pointbiserialr(y, x)
    assert result["point_biserial"]["r"] == pytest.approx(r)
    assert result["point_biserial"]["p_value"] == pytest.approx(p_value)
    assert result["logistic"]["slope"] == pytest.approx(1.5, abs=0.5)
    assert result["logistic"]["odds_ratio"] > 1 and result["logistic"]["p_value"] < 1e-6


def test_length_bias_no_bias_when_lengths_uninformative():
    rng = np.random.default_rng(2)
    pairs = [_pair("A" if rng.random() < 0.5 else "B", la=float(rng.integers(10, 500)), lb=float(rng.integers(10, 500)))
             for _ in range(300)]
    assert length_bias(pairs)["longer_wins"]["p_value"] > 0.01


def test_model_bias_win_rates_ties_half():
    from statsmodels.stats.proportion import proportion_confint

    pairs = ([_pair("A", ma="big", mb="small")] * 8 + [_pair("B", ma="big", mb="small")] * 2
             + [_pair("tie", ma="big", mb="small")] * 2)
    result = model_bias(pairs)
    assert result["big"]["wins"] == 8 and result["big"]["losses"] == 2 and result["big"]["ties"] == 2
    assert result["big"]["win_rate"] == pytest.approx(9 / 12)
    assert result["small"]["win_rate"] == pytest.approx(3 / 12)
    assert result["big"]["ci"] == pytest.approx(list(proportion_confint(9, 12, method="wilson")))


def test_labelled_pairs_fields(tmp_path):
    rows = [(1, {"winner": "a", "swapped": True, "response_a": "one two", "response_b": "x", "model_a": "m"}),
            (2, {"choice": "tie", "first": "B", "length_a": 3, "length_b": 4}),
            (3, {"winner": None}),
            (4, {"label": "B"})]
    pairs, unlabelled = labelled_pairs(rows, "f.jsonl", length_unit="words")
    assert unlabelled == 1
    assert (pairs[0].winner, pairs[0].first, pairs[0].length_a, pairs[0].length_b) == ("A", "B", 2.0, 1.0)
    assert (pairs[1].first, pairs[1].length_a) == ("B", 3.0)
    assert (pairs[2].first, pairs[2].position_known) == ("A", False)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_end_to_end_with_group_by(tmp_path, capsys):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(120):
        swapped = bool(rng.random() < 0.5)
        judge = "lenient" if i % 2 else "biased"
        first_wins = rng.random() < (0.9 if judge == "biased" else 0.5)
        first = "B" if swapped else "A"
        winner = first if first_wins else ("A" if first == "B" else "B")
        rows.append({"prompt": f"q{i}", "response_a": "a" * int(rng.integers(5, 50)),
                     "response_b": "b" * int(rng.integers(5, 50)), "winner": winner, "swapped": swapped,
                     "model_a": "m1", "model_b": "m2", "judge": judge})
    data = _write(tmp_path / "j.jsonl", rows)
    out = tmp_path / "bias.json"
    assert main(["data", "bias", data, "--group-by", "judge", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "first shown wins" in printed and "judge = biased" in printed
    report = json.loads(out.read_text())
    assert report["labelled"] == 120
    assert report["groups"]["biased"]["position"]["p_value"] < 1e-6
    assert report["groups"]["lenient"]["position"]["p_value"] > 0.001
    assert set(report["model"]) == {"m1", "m2"}


@pytest.mark.parametrize("row,message", [
    ({"winner": "C"}, "field 'winner': expected 'A', 'B' or 'tie', got 'C'"),
    ({"winner": "A", "swapped": "yes"}, "field 'swapped': expected true or false"),
    ({"winner": "A", "length_a": "long"}, "field 'length_a': expected a non-negative number"),
    ({"winner": "A", "model_a": 3}, "field 'model_a': expected a model name"),
])
def test_cli_bad_input(tmp_path, capsys, row, message):
    path = _write(tmp_path / "bad.jsonl", [{"winner": "A"}, row])
    assert main(["data", "bias", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:2: " + message in err


def test_cli_no_labels(tmp_path, capsys):
    path = _write(tmp_path / "none.jsonl", [{"prompt": "x"}])
    assert main(["data", "bias", path]) == 2
    assert "no labelled rows" in capsys.readouterr().err
