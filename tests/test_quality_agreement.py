"""Agreement statistics against scikit-learn, statsmodels, the krippendorff package and
Krippendorff's own worked example; the `data agreement` command end to end."""
import json

import numpy as np
import pytest

from posttrain.cli import main
from posttrain.quality.agreement import (
    agreement_summary,
    category_order,
    cohen_kappa,
    count_table,
    fleiss_kappa,
    krippendorff_alpha,
    percent_agreement,
    ratings_from_rows,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12
# units with missing values. Published values: nominal .743, ordinal .815, interval .849, ratio .797.
N = None
KRIPPENDORFF_EXAMPLE = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


def _units(matrix):
    return [[row[i] for row in matrix if row[i] is not None] for i in range(len(matrix[0]))]


@pytest.mark.parametrize("level,expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                            ("ratio", 0.797)])
def test_krippendorff_published_example(level, expected):
    assert krippendorff_alpha(_units(KRIPPENDORFF_EXAMPLE), level) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_krippendorff_matches_reference_package_with_missing_data(level, seed):
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, size=40)
    data = np.where(rng.random((5, 40)) < 0.7, truth, rng.integers(1, 6, size=(5, 40))).astype(float)
    data[rng.random((5, 40)) < 0.25] = np.nan  # varying raters per item
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
    units = [[int(v) for v in data[:, i] if not np.isnan(v)] for i in range(40)]
    assert krippendorff_alpha(units, level) == pytest.approx(expected, abs=1e-10)


def test_krippendorff_ordinal_uses_given_order_for_text_labels():
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 3, size=(3, 30)).astype(float)
    codes[1] = np.where(rng.random(30) < 0.6, codes[0], codes[1])
    names = np.array(["A", "tie", "B"])
    units = [[names[int(c)] for c in codes[:, i]] for i in range(30)]
    expected = krippendorff.alpha(reliability_data=codes, level_of_measurement="ordinal")
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(expected, abs=1e-10)


def test_krippendorff_perfect_and_undefined():
    assert krippendorff_alpha([["A", "A"], ["B", "B", "B"], ["A"]]) == pytest.approx(1.0)
    assert krippendorff_alpha([["A", "A"], ["A", "A"]]) is None  # one value only: no expected disagreement
    assert krippendorff_alpha([["A"], ["B"]]) is None  # nothing pairable


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_matches_sklearn(weights):
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 60)
    b = np.where(rng.random(60) < 0.6, a, rng.integers(0, 4, 60))
    expected = cohen_kappa_score(a, b, weights=weights)
    assert cohen_kappa(list(a), list(b), weights) == pytest.approx(expected, abs=1e-12)


def test_cohen_weighted_respects_preference_order():
    from sklearn.metrics import cohen_kappa_score

    a = ["A", "A", "tie", "B", "B", "tie", "A", "B"]
    b = ["A", "tie", "tie", "B", "A", "B", "A", "B"]
    expected = cohen_kappa_score(a, b, weights="linear", labels=["A", "tie", "B"])
    assert cohen_kappa(a, b, "linear") == pytest.approx(expected, abs=1e-12)
    # alphabetical order (A, B, tie) would treat A-B as a smaller step than A-tie: different value
    wrong = cohen_kappa_score(a, b, weights="linear")
    assert abs(expected - wrong) > 1e-3


def test_cohen_hand_computed():
    # p_o = 3/4; marginals A: 2/4 and 1/4, B: 2/4 and 3/4 -> p_e = 1/8 + 3/8 = 1/2 -> kappa = 0.5
    assert cohen_kappa(["A", "A", "B", "B"], ["A", "B", "B", "B"]) == pytest.approx(0.5)
    assert cohen_kappa(["A", "A"], ["A", "A"]) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_fleiss_matches_statsmodels(seed):
    from statsmodels.stats.inter_rater import fleiss_kappa as reference

    rng = np.random.default_rng(seed)
    table = rng.multinomial(4, [0.5, 0.3, 0.2], size=25)
    assert fleiss_kappa(table) == pytest.approx(reference(table, method="fleiss"), abs=1e-12)


def test_fleiss_from_units_and_rejects_varying_counts():
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as reference

    units = [["A", "A", "B"], ["B", "B", "B"], ["A", "tie", "B"], ["tie", "tie", "A"], ["A", "A", "A"]]
    cats = category_order([x for u in units for x in u])
    assert cats == ["A", "tie", "B"]
    codes = np.array([[cats.index(x) for x in u] for u in units])
    table, _ = aggregate_raters(codes, n_cat=3)
    assert fleiss_kappa(count_table(units, cats)) == pytest.approx(reference(table), abs=1e-12)
    with pytest.raises(ValueError):
        fleiss_kappa([[2, 0], [1, 2]])


def test_percent_agreement_pairwise():
    # item 1: 3 raters, 2 agree -> 1 agreeing pair of 3; item 2: all agree -> 1; single label skipped
    assert percent_agreement([["A", "A", "B"], ["B", "B"], ["A"]]) == pytest.approx((1 / 3 + 1) / 2)
    assert percent_agreement([["A"]]) is None


def _rows(items):
    return [(i + 1, row) for i, row in enumerate(items)]


def test_ratings_from_rows_criteria_label_alias_and_missing():
    rows = _rows([
        {"item_id": 1, "annotator": "x", "choice": "a", "criteria": {"helpful": "B"}},
        {"item_id": 1, "annotator": "y", "label": "A", "criteria": {"helpful": "B", "honest": None}},
        {"item_id": 2, "annotator": "x", "choice": "draw"},
    ])
    ratings = ratings_from_rows(rows, "f.jsonl")
    assert ratings["overall"] == {"1": {"x": "A", "y": "A"}, "2": {"x": "tie"}}
    assert ratings["helpful"] == {"1": {"x": "B", "y": "B"}}
    assert "honest" not in ratings


def test_two_annotators_cohen_is_plain_cohen_and_light_for_more():
    from sklearn.metrics import cohen_kappa_score

    a = ["A", "B", "A", "tie", "B", "A", "B", "B"]
    b = ["A", "B", "B", "tie", "B", "A", "A", "B"]
    c = ["A", "A", "B", "tie", "B", "A", "A", "B"]
    two = {str(i): {"a": x, "b": y} for i, (x, y) in enumerate(zip(a, b))}
    summary = agreement_summary(two)
    assert summary["cohen_kappa"] == pytest.approx(cohen_kappa_score(a, b))
    three = {str(i): {"a": x, "b": y, "c": z} for i, (x, y, z) in enumerate(zip(a, b, c))}
    summary = agreement_summary(three)
    light = np.mean([cohen_kappa_score(a, b), cohen_kappa_score(a, c), cohen_kappa_score(b, c)])
    assert summary["cohen_kappa"] == pytest.approx(light)
    assert len(summary["pairs"]) == 3 and summary["fleiss_items"] == 8


def test_summary_fleiss_uses_modal_rater_count():
    ratings = {"1": {"a": "A", "b": "A", "c": "B"}, "2": {"a": "B", "b": "B", "c": "B"},
               "3": {"a": "A", "b": "B"}, "4": {"a": "A"}}
    summary = agreement_summary(ratings)
    assert summary["raters_per_item"] == 3 and summary["fleiss_items"] == 2
    assert summary["items_multiply_labelled"] == 3


# ---------------------------------------------------------------------------------------------- CLI


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_end_to_end(tmp_path, capsys):
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(5)
    rows, matrix = [], np.full((3, 20), np.nan)
    for item in range(20):
        truth = rng.integers(0, 3)
        for r, annotator in enumerate(["ann1", "ann2", "ann3"]):
            if annotator == "ann3" and item % 5 == 0:
                continue  # ann3 skipped some items
            code = truth if rng.random() < 0.7 else rng.integers(0, 3)
            matrix[r, item] = code
            rows.append({"item_id": f"q{item}", "annotator": annotator, "choice": ["A", "tie", "B"][code],
                         "criteria": {"helpfulness": ["A", "tie", "B"][code]}})
    data = _write(tmp_path / "ann.jsonl", rows)
    out = tmp_path / "agreement.json"
    assert main(["data", "agreement", data, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "helpfulness" in printed
    report = json.loads(out.read_text())["criteria"]
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    assert report["overall"]["krippendorff_alpha"] == pytest.approx(expected)
    assert report["helpfulness"]["krippendorff_alpha"] == pytest.approx(expected)
    assert report["overall"]["annotators"] == 3 and report["overall"]["items"] == 20

    assert main(["data", "agreement", data, "--level", "ordinal", "--criteria", "helpfulness", "--output",
                 str(out)]) == 0
    report = json.loads(out.read_text())["criteria"]
    assert list(report) == ["helpfulness"]
    ordinal = krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal")
    assert report["helpfulness"]["krippendorff_alpha"] == pytest.approx(ordinal)


@pytest.mark.parametrize("row,message", [
    ({"annotator": "x", "choice": "A"}, "bad.jsonl:2: field 'item_id': missing"),
    ({"item_id": 1, "annotator": "x", "choice": ["A"]}, "bad.jsonl:2: field 'choice': expected a label"),
    ({"item_id": 1, "annotator": "x"}, "bad.jsonl:2: field 'choice': missing label"),
    ({"item_id": 1, "annotator": "x", "choice": "B"}, "bad.jsonl:2: field 'choice': annotator 'x' already labelled"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, row, message):
    path = _write(tmp_path / "bad.jsonl", [{"item_id": 1, "annotator": "x", "choice": "A"}, row])
    assert main(["data", "agreement", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
