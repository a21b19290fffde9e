"""posttrain.quality: statistics and filters for preference and instruction data.

    agreement.py   Cohen / Fleiss kappa, Krippendorff alpha, % agreement  (`data agreement`)
    bias.py        position, length and model bias of pairwise labels      (`data bias`)
    validate.py    completeness, consistency, diversity, balance           (`data validate`)
    filter.py      heuristic / score / duplicate / safety filtering        (`data filter`)
    dedup.py       duplicates and train/eval contamination                 (`data dedup`)
    heuristics.py  length, repetition, symbol share, prompt echo, refusals
    safety.py      personal-data detection and redaction, harmful-request classifier
    near.py        normalised hashes, character shingles, MinHash LSH
    fields.py      prompt / response / label views of any row shape
    table.py       terminal tables and JSON-safe numbers

See docs/data-quality.md.
"""
