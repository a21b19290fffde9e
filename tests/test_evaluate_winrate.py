"""Win-rate with position swap, and the length-controlled win-rate's regression."""
import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.linear_model import LogisticRegression
from statsmodels.stats.proportion import proportion_confint

from posttrain.evaluate.winrate import (
    fit_logistic,
    length_controlled_win_rate,
    length_features,
    swap_outcome,
    swapped_win_rate,
    win_rate,
)


@pytest.mark.parametrize("first,second,outcome", [
    ("A", "B", "win"), ("B", "A", "loss"), ("tie", "tie", "tie"),
    ("A", "A", "tie"), ("B", "B", "tie"),        # order decided the verdict: no preference
    ("A", "tie", "tie"), ("tie", "A", "tie"), ("B", "tie", "tie")])
def test_swap_table(first, second, outcome):
    assert swap_outcome(first, second) == outcome


def test_swap_rejects_unknown_verdicts():
    with pytest.raises(ValueError):
        swap_outcome("C", "A")


def test_win_rate_counts_ties_as_half_with_wilson():
    outcomes = ["win"] * 12 + ["tie"] * 6 + ["loss"] * 7
    result = win_rate(outcomes)
    assert result.value == pytest.approx((12 + 3) / 25)
    assert result.ci == pytest.approx(proportion_confint(15, 25, method="wilson"))
    assert result.extra["wins"] == 12 and result.extra["ties"] == 6 and result.extra["losses"] == 7
    boot = win_rate(outcomes, method="bootstrap", seed=1)
    assert boot.ci == win_rate(outcomes, method="bootstrap", seed=1).ci
    assert boot.ci[0] < result.value < boot.ci[1]


def test_swapped_win_rate_counts_inconsistent_items():
    first = ["A", "A", "B", "A", "tie"]
    second = ["B", "A", "A", "B", "tie"]  # item 2 is position-dependent
    result = swapped_win_rate(first, second)
    assert result.per_item == [1.0, 0.5, 0.0, 1.0, 0.5]
    assert result.extra["inconsistent"] == 1


def test_fit_logistic_matches_sklearn_and_statsmodels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.4 + 1.3 * x)))).astype(float)
    X = np.stack([np.ones_like(x), x], axis=1)
    ours = fit_logistic(X, y)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=1000).fit(x[:, None], y)
    assert ours == pytest.approx([ref.intercept_[0], ref.coef_[0, 0]], abs=1e-5)
    # fractional targets (ties as half) against a binomial GLM
    y_frac = np.where(rng.random(300) < 0.2, 0.5, y)
    glm = sm.GLM(y_frac, X, family=sm.families.Binomial()).fit(tol=1e-12)
    assert fit_logistic(X, y_frac) == pytest.approx(glm.params, abs=1e-5)


def test_length_control_removes_a_pure_length_effect():
    # The judge prefers whichever answer is longer; the model is usually longer.
    rng = np.random.default_rng(1)
    base = rng.integers(200, 400, size=400)
    model = base + rng.normal(120, 150, size=400)
    p_win = 1 / (1 + np.exp(-2.5 * np.tanh((model - base) / 150)))
    outcomes = ["win" if rng.random() < p else "loss" for p in p_win]
    raw = win_rate(outcomes).value
    lc = length_controlled_win_rate(outcomes, model, base, n_resamples=300)
    assert raw > 0.65
    assert lc.value == pytest.approx(0.5, abs=0.08)
    assert lc.ci[0] < lc.value < lc.ci[1]
    assert lc.extra["raw_win_rate"] == pytest.approx(raw)


def test_length_control_equals_raw_rate_without_length_differences():
    outcomes = ["win"] * 7 + ["tie"] * 2 + ["loss"] * 5
    lengths = [100] * 14
    lc = length_controlled_win_rate(outcomes, lengths, lengths, n_resamples=50)
    assert lc.value == pytest.approx(8 / 14, abs=1e-6)
    X, scale = length_features(lengths, lengths)
    assert scale == 0 and np.all(X[:, 1] == 0)


def test_length_control_is_finite_when_the_model_always_wins():
    lc = length_controlled_win_rate(["win"] * 10, list(range(10)), [5] * 10, n_resamples=50)
    assert 0.99 < lc.value <= 1.0
