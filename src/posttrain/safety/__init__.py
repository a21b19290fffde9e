"""posttrain.safety: red-teaming and safety preference data (docs/safety.md).

    attacks.py   seed topics x attack templates -> `Attack` conversations (six families)
    redteam.py   the loop: attacker rewrite -> target, turn by turn -> judge -> transcript rows
    classify.py  safety judges: keyword/regex and LLM; labels refused / safe / unsafe
    metrics.py   attack-success and over-refusal tables with Wilson intervals
    pairs.py     safe-over-unsafe and help-over-refusal preference pairs
    command.py   `posttrain redteam`, `posttrain safety pairs`
    stage.py     the `safety` pipeline stage: red-team -> pairs -> DPO -> red-team again

`posttrain data filter --safety` (personal data, harmful compliance in training data) lives in
`posttrain.quality.safety`; the refusal-rate probe suite in `posttrain.evaluate.safety`.
"""
