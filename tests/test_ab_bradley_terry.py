"""Bradley–Terry: recovery of known strengths and agreement with a statsmodels logit fit."""
import numpy as np
import pytest
import statsmodels.api as sm

from posttrain.ab.bradley_terry import NotEstimable, bradley_terry, fit_mm, strongly_connected, win_matrix

TRUE = {"A": 0.0, "B": 0.6, "C": -0.4, "D": 1.1}


def simulate(n, seed, tie_rate=0.0):
    rng = np.random.default_rng(seed)
    names = list(TRUE)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(names), size=2, replace=False)
        a, b = names[i], names[j]
        if rng.random() < tie_rate:
            out.append((a, b, "tie"))
            continue
        p = 1 / (1 + np.exp(-(TRUE[a] - TRUE[b])))
        out.append((a, b, a if rng.random() < p else b))
    return out


def test_recovers_known_strengths():
    fit = bradley_terry(simulate(6000, seed=0), reference="A")
    estimate = dict(zip(fit.names, fit.theta))
    for name, value in TRUE.items():
        assert estimate[name] == pytest.approx(value, abs=0.12)
    # the 95% intervals cover the truth (all four here; they are ~±0.1 wide)
    for name, (low, high) in zip(fit.names, fit.ci):
        assert low - 1e-9 <= TRUE[name] <= high + 1e-9
    assert fit.se[fit.names.index("A")] == 0.0


def _design(comparisons, names, reference):
    cols = [n for n in names if n != reference]
    X = np.zeros((len(comparisons), len(cols)))
    for r, (i, j, _) in enumerate(comparisons):
        if i in cols:
            X[r, cols.index(i)] += 1
        if j in cols:
            X[r, cols.index(j)] -= 1
    return X, cols


def test_matches_statsmodels_logit():
    comparisons = simulate(800, seed=1)
    fit = bradley_terry(comparisons, reference="A")
    X, cols = _design(comparisons, fit.names, "A")
    y = np.array([1.0 if w == i else 0.0 for i, _, w in comparisons])
    ref = sm.Logit(y, X).fit(disp=0, tol=1e-12)
    for k, name in enumerate(cols):
        idx = fit.names.index(name)
        assert fit.theta[idx] == pytest.approx(ref.params[k], abs=1e-7)
        assert fit.se[idx] == pytest.approx(ref.bse[k], rel=1e-6)


def test_ties_match_fractional_binomial_glm():
    comparisons = simulate(600, seed=2, tie_rate=0.2)
    fit = bradley_terry(comparisons, reference="B")
    X, cols = _design(comparisons, fit.names, "B")
    y = np.array([0.5 if w == "tie" else (1.0 if w == i else 0.0) for i, _, w in comparisons])
    ref = sm.GLM(y, X, family=sm.families.Binomial()).fit(tol=1e-12)
    for k, name in enumerate(cols):
        assert fit.theta[fit.names.index(name)] == pytest.approx(ref.params[k], abs=1e-7)
        assert fit.se[fit.names.index(name)] == pytest.approx(ref.bse[k], rel=1e-6)


def test_two_variants_closed_form():
    # with two variants the MLE is the log of the win ratio
    comparisons = [("A", "B", "B")] * 30 + [("A", "B", "A")] * 20 + [("B", "A", "tie")] * 10
    fit = bradley_terry(comparisons, reference="A")
    assert fit.theta[fit.names.index("B")] == pytest.approx(np.log(35 / 25), abs=1e-9)
    assert fit.win_prob_vs_reference[fit.names.index("B")] == pytest.approx(35 / 60)


def test_not_estimable_when_someone_never_loses():
    comparisons = [("A", "B", "A")] * 5 + [("B", "C", "B"), ("C", "B", "C")]
    assert not strongly_connected(win_matrix(comparisons)[1])
    with pytest.raises(NotEstimable):
        fit_mm(win_matrix(comparisons)[1])


def test_bootstrap_intervals_are_deterministic_and_sensible():
    comparisons = simulate(400, seed=3)
    a = bradley_terry(comparisons, method="bootstrap", n_resamples=200, seed=5)
    b = bradley_terry(comparisons, method="bootstrap", n_resamples=200, seed=5)
    assert a.ci == b.ci
    fisher = bradley_terry(comparisons)
    for (lo, hi), (flo, fhi) in zip(a.ci[1:], fisher.ci[1:]):
        assert abs((hi - lo) - (fhi - flo)) < 0.35 * (fhi - flo)  # similar widths


def test_bad_winner():
    with pytest.raises(ValueError, match="winner"):
        win_matrix([("A", "B", "C")])
