"""posttrain.synth: making training data with models.

- `pairs`: preference pairs from scored, ranked or model-labelled responses (`posttrain pairs`)
- `responses`: reading those responses, with FILE:LINE errors
- `constitution`: constitutions (principles with critique and revision requests)
- `cai`: the Constitutional-AI critique -> revision loop over a chat backend, and its
  output rows (SFT rows, RLAIF pairs); the `posttrain cai` command, which can also ask a
  judge to pick pairs, is posttrain/commands/cai.py (it joins synth/ and judge/)

Multi-model generation itself is `posttrain generate` (posttrain/generate.py).
"""
