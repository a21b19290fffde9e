"""Reference-based text metrics: BLEU, chrF, ROUGE-1/2/L, and BERTScore when available.

Scales follow the libraries that define the metrics, so numbers match what people
quote: BLEU and chrF in 0-100 (sacrebleu), ROUGE and BERTScore F1 in 0-1.

BLEU and chrF are *corpus* scores: n-gram matches are summed over all items
before the final formula is applied, so the corpus score is not the mean of
sentence scores. We keep each item's sufficient statistics (sacrebleu's own
per-segment statistics) in the result, so `compare.py` can bootstrap items and
re-score, the way sacrebleu's paired bootstrap test does.

`references[i]` is one reference string or a list of references for item i.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .intervals import bootstrap_indices
from .results import MetricResult, mean_result

References = Sequence[str | Sequence[str]]
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _reference_lists(predictions: Sequence[str], references: References) -> list[list[str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    lists = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not refs for refs in lists):
        raise ValueError("every item needs at least one reference")
    return lists


def _reference_streams(ref_lists: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu wants streams: stream j holds every item's j-th reference (None if absent)."""
    width = max(len(refs) for refs in ref_lists)
    return [[refs[j] if j < len(refs) else None for refs in ref_lists] for j in range(width)]


def _sacrebleu_metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    # Default settings: BLEU with the 13a tokenizer and exponential smoothing, chrF with
    # character 6-grams and beta 2 -- the signatures people report.
    return {"bleu": BLEU, "chrf": CHRF}[name]()


def segment_statistics(name: str, predictions: Sequence[str], references: References) -> list[list[float]]:
    """Per-item sufficient statistics for corpus "bleu" or "chrf" (they add up over items)."""
    metric = _sacrebleu_metric(name)
    streams = _reference_streams(_reference_lists(predictions, references))
    # sacrebleu's documented significance tests use these two methods the same way.
    return [[float(x) for x in row] for row in metric._extract_corpus_statistics(list(predictions), streams)]


def score_from_statistics(name: str, summed: Sequence[float]) -> float:
    """Corpus "bleu" / "chrf" from statistics summed over items."""
    metric = _sacrebleu_metric(name)
    return float(metric._compute_score_from_stats([float(x) for x in summed]).score)


def _corpus_result(name: str, predictions: Sequence[str], references: References, confidence: float,
                   item_ids: Sequence[str] | None, seed: int, n_resamples: int) -> MetricResult:
    stats = segment_statistics(name, predictions, references)
    matrix = np.asarray(stats)
    value = score_from_statistics(name, matrix.sum(axis=0))
    ci = None
    if len(stats) > 1 and n_resamples > 0:
        # Bootstrap over items: resample rows, sum, re-score.
        scores = [score_from_statistics(name, matrix[idx].sum(axis=0))
                  for idx in bootstrap_indices(len(stats), n_resamples, seed)]
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(scores, [tail, 100 - tail])
        ci = (float(low), float(high))
    return MetricResult(name=name, value=value, kind="corpus", n=len(stats), ci=ci, confidence=confidence,
                        stats=stats, scorer=name, item_ids=list(item_ids) if item_ids is not None else None)


def bleu(predictions: Sequence[str], references: References, confidence: float = 0.95,
         item_ids: Sequence[str] | None = None, seed: int = 0, n_resamples: int = 1000) -> MetricResult:
    """Corpus BLEU (sacrebleu defaults, 0-100) with a bootstrap interval over items."""
    return _corpus_result("bleu", predictions, references, confidence, item_ids, seed, n_resamples)


def chrf(predictions: Sequence[str], references: References, confidence: float = 0.95,
         item_ids: Sequence[str] | None = None, seed: int = 0, n_resamples: int = 1000) -> MetricResult:
    """Corpus chrF (sacrebleu defaults, 0-100) with a bootstrap interval over items."""
    return _corpus_result("chrf", predictions, references, confidence, item_ids, seed, n_resamples)


def rouge_scores(predictions: Sequence[str], references: References, types: Sequence[str] = ROUGE_TYPES,
                 use_stemmer: bool = True) -> dict[str, list[float]]:
    """Per-item ROUGE F1 for each type; with several references the best one counts."""
    from rouge_score import rouge_scorer

    ref_lists = _reference_lists(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    out: dict[str, list[float]] = {t: [] for t in types}
    for prediction, refs in zip(predictions, ref_lists):
        scores = scorer.score_multi(refs, prediction)
        for t in types:
            out[t].append(float(scores[t].fmeasure))
    return out


def rouge(predictions: Sequence[str], references: References, types: Sequence[str] = ROUGE_TYPES,
          confidence: float = 0.95, item_ids: Sequence[str] | None = None, seed: int = 0,
          use_stemmer: bool = True) -> list[MetricResult]:
    """Mean ROUGE F1 (0-1) per type, with per-item values and bootstrap intervals."""
    per_type = rouge_scores(predictions, references, types, use_stemmer)
    return [mean_result(t, values, confidence, item_ids, seed=seed) for t, values in per_type.items()]


def bertscore_available() -> bool:
    try:
        import bert_score  # noqa: F401
    except ImportError:
        return False
    return True


def bertscore(predictions: Sequence[str], references: References, model_dir: str | None, num_layers: int | None,
              confidence: float = 0.95, item_ids: Sequence[str] | None = None, seed: int = 0,
              lang: str = "en") -> MetricResult | None:
    """BERTScore F1 (0-1) per item, or None when it cannot run without a download.

    Runs only when the `bert_score` package is installed AND `model_dir` is a local
    model directory (with `num_layers`, the layer whose embeddings are compared);
    bert_score's default would fetch roberta-large from the hub, which we never do.
    """
    if not bertscore_available() or not model_dir or not os.path.isdir(model_dir) or num_layers is None:
        return None
    import bert_score

    ref_lists = _reference_lists(predictions, references)
    _, _, f1 = bert_score.score(list(predictions), ref_lists, model_type=model_dir, num_layers=num_layers,
                                lang=lang, verbose=False)
    return mean_result("bertscore_f1", [float(x) for x in f1], confidence, item_ids, seed=seed)


def reference_metrics(predictions: Sequence[str], references: References, confidence: float = 0.95,
                      item_ids: Sequence[str] | None = None, seed: int = 0,
                      bertscore_model: str | None = None, bertscore_layers: int | None = None) -> list[MetricResult]:
    """BLEU, chrF, ROUGE-1/2/L, plus BERTScore when it can run offline; skipped metrics are absent."""
    results = [bleu(predictions, references, confidence, item_ids, seed),
               chrf(predictions, references, confidence, item_ids, seed)]
    results += rouge(predictions, references, confidence=confidence, item_ids=item_ids, seed=seed)
    extra = bertscore(predictions, references, bertscore_model, bertscore_layers, confidence, item_ids, seed)
    return results + ([extra] if extra is not None else [])


def describe() -> dict[str, Any]:
    """Which reference metrics this installation can compute (for run metadata)."""
    return {"bleu": True, "chrf": True, "rouge": True, "bertscore": bertscore_available()}
