"""Inter-annotator agreement: percent agreement, Cohen's kappa, Fleiss' kappa, Krippendorff's alpha.

All statistics are pure functions over plain Python data. Notation:

- a *unit* (item) is rated by several annotators; its values are the labels it got,
- `order` lists the categories from low to high, for ordered statistics (weighted kappa,
  ordinal/interval alpha). Pairwise preference labels order naturally as A < tie < B.

Chance-corrected statistics share one shape, `1 - observed_disagreement / expected_disagreement`
(equivalently `(p_o - p_e) / (1 - p_e)`): 1 is perfect agreement, 0 is what independent raters
with the same label frequencies would reach, below 0 is systematic disagreement. When every
label is the same the expected disagreement is 0 and the statistic is undefined (None).
"""
from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np

from ..config import help_field, parse_config
from ..data.options import DataArgs, read_kwargs
from ..errors import InputError, PosttrainError
from ..jsonl import write_json
from .fields import load_rows, normalise_winner
from .table import format_table, json_safe

Label = Hashable
PREFERENCE_ORDER = ("A", "tie", "B")


def category_order(labels: Sequence[Label], order: Sequence[Label] | None = None) -> list[Label]:
    """Categories from low to high: `order` when given, else numeric sort, A<tie<B, or sorted text."""
    seen = set(labels)
    if order:
        missing = seen - set(order)
        if missing:
            raise ValueError(f"labels {sorted(map(str, missing))} are not in the given order {list(order)}")
        return list(order)
    if seen <= set(PREFERENCE_ORDER):
        return [c for c in PREFERENCE_ORDER if c in seen]
    if all(_is_number(x) for x in seen):
        return sorted(seen, key=float)
    return sorted(seen, key=str)


def _is_number(x: object) -> bool:
    if isinstance(x, bool):
        return False
    try:
        float(x)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator <= 1e-15 else numerator / denominator


# ----------------------------------------------------------------------------------------------
# Percent agreement

def percent_agreement(units: Sequence[Sequence[Label]]) -> float | None:
    """Mean over units of the fraction of rater pairs that agree.

    For a unit with m labels of which n_c are category c: sum_c n_c (n_c - 1) / (m (m - 1)).
    Units with fewer than two labels are skipped; None if no unit has two.
    """
    shares = []
    for values in units:
        m = len(values)
        if m >= 2:
            counts = Counter(values).values()
            shares.append(sum(n * (n - 1) for n in counts) / (m * (m - 1)))
    return sum(shares) / len(shares) if shares else None


# ----------------------------------------------------------------------------------------------
# Cohen's kappa (two raters)

def _weight_matrix(k: int, weights: str | None) -> np.ndarray:
    """Disagreement weights w_ij: 1 off the diagonal (None), |i-j| (linear) or (i-j)^2 (quadratic)."""
    i, j = np.indices((k, k))
    if weights is None:
        return (i != j).astype(float)
    if weights == "linear":
        return np.abs(i - j).astype(float)
    if weights == "quadratic":
        return ((i - j) ** 2).astype(float)
    raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")


def cohen_kappa(rater1: Sequence[Label], rater2: Sequence[Label], weights: str | None = None,
                order: Sequence[Label] | None = None) -> float | None:
    """Cohen's kappa between two raters who labelled the same items (position i = item i).

    kappa = 1 - sum_ij w_ij O_ij / sum_ij w_ij E_ij, with O the observed joint proportions and
    E = outer(row marginals, column marginals). Unweighted w = 1 - I gives (p_o - p_e)/(1 - p_e).
    Weighted kappa needs ordered categories (`order`, see `category_order`).
    """
    if len(rater1) != len(rater2):
        raise ValueError("the two raters must label the same number of items")
    if not rater1:
        return None
    cats = category_order(list(rater1) + list(rater2), order)
    index = {c: i for i, c in enumerate(cats)}
    observed = np.zeros((len(cats), len(cats)))
    for a, b in zip(rater1, rater2):
        observed[index[a], index[b]] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    w = _weight_matrix(len(cats), weights)
    ratio = _ratio(float((w * observed).sum()), float((w * expected).sum()))
    return None if ratio is None else 1.0 - ratio


def pairwise_cohen(ratings: Mapping[str, Mapping[str, Label]], weights: str | None = None,
                   order: Sequence[Label] | None = None, min_items: int = 2) -> list[dict]:
    """Cohen's kappa for every pair of annotators over the items both labelled.

    `ratings` maps item -> {annotator: label}. Pairs sharing fewer than `min_items` items are
    left out. Their mean is Light's kappa, the usual many-rater extension of Cohen's.
    """
    by_annotator: dict[str, dict[str, Label]] = defaultdict(dict)
    for item, labels in ratings.items():
        for annotator, label in labels.items():
            by_annotator[annotator][item] = label
    all_labels = [label for labels in ratings.values() for label in labels.values()]
    cats = category_order(all_labels, order) if all_labels else []
    out = []
    for a, b in itertools.combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[a]) & set(by_annotator[b]))
        if len(shared) < min_items:
            continue
        kappa = cohen_kappa([by_annotator[a][i] for i in shared], [by_annotator[b][i] for i in shared],
                            weights, cats)
        out.append({"annotators": [a, b], "items": len(shared), "kappa": kappa})
    return out


# ----------------------------------------------------------------------------------------------
# Fleiss' kappa (a fixed number of raters per item)

def fleiss_kappa(counts: np.ndarray | Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from an items x categories table of label counts (each row sums to n).

    P_i = (sum_j n_ij^2 - n) / (n (n - 1)),  P_bar = mean_i P_i,
    p_j = sum_i n_ij / (N n),  P_e = sum_j p_j^2,  kappa = (P_bar - P_e) / (1 - P_e).
    """
    table = np.asarray(counts, dtype=float)
    if table.ndim != 2 or table.shape[0] == 0:
        return None
    n = table.sum(axis=1)
    if not np.allclose(n, n[0]) or n[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every item")
    n = n[0]
    p_items = ((table ** 2).sum(axis=1) - n) / (n * (n - 1))
    p_cats = table.sum(axis=0) / table.sum()
    p_e = float((p_cats ** 2).sum())
    ratio = _ratio(float(p_items.mean()) - p_e, 1.0 - p_e)
    return ratio


def count_table(units: Sequence[Sequence[Label]], categories: Sequence[Label]) -> np.ndarray:
    """items x categories counts, the input of `fleiss_kappa`."""
    index = {c: i for i, c in enumerate(categories)}
    table = np.zeros((len(units), len(categories)))
    for row, values in enumerate(units):
        for value in values:
            table[row, index[value]] += 1
    return table


# ----------------------------------------------------------------------------------------------
# Krippendorff's alpha (any number of raters, missing labels allowed)

LEVELS = ("nominal", "ordinal", "interval", "ratio")


def _delta_squared(values: np.ndarray, marginals: np.ndarray, level: str) -> np.ndarray:
    """The k x k squared-difference function delta^2(c, k) of Krippendorff (2011), sec. 5."""
    k = len(values)
    if level == "nominal":
        return 1.0 - np.eye(k)
    if level == "interval":
        return (values[:, None] - values[None, :]) ** 2
    if level == "ratio":
        total = values[:, None] + values[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = ((values[:, None] - values[None, :]) / total) ** 2
        return np.nan_to_num(d)  # 0/0 when both values are 0: no difference
    if level == "ordinal":
        # (sum of marginals from c to k, minus half of the two ends)^2, categories in rank order
        cumulative = np.concatenate([[0.0], np.cumsum(marginals)])
        i, j = np.indices((k, k))
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        between = cumulative[hi + 1] - cumulative[lo]
        return (between - (marginals[i] + marginals[j]) / 2.0) ** 2
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def krippendorff_alpha(units: Sequence[Sequence[Label]], level: str = "nominal",
                       order: Sequence[Label] | None = None) -> float | None:
    """Krippendorff's alpha over units, each the list of labels it received (missing omitted).

    Build the coincidence matrix o_ck = sum_u (pairs (c,k) of different raters in u) / (m_u - 1),
    with marginals n_c and total n (units with fewer than 2 labels are not pairable and drop out).
    Then alpha = 1 - (n - 1) sum_ck o_ck d2_ck / sum_ck n_c n_k d2_ck.

    level: nominal (labels as categories), ordinal (ranks from `order`), interval and ratio
    (numeric labels; non-numeric labels use their position in `order`).
    """
    pairable = [list(v) for v in units if len(v) >= 2]
    if not pairable:
        return None
    cats = category_order([x for v in pairable for x in v], order)
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    coincidence = np.zeros((k, k))
    for values in pairable:
        counts = np.bincount([index[v] for v in values], minlength=k).astype(float)
        # ordered pairs of distinct raters: counts_c * counts_k, minus self-pairs on the diagonal
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (len(values) - 1)
    marginals = coincidence.sum(axis=1)
    n = marginals.sum()
    numeric = all(_is_number(c) for c in cats)
    positions = np.array([float(c) for c in cats]) if numeric else np.arange(k, dtype=float)
    d2 = _delta_squared(positions, marginals, level)
    expected = float((np.outer(marginals, marginals) * d2).sum())
    ratio = _ratio((n - 1) * float((coincidence * d2).sum()), expected)
    return None if ratio is None else 1.0 - ratio


# ----------------------------------------------------------------------------------------------
# All statistics for one criterion

def agreement_summary(ratings: Mapping[str, Mapping[str, Label]], level: str = "nominal",
                      weights: str | None = None, order: Sequence[Label] | None = None) -> dict:
    """Every statistic for one criterion; `ratings` maps item -> {annotator: label}.

    - cohen_kappa: with exactly two annotators, Cohen's kappa on the items both labelled;
      with more, the mean over annotator pairs (Light's kappa), pairs listed in `pairs`.
    - fleiss_kappa: on the items with the most common number of labels (Fleiss needs a fixed
      count); `fleiss_items` says how many items that was.
    - krippendorff_alpha: on all items with at least two labels.
    """
    units = [list(labels.values()) for labels in ratings.values()]
    labels = [x for v in units for x in v]
    annotators = {a for labels_ in ratings.values() for a in labels_}
    cats = category_order(labels, order) if labels else []
    pairs = pairwise_cohen(ratings, weights, cats)
    kappas = [p["kappa"] for p in pairs if p["kappa"] is not None]
    rated = [v for v in units if len(v) >= 2]
    fleiss, fleiss_items, raters_per_item = None, 0, None
    if rated:
        raters_per_item = Counter(len(v) for v in rated).most_common(1)[0][0]
        fixed = [v for v in rated if len(v) == raters_per_item]
        fleiss, fleiss_items = fleiss_kappa(count_table(fixed, cats)), len(fixed)
    return {
        "items": len(units),
        "items_multiply_labelled": len(rated),
        "annotators": len(annotators),
        "labels": len(labels),
        "label_counts": {str(c): labels.count(c) for c in cats},
        "percent_agreement": percent_agreement(units),
        "cohen_kappa": (sum(kappas) / len(kappas)) if kappas else None,
        "cohen_kind": "cohen" if len(annotators) == 2 else "light (mean pairwise cohen)",
        "cohen_weights": weights,
        "fleiss_kappa": fleiss,
        "fleiss_items": fleiss_items,
        "raters_per_item": raters_per_item,
        "krippendorff_alpha": krippendorff_alpha(units, level, cats),
        "krippendorff_level": level,
        "pairs": pairs,
    }



# ----------------------------------------------------------------------------------------------
# From annotation rows to ratings

OVERALL = "overall"


def ratings_from_rows(rows: Sequence[tuple[int, dict]], path: str | None = None,
                      label_field: str | None = None) -> dict[str, dict[str, dict[str, Label]]]:
    """criterion -> item -> {annotator: label}, from rows shaped like `records.Annotation`.

    Each row needs `item_id`, `annotator`, and a label in `choice` (or `label`, or the field
    named by `label_field`); per-criterion labels come from an optional `criteria` mapping.
    The overall label is criterion "overall". A null label counts as missing. Preference
    labels are normalised (a -> A, draw -> tie). An annotator labelling an item twice with
    different labels is an InputError (which one counts would be arbitrary).
    """
    out: dict[str, dict[str, dict[str, Label]]] = defaultdict(lambda: defaultdict(dict))
    for line, row in rows:
        for field in ("item_id", "annotator"):
            if row.get(field) is None or isinstance(row[field], (dict, list)):
                raise InputError(path, line, field, "missing (every annotation needs item_id and annotator)")
        item, annotator = str(row["item_id"]), str(row["annotator"])
        fields = [label_field] if label_field else ["choice", "label"]
        field = next((f for f in fields if f in row), None)
        labelled: dict[str, tuple[str, object]] = {}
        if field is not None and row[field] is not None:
            labelled[OVERALL] = (field, row[field])
        criteria = row.get("criteria") or {}
        if not isinstance(criteria, dict):
            raise InputError(path, line, "criteria", "expected a mapping of criterion -> label")
        for name, value in criteria.items():
            if value is not None:
                labelled[str(name)] = (f"criteria.{name}", value)
        if not labelled:
            raise InputError(path, line, fields[0], "missing label (expected choice, label or criteria)")
        for criterion, (where, value) in labelled.items():
            label = _label(value, path, line, where)
            previous = out[criterion][item].get(annotator)
            if previous is not None and previous != label:
                raise InputError(path, line, where, f"annotator {annotator!r} already labelled item "
                                 f"{item!r} as {previous!r}; got {label!r}")
            out[criterion][item][annotator] = label
    return {c: dict(items) for c, items in out.items()}


def _label(value: object, path: str | None, line: int, field: str) -> Label:
    """Preference strings normalise to A/B/tie; other strings and numbers are kept as they are."""
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise InputError(path, line, field, f"expected a label (text or number), got {value!r}")
    if isinstance(value, str) and value.strip().lower() in ("a", "b", "tie", "draw", "equal"):
        return normalise_winner(value, path, line, field)
    return value


# ----------------------------------------------------------------------------------------------
# `posttrain data agreement`

@dataclass
class AgreementConfig(DataArgs):
    input: str = help_field("", "annotations JSONL: item_id, annotator, choice (or label), optional criteria")
    output: str | None = help_field(None, "also write the full report (with every annotator pair) as JSON here")
    level: str = help_field("nominal", "level of measurement for Krippendorff's alpha", choices=LEVELS)
    weights: str = help_field("none", "Cohen's kappa disagreement weights", choices=("none", "linear", "quadratic"))
    order: list[str] | None = help_field(None, "categories from low to high for ordered statistics "
                                               "(default: A tie B, numeric, else alphabetical)")
    label_field: str | None = help_field(None, "field with the overall label (default: choice, then label)")
    criteria: list[str] | None = help_field(None, "report only these criteria (default: overall and all found)")


def agreement_report(rows: Sequence[tuple[int, dict]], cfg: AgreementConfig) -> dict:
    """criterion -> `agreement_summary`, for the rows of one annotations file."""
    ratings = ratings_from_rows(rows, cfg.input, cfg.label_field)
    names = sorted(ratings, key=lambda c: (c != OVERALL, c))
    if cfg.criteria:
        unknown = [c for c in cfg.criteria if c not in ratings]
        if unknown:
            raise PosttrainError(f"{cfg.input}: no labels for criteria {unknown} (found: {', '.join(names)})")
        names = list(cfg.criteria)
    weights = None if cfg.weights == "none" else cfg.weights
    report = {}
    for name in names:
        labels = {x for item in ratings[name].values() for x in item.values()}
        order = _match_order(cfg.order, labels)
        try:
            report[name] = agreement_summary(ratings[name], cfg.level, weights, order)
        except ValueError as exc:
            raise PosttrainError(f"criterion {name!r}: {exc}") from None
    return report


def _match_order(order: list[str] | None, labels: set) -> list | None:
    """Flags are text; map each to the label it names (so --order 1 2 3 matches numeric labels)."""
    if not order:
        return None
    by_text = {str(label): label for label in labels}
    return [by_text.get(x, x) for x in order]


def render(report: dict) -> str:
    headers = ["criterion", "items", "annotators", "% agree", "cohen k", "fleiss k", "kripp a"]
    rows = [[name, r["items"], r["annotators"], r["percent_agreement"], r["cohen_kappa"],
             r["fleiss_kappa"], r["krippendorff_alpha"]] for name, r in report.items()]
    first = next(iter(report.values()))
    weights = f", {first['cohen_weights']} weights" if first["cohen_weights"] else ""
    notes = [f"cohen k: {first['cohen_kind']}{weights}",
             f"kripp a: {first['krippendorff_level']} level; n/a = undefined (a single label value or no overlap)"]
    return format_table(headers, rows) + "\n" + "\n".join(notes)


def main(argv: list[str]) -> int:
    cfg = parse_config(AgreementConfig, argv, prog="posttrain data agreement", positional="input",
                       description="Inter-annotator agreement, overall and per criterion.")
    if not cfg.input:
        raise PosttrainError("no input file given (posttrain data agreement FILE)")
    rows = load_rows(cfg.input, **read_kwargs(cfg))
    if not rows:
        raise InputError(cfg.input, None, None, "no annotations in the file")
    report = agreement_report(rows, cfg)
    print(render(report))
    if cfg.output:
        write_json(cfg.output, json_safe({"input": cfg.input, "criteria": report}))
        print(f"wrote {cfg.output}")
    return 0
