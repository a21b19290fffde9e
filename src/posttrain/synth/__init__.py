"""posttrain.synth: making training data with models.

- `pairs`: preference pairs from scored, ranked or model-labelled responses (`posttrain pairs`)
- `responses`: reading those responses, with FILE:LINE errors
- `constitution`: constitutions (principles with critique and revision requests)
- `cai`: the Constitutional-AI critique -> revision loop over a chat backend
- `cai_command`: `posttrain cai` (outputs: traces, SFT rows, RLAIF pairs)

Multi-model generation itself is `posttrain generate` (posttrain/generate.py).
"""
