"""Commands that join several parts of the library (each part's own command lives beside it:
`judge/command.py`, `safety/command.py`, `serve/commands.py`, ...).

- `generate`: `posttrain generate`, batched sampling from one or more models over a prompts file.
- `cai`: `posttrain cai`, Constitutional-AI critique and revision (synth/) with judged pairs (judge/).
- `demo`: `make demo` / `python -m posttrain.commands.demo`, the main pipeline with before/after.
- `demo_format`: `make demo-format`, the format-learning SFT demo.
"""
