"""posttrain.evaluate: model-free evaluation metrics with confidence intervals.

- `results`: the `MetricResult` record and the results JSON (write/read/table)
- `intervals`: Wilson, Newcombe, Wald, MOVER and bootstrap intervals
- `reference`: BLEU, chrF, ROUGE, BERTScore (when available offline)
- `winrate`: position-swapped and length-controlled win-rates
- `accuracy`: accuracy, pass@k, perplexity
- `safety`: the shipped safety probe suite, refusal classifier and rates
- `compare`: two runs side by side with intervals on the differences
"""
