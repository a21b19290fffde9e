"""posttrain.ab: A/B analysis of deployment feedback (`posttrain ab`).

- `schema`: the feedback log format and its validation
- `stats`: z test, chi-square, Mann-Whitney U, sign test
- `bradley_terry`: strengths from pairwise preferences, with intervals
- `power`: power, sample size, minimum detectable effect
- `sequential`: alpha spending for repeated looks (peeking)
- `analysis`: summaries, comparisons and the ship/keep/collect decision
- `report`, `command`: the terminal report and the CLI
"""
