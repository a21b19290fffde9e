"""Reference metrics against sacrebleu and rouge-score called directly."""
import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from posttrain.evaluate.reference import (
    bertscore,
    bleu,
    chrf,
    reference_metrics,
    rouge,
    score_from_statistics,
    segment_statistics,
)

PRED = ["the cat sat on the mat", "a quick brown fox jumps over the dog", "hello there world",
        "posttrain evaluates models", "it is raining today in the city"]
REF = ["the cat is sitting on the mat", "the quick brown fox jumped over the lazy dog", "hello world",
       "posttrain evaluates language models", "today it rains in the city"]


def test_bleu_and_chrf_equal_sacrebleu_corpus_scores():
    assert bleu(PRED, REF, n_resamples=0).value == pytest.approx(sacrebleu.corpus_bleu(PRED, [REF]).score, abs=1e-9)
    assert chrf(PRED, REF, n_resamples=0).value == pytest.approx(sacrebleu.corpus_chrf(PRED, [REF]).score, abs=1e-9)


def test_multiple_references_per_item():
    refs2 = ["a cat sat on a mat", "a fast brown fox jumps over the dog", "hello there", "models are evaluated",
             "rain today in the city"]
    mixed = [[a, b] for a, b in zip(REF, refs2)]
    expected = sacrebleu.corpus_bleu(PRED, [REF, refs2]).score
    assert bleu(PRED, mixed, n_resamples=0).value == pytest.approx(expected, abs=1e-9)


def test_summed_statistics_reproduce_the_corpus_score():
    stats = np.asarray(segment_statistics("bleu", PRED, REF))
    assert stats.shape == (5, 10)  # sys_len, ref_len, 4 match counts, 4 totals
    assert score_from_statistics("bleu", stats.sum(axis=0)) == pytest.approx(sacrebleu.corpus_bleu(PRED, [REF]).score)


def test_corpus_interval_is_seeded_and_contains_the_score():
    a, b = bleu(PRED, REF, seed=3, n_resamples=200), bleu(PRED, REF, seed=3, n_resamples=200)
    assert a.ci == b.ci and a.ci[0] <= a.value <= a.ci[1]
    assert a.kind == "corpus" and a.scorer == "bleu" and len(a.stats) == 5


def test_rouge_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    results = {r.name: r for r in rouge(PRED, REF)}
    for t in ("rouge1", "rouge2", "rougeL"):
        per_item = [scorer.score(r, p)[t].fmeasure for p, r in zip(PRED, REF)]
        assert results[t].per_item == pytest.approx(per_item)
        assert results[t].value == pytest.approx(np.mean(per_item))


def test_rouge1_by_hand():
    # prediction "a b c", reference "a b d": 2 shared unigrams, P = R = 2/3, F1 = 2/3
    (r1,) = rouge(["a b c"], ["a b d"], types=["rouge1"], use_stemmer=False)
    assert r1.value == pytest.approx(2 / 3)


def test_bertscore_never_downloads():
    # no local model directory -> skipped (and bert_score is not installed here anyway)
    assert bertscore(PRED, REF, model_dir=None, num_layers=None) is None
    assert bertscore(PRED, REF, model_dir="/nonexistent/roberta", num_layers=9) is None
    names = [m.name for m in reference_metrics(PRED, REF)]
    assert names == ["bleu", "chrf", "rouge1", "rouge2", "rougeL"]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="predictions"):
        bleu(PRED, REF[:2])
