"""Multi-stage pipelines: `posttrain run PIPELINE.yaml`.

A pipeline file names stages in order. Each stage has a `type` (a posttrain
command: sft, dpo, grpo, eval, ...) and `with:`, the fields of that command's
config. A value may refer to an earlier stage's output as `${stage.output}`
(e.g. `model: ${sft.model}`); `defaults:` fills fields every stage shares.

    name: demo
    output_dir: runs/demo
    defaults: {model: smollm2-135m, seed: 0}
    stages:
      - {name: sft, type: sft, with: {data: [train.jsonl], peft: lora}}
      - {name: eval, type: eval, with: {model: "${sft.model}", suite: [task]}}

Each stage runs in `output_dir/<stage>/`, whose output paths posttrain fills in.
A stage is cached under a hash of its type, its resolved config and the content
of the files it reads (an upstream stage contributes its own hash). A rerun
skips finished stages with an unchanged hash and starts at the first changed or
failed one; a failed training stage resumes from its last checkpoint. A failure
leaves earlier stages' outputs untouched. `pipeline.json` records every stage's
status, timing and outputs for `posttrain report`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .config import canonical_name, from_mapping, help_field, load_yaml_mapping, parse_config
from .data.readers import resolve_split
from .errors import ConfigError, PosttrainError
from .jsonl import write_json


@dataclass(frozen=True)
class StageType:
    """How to run one kind of stage: its config class, its function, and where its outputs go."""

    config: str  # "module:Class"
    run: str  # "module:function", called with the config
    outputs: dict[str, tuple[str, str]]  # config field -> (output name, path inside the stage dir)
    files: dict[str, str] = field(default_factory=dict)  # further outputs: name -> path inside the stage dir


def _train(module: str, config: str, function: str) -> StageType:
    return StageType(f"posttrain.{module}:{config}", f"posttrain.{module}:{function}",
                     {"output_dir": ("model", ".")})


STAGE_TYPES: dict[str, StageType] = {
    "sft": _train("train.sft", "SFTConfig", "train_sft"),
    "dpo": _train("train.dpo", "DPOConfig", "train_dpo"),
    "kto": _train("train.kto", "KTOConfig", "train_kto"),
    "rm": _train("train.reward", "RMConfig", "train_reward_model"),
    "grpo": _train("rl.grpo", "GRPOConfig", "train_grpo"),
    "rloo": _train("rl.grpo", "RLOOConfig", "train_grpo"),
    "ppo": _train("rl.ppo", "PPOConfig", "train_ppo"),
    "best-of-n": StageType("posttrain.rl.best_of_n:BestOfNConfig", "posttrain.rl.best_of_n:run_best_of_n",
                           {"output_dir": ("dir", ".")},
                           {"sft": "round-1/sft.jsonl", "pairs": "round-1/pairs.jsonl", "samples": "round-1/samples.jsonl"}),
    "score": StageType("posttrain.rollout.score:ScoreConfig", "posttrain.rollout.score:score_file",
                       {"output": ("scored", "scored.jsonl")}),
    "generate": StageType("posttrain.commands.generate:GenerateConfig", "posttrain.commands.generate:run_generate",
                          {"output": ("generations", "generations.jsonl")}),
    "pairs": StageType("posttrain.synth.pairs:PairsConfig", "posttrain.synth.pairs:run_pairs",
                       {"output": ("pairs", "pairs.jsonl"), "summary": ("summary", "summary.json")}),
    "judge": StageType("posttrain.judge.command:JudgeConfig", "posttrain.judge.command:run_judge",
                       {"output": ("judgements", "judgements.jsonl"), "summary": ("summary", "summary.json")}),
    "cai": StageType("posttrain.commands.cai:CaiConfig", "posttrain.commands.cai:run_cai",
                     {"sft_output": ("sft", "sft.jsonl"), "pairs_output": ("pairs", "pairs.jsonl"),
                      "trace_output": ("trace", "trace.jsonl"), "summary": ("summary", "summary.json")}),
    "eval": StageType("posttrain.evaluate.run:EvalConfig", "posttrain.evaluate.run:run_eval",
                      {"output_dir": ("results", ".")}),
    "redteam": StageType("posttrain.safety.command:RedteamConfig", "posttrain.safety.command:run_redteam_command",
                         {"output_dir": ("results", "."), "pairs_output": ("pairs", "pairs.jsonl")}),
    "safety": StageType("posttrain.safety.stage:SafetyStageConfig", "posttrain.safety.stage:run_safety_stage",
                        {"output_dir": ("results", "."), "dpo_output_dir": ("model", "dpo")}),
}

REFERENCE = re.compile(r"\$\{([A-Za-z0-9_\-]+)\.([A-Za-z0-9_\-]+)\}")
STATUS_FILE = "stage.json"


@dataclass
class Stage:
    name: str
    type: str
    settings: dict[str, Any]


@dataclass
class Pipeline:
    name: str
    output_dir: Path
    stages: list[Stage]
    source: str


def _import(target: str) -> Any:
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def load_pipeline(path: str, output_dir: str | None = None) -> Pipeline:
    """Read and check a pipeline file: stage names, types and references to earlier stages."""
    data = load_yaml_mapping(path)
    unknown = set(data) - {"name", "output_dir", "defaults", "stages", "description"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown pipeline field (known: name, description, output_dir, defaults, stages)", path)
    if not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ConfigError("stages", "a non-empty list of stages is needed", path)
    defaults = data.get("defaults") or {}
    stages: list[Stage] = []
    for index, raw in enumerate(data["stages"], start=1):
        where = f"stages[{index}]"
        if not isinstance(raw, dict) or "name" not in raw or "type" not in raw:
            raise ConfigError(where, "each stage needs a name and a type", path)
        name, kind = str(raw["name"]), str(raw["type"])
        if kind not in STAGE_TYPES:
            raise ConfigError(f"{where}.type", f"unknown stage type {kind!r} (known: {', '.join(sorted(STAGE_TYPES))})", path)
        if any(s.name == name for s in stages) or not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ConfigError(f"{where}.name", f"stage names must be unique words, got {name!r}", path)
        extra = set(raw) - {"name", "type", "with"}
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]}", "unknown stage field (put command options under 'with:')", path)
        settings = {**_applicable_defaults(kind, defaults, raw.get("with") or {}), **(raw.get("with") or {})}
        for ref_stage, _ in REFERENCE.findall(json.dumps(settings)):
            if ref_stage not in {s.name for s in stages}:
                raise PosttrainError(f"{path}: stage '{name}' refers to '${{{ref_stage}.…}}', "
                                     f"which is not an earlier stage")
        stages.append(Stage(name, kind, settings))
    out = Path(output_dir or data.get("output_dir") or Path("runs") / str(data.get("name") or Path(path).stem))
    return Pipeline(str(data.get("name") or Path(path).stem), out, stages, path)


def _applicable_defaults(kind: str, defaults: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """The pipeline defaults this stage type takes and does not set itself (under any spelling)."""
    config_class = _import(STAGE_TYPES[kind].config)
    names = {f.name for f in dataclasses.fields(config_class)} - {canonical_name(config_class, k) for k in own}
    return {k: v for k, v in defaults.items() if canonical_name(config_class, k) in names}


def stage_outputs(kind: str, stage_dir: Path) -> dict[str, str]:
    spec = STAGE_TYPES[kind]
    named = {**dict(spec.outputs.values()), **spec.files}
    return {name: str((stage_dir / rel).resolve()) if rel != "." else str(stage_dir.resolve())
            for name, rel in named.items()}


def resolve_references(value: Any, outputs: dict[str, dict[str, str]], stage: str) -> Any:
    """Replace `${stage.output}` in strings (recursively in lists and mappings)."""
    if isinstance(value, str):
        def replace(match: re.Match) -> str:
            upstream, name = match.groups()
            if name not in outputs.get(upstream, {}):
                raise PosttrainError(f"stage '{stage}': stage '{upstream}' has no output '{name}' "
                                     f"(it has: {', '.join(outputs.get(upstream, {})) or 'none'})")
            return outputs[upstream][name]
        return REFERENCE.sub(replace, value)
    if isinstance(value, list):
        return [resolve_references(v, outputs, stage) for v in value]
    if isinstance(value, dict):
        return {k: resolve_references(v, outputs, stage) for k, v in value.items()}
    return value


def file_fingerprint(path: Path) -> str:
    """Content hash of a file, or of a directory's files (names, sizes and contents)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for item in files:
        digest.update(str(item.relative_to(path) if item != path else item.name).encode())
        with open(item, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def stage_hash(stage: Stage, settings: dict[str, Any], upstream_hashes: dict[str, str], run_dir: Path) -> str:
    """Hash of what determines a stage's result: type, settings, upstream stages, input file contents.

    Files inside the run directory are earlier stages' outputs: their stage hash stands for them.
    """

    inputs = {}
    run_root = run_dir.resolve()
    for value in _strings(settings):
        path = Path(resolve_split(value, None)[0]) if len(value) < 4096 else Path(value)  # "data/uf:test" -> data/uf
        if len(value) < 4096 and path.exists() and run_root not in path.resolve().parents:
            inputs[value] = file_fingerprint(path)
    used = sorted({s for s, _ in REFERENCE.findall(json.dumps(stage.settings))})
    payload = {"type": stage.type, "settings": settings, "upstream": {u: upstream_hashes[u] for u in used},
               "inputs": inputs, "version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def read_status(stage_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((stage_dir / STATUS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def json_summary(result: Any) -> Any:
    """A JSON-safe summary of whatever a stage function returned."""
    if dataclasses.is_dataclass(result):
        result = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    if isinstance(result, dict):
        return {str(k): json_summary(v) for k, v in result.items() if not k.startswith("_")}
    if isinstance(result, (list, tuple)):
        return [json_summary(v) for v in result[:50]] if len(result) <= 50 else f"{len(result)} items"
    if isinstance(result, (int, float, str, bool)) or result is None:
        return result
    return str(result)


def stage_config(stage: Stage, settings: dict[str, Any], stage_dir: Path, source: str, resume: bool = False) -> Any:
    """The stage's command config, with its output paths inside `stage_dir`; bad fields are ConfigErrors."""
    kind = STAGE_TYPES[stage.type]
    config_class = _import(kind.config)
    fields = {f.name for f in dataclasses.fields(config_class)}
    values = dict(settings)
    for field_name, (output_name, rel) in kind.outputs.items():
        values[field_name] = str(stage_dir if rel == "." else stage_dir / rel)
    if resume and "resume" in fields:
        values["resume"] = True
    return from_mapping(config_class, values, source=f"{source}: stage '{stage.name}'")


def resolved_settings(pipeline: Pipeline) -> list[dict[str, Any]]:
    """Every stage's settings with references replaced, checked against its config before anything runs."""
    outputs: dict[str, dict[str, str]] = {}
    resolved = []
    for stage in pipeline.stages:
        settings = resolve_references(stage.settings, outputs, stage.name)
        stage_dir = pipeline.output_dir / stage.name
        stage_config(stage, settings, stage_dir, pipeline.source)  # fail early, before hours of training
        outputs[stage.name] = stage_outputs(stage.type, stage_dir)
        resolved.append(settings)
    return resolved


def run_pipeline(path: str, output_dir: str | None = None, force: list[str] | None = None,
                 dry_run: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a pipeline; returns the contents of `pipeline.json`."""
    pipeline = load_pipeline(path, output_dir)
    force = set(force or [])
    unknown = force - {s.name for s in pipeline.stages}
    if unknown:
        raise ConfigError("force", f"no stage named {sorted(unknown)[0]!r}")
    pipeline.output_dir.mkdir(parents=True, exist_ok=True)
    summary_path = pipeline.output_dir / "pipeline.json"
    record: dict[str, Any] = {"name": pipeline.name, "source": str(Path(path).resolve()), "stages": []}
    hashes: dict[str, str] = {}
    changed_upstream = False
    for number, (stage, settings) in enumerate(zip(pipeline.stages, resolved_settings(pipeline)), start=1):
        stage_dir = pipeline.output_dir / stage.name
        digest = stage_hash(stage, settings, hashes, pipeline.output_dir)
        hashes[stage.name] = digest
        outputs = stage_outputs(stage.type, stage_dir)
        status = read_status(stage_dir)
        entry = {"name": stage.name, "type": stage.type, "hash": digest, "dir": str(stage_dir), "outputs": outputs}
        header = f"[{number}/{len(pipeline.stages)}] {stage.name} ({stage.type})"
        if status.get("hash") == digest and status.get("status") == "done" and stage.name not in force and not changed_upstream:
            log(f"{header}: cached ({digest}), skipped")
            record["stages"].append({**status, **entry, "cached": True})
            continue
        changed_upstream = True  # everything after a (re)run stage runs too
        if dry_run:
            log(f"{header}: would run ({digest})")
            record["stages"].append({**entry, "status": "pending"})
            continue
        resume = status.get("hash") == digest and status.get("status") in ("failed", "running") and stage.name not in force
        if not resume and stage_dir.exists():
            shutil.rmtree(stage_dir)  # a changed stage starts clean; earlier stages are untouched
        stage_dir.mkdir(parents=True, exist_ok=True)
        log(f"{header}: {'resuming' if resume else 'running'} ({digest})")
        started = time.time()
        write_json(stage_dir / STATUS_FILE, {"hash": digest, "status": "running", "started": started})
        try:
            cfg = stage_config(stage, settings, stage_dir, pipeline.source, resume)
            result = _import(STAGE_TYPES[stage.type].run)(cfg)
        except (PosttrainError, KeyboardInterrupt) as exc:
            write_json(stage_dir / STATUS_FILE, {"hash": digest, "status": "failed", "started": started,
                                                 "seconds": time.time() - started, "error": str(exc)})
            record["stages"].append({**entry, "status": "failed", "error": str(exc)})
            write_json(summary_path, record)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise PosttrainError(f"stage '{stage.name}' failed: {exc} (earlier stages are kept; "
                                 f"rerun `posttrain run {path}` to resume here)") from None
        done = {"hash": digest, "status": "done", "started": started, "seconds": time.time() - started,
                "result": json_summary(result)}
        write_json(stage_dir / STATUS_FILE, done)
        record["stages"].append({**done, **entry, "cached": False})
        log(f"{header}: done in {done['seconds']:.0f}s")
    write_json(summary_path, record)
    return record


@dataclass
class RunConfig:
    pipeline: str = help_field("", "pipeline YAML file")
    output_dir: str | None = help_field(None, "run directory (default: the file's output_dir, else runs/NAME)")
    force: list[str] = help_field([], "rerun these stages (and everything after them) even if cached")
    dry_run: bool = help_field(False, "show what would run, run nothing")
    report: bool = help_field(True, "write report.html into the run directory at the end")


def main(argv: list[str]) -> int:
    cfg = parse_config(RunConfig, argv, prog="posttrain run", description=__doc__.splitlines()[0], positional="pipeline")
    if not cfg.pipeline:
        raise ConfigError("pipeline", "give a pipeline file: posttrain run PIPELINE.yaml")
    run_pipeline(cfg.pipeline, cfg.output_dir, cfg.force, cfg.dry_run)
    out = Path(cfg.output_dir or load_pipeline(cfg.pipeline).output_dir)
    if cfg.report and not cfg.dry_run:
        from .report.html import write_report  # matplotlib: only when a report is written

        path = write_report(out)
        print(f"report: {path}")
    return 0
