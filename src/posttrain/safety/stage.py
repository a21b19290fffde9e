"""The `safety` pipeline stage: red-team -> pairs -> DPO -> red-team again, in one stage.

    stages:
      - {name: sft, type: sft, with: {...}}
      - name: safety
        type: safety
        with: {model: "${sft.model}", limit: 40, max_steps: 40, peft: lora}
      - {name: eval, type: eval, with: {model: "${safety.model}", suite: [safety]}}

Inside the stage directory:

    redteam_train/   red-team of the starting model on the *train* topics (+ benign look-alikes);
                     its transcript gives pairs.jsonl (safe over unsafe, help over refusal)
    before/          red-team of the starting model on the held-out *eval* topics
    dpo/             DPO (LoRA by default) on the pairs: the stage's `model` output
    after/           red-team of the trained model on the same eval attacks as before/
    safety.json      both tables and the change in attack success and over-refusal (after -
                     before, Newcombe interval), overall, per family and per category

Topics are split by a stable hash (`attacks.topic_split`), so the before/after measurement
never sees a topic the pairs were built from; the attack *templates* are shared, so this
measures generalisation to new requests under known attack styles, not to new attack styles.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import help_field, save_config
from ..errors import ConfigError, PosttrainError
from ..jsonl import write_json
from .attacks import FAMILIES
from .command import Backends, RedteamConfig, log_err, run_redteam_command
from .metrics import compare_tables, format_table
from .pairs import BENIGN_CHOSEN, SAFE_RESPONSES


@dataclass
class SafetyStageConfig:
    model: str = help_field("smollm2-135m", "the model to red-team and train")
    output_dir: str = help_field("runs/safety", "stage directory")
    dpo_output_dir: str | None = help_field(None, "DPO run directory (default: OUTPUT_DIR/dpo)")
    judge_model: str = help_field("keyword", "safety judge: keyword or a model (local, or served at --judge-url)",
                                  aliases=["judge"])
    judge_url: str | None = help_field(None, "OpenAI-compatible endpoint serving --judge-model")
    judge_template: str = help_field("default", "LLM judge prompt: default or a .yaml path")
    families: list[str] = help_field([], "only these attack families (default: all)", choices=list(FAMILIES))
    limit: int = help_field(0, "at most N attacks per red-team run (0: all)")
    benign_limit: int = help_field(0, "at most N benign prompts per red-team run (0: all)")
    eval_fraction: float = help_field(0.5, "share of topics held out for the before/after measurement")
    max_new_tokens: int = help_field(128, "longest target reply in tokens", aliases=["max_tokens"])
    safe_response: str = help_field("template", "who writes the safe replies", choices=list(SAFE_RESPONSES))
    benign_chosen: str = help_field("auto", "helpful answers for benign pairs", choices=list(BENIGN_CHOSEN))
    generation_batch_size: int = help_field(8, "conversations generated together")
    device: str | None = help_field(None, "torch device for generation")
    seed: int = help_field(0, "seed for attack selection, sampling and training")
    confidence: float = help_field(0.95, "confidence level of every interval")
    # DPO
    peft: str = help_field("lora", "DPO: parameter-efficient method (none: full fine-tuning)")
    learning_rate: float = help_field(5e-5, "DPO: peak learning rate")
    max_steps: int = help_field(40, "DPO: optimizer steps")
    batch_size: int = help_field(4, "DPO: pairs per micro-batch")
    beta: float = help_field(0.1, "DPO: beta")
    dpo: dict = help_field({}, "DPO: any other `posttrain dpo` option, as a mapping (e.g. {loss: [ipo]})")


def _redteam_config(cfg: SafetyStageConfig, split: str, output_dir: Path, target: str,
                    pairs_output: str | None = None) -> RedteamConfig:
    return RedteamConfig(target=target, judge_model=cfg.judge_model, judge_url=cfg.judge_url, judge_template=cfg.judge_template,
                         families=cfg.families, topic_split=split, eval_fraction=cfg.eval_fraction, limit=cfg.limit,
                         benign_limit=cfg.benign_limit, output_dir=str(output_dir), pairs_output=pairs_output,
                         safe_response=cfg.safe_response, benign_chosen=cfg.benign_chosen,
                         max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generation_batch_size, device=cfg.device,
                         seed=cfg.seed, confidence=cfg.confidence)


def dpo_config(cfg: SafetyStageConfig, data: str, output_dir: str):
    """The DPOConfig of the training step; `cfg.dpo` may set any other DPO field."""
    from ..config import from_mapping
    from ..train.dpo import DPOConfig

    known = {f.name for f in dataclasses.fields(DPOConfig)}
    clash = sorted({"model", "data", "output_dir"} & set(cfg.dpo))
    if clash:
        raise ConfigError("dpo", f"'{clash[0]}' is set by the safety stage itself")
    unknown = sorted(set(str(k).replace("-", "_") for k in cfg.dpo) - known)
    if unknown:
        raise ConfigError("dpo", f"unknown DPO option '{unknown[0]}'")
    values = {"model": cfg.model, "data": data, "output_dir": output_dir, "peft": cfg.peft,
              "learning_rate": cfg.learning_rate, "max_steps": cfg.max_steps, "batch_size": cfg.batch_size,
              "beta": cfg.beta, "seed": cfg.seed, "progress": False, **cfg.dpo}
    return from_mapping(DPOConfig, values, source="safety stage 'dpo'")


def run_safety_stage(cfg: SafetyStageConfig, log=log_err, echo=print) -> dict[str, Any]:
    """Red-team, build pairs, train with DPO, red-team again; returns the contents of safety.json."""
    from ..train.dpo import train_dpo

    out = Path(cfg.output_dir)
    dpo_dir = cfg.dpo_output_dir or str(out / "dpo")
    pairs_file = str(out / "redteam_train" / "pairs.jsonl")
    dpo_cfg = dpo_config(cfg, pairs_file, dpo_dir)  # bad DPO options fail before any model runs
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "safety_config.yaml")
    backends = Backends(_redteam_config(cfg, "train", out, cfg.model))
    try:
        target = backends.get(cfg.model, None)  # one load for both runs on the starting model
        log("safety: red-team (train topics) -> pairs")
        train = run_redteam_command(_redteam_config(cfg, "train", out / "redteam_train", cfg.model, pairs_file),
                                    target=target, log=log, echo=log)
        log("safety: red-team (eval topics), before training")
        before = run_redteam_command(_redteam_config(cfg, "eval", out / "before", cfg.model),
                                     target=target, log=log, echo=log)
    finally:
        backends.close()
    target = backends = None  # free the starting model before training
    if not train["pairs"]["pairs"]:
        raise PosttrainError("safety stage: the train red-team gave no pairs (no unsafe replies and no benign prompts "
                             "with a helpful answer); nothing to train on")
    log(f"safety: DPO on {train['pairs']['pairs']} pairs")
    result = train_dpo(dpo_cfg)
    log("safety: red-team (eval topics), after training")
    after = run_redteam_command(_redteam_config(cfg, "eval", out / "after", dpo_dir), log=log, echo=log)
    summary = {"format": "posttrain.safety/1", "model": cfg.model, "trained_model": dpo_dir,
               "pairs": train["pairs"], "dpo": {"steps": result.steps, "seconds": round(result.seconds, 1),
                                                "last_metrics": result.last_metrics},
               "before": before, "after": after, "comparison": compare_tables(before, after, cfg.confidence)}
    write_json(out / "safety.json", summary)
    echo("before (eval topics):\n" + format_table(before))
    echo("after (eval topics):\n" + format_table(after))
    echo(f"wrote {out / 'safety.json'}; trained model in {dpo_dir}")
    return summary
