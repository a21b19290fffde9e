"""The combined online objective: the GRPO policy loss plus DPO on rollout pairs plus
behaviour cloning on expert data, in one optimizer step (`posttrain grpo --dpo-coef 0.3
--bc-coef 0.1 --bc-data demos.jsonl`).

    J = policy_coef * L_policy + dpo_coef * L_dpo + bc_coef * L_bc

- L_policy: GRPO's clipped surrogate (+ KL, entropy), aggregated as `loss_aggregation` says.
- L_dpo: DPO (sigmoid, `dpo_beta`) on one pair per rollout group, best vs worst response
  (`losses.combined.group_best_worst_pairs`), averaged over the pairs of the whole (global)
  batch. Its reference is pi_ref when the run has one (`kl_coef > 0`), else pi_old, the policy
  that sampled the batch (so at the first update the margin is 0 and the loss log 2).
  The gradient comes from per-sample coefficients at the current weights
  (`losses.combined.dpo_sequence_coefficients`), so pairs may span micro-batches.
- L_bc: token-mean NLL of `bc_batch_size` expert completions (prompt/completion rows of
  `bc_data`), drawn afresh for every optimizer step, at temperature 1 (InstructGPT's
  "PPO-ptx" mixes a pre-training loss the same way).

With `dpo_coef = bc_coef = 0` and `policy_coef = 1` nothing here runs and the update is plain
GRPO's, bit for bit (tests/test_rl_combined.py).
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from ..data.prompts import parse_prompt
from ..data.readers import read_rows
from ..data.tokenize import encode
from ..errors import ConfigError, InputError
from ..losses.combined import dpo_sequence_coefficients, group_best_worst_pairs
from .rollouts import Sample, chunks, collate, scoring_batches


def check_combined(cfg: Any) -> None:
    """Config checks for the combined-objective fields of GRPOConfig."""
    for name in ("policy_coef", "dpo_coef", "bc_coef"):
        if getattr(cfg, name) < 0:
            raise ConfigError(name, "must be >= 0")
    if cfg.policy_coef == 0 and cfg.dpo_coef == 0 and cfg.bc_coef == 0:
        raise ConfigError("policy_coef", "every loss weight is 0: nothing would be trained")
    if cfg.dpo_coef > 0:
        if cfg.dpo_beta <= 0:
            raise ConfigError("dpo_beta", "must be > 0")
        if cfg.num_minibatches != 1:
            raise ConfigError("dpo_coef", "the DPO term pairs samples of one rollout batch: use num_minibatches 1")
    if cfg.bc_coef > 0 and not cfg.bc_data:
        raise ConfigError("bc_data", "bc_coef > 0 needs expert data: --bc-data FILE (prompt/completion rows)")
    if cfg.bc_data and cfg.bc_batch_size < 1:
        raise ConfigError("bc_batch_size", "must be at least 1")


def load_expert_samples(path: str, tokenizer, cfg: Any, text_rows: bool = False) -> list[Sample]:
    """prompt/completion rows -> Samples (prompt ids rendered like the RL prompts, then the
    completion's ids and EOS), for the behaviour-cloning (or PPO-ptx) term. With `text_rows`,
    rows with a "text" field and no prompt are plain documents (pre-training data): the NLL is
    on every token after the first, no template. Bad rows: one error naming file:line."""
    from .rollouts import render_prompt_ids

    prompts, completions, documents = [], [], []
    for where, raw in read_rows(path):
        if text_rows and "prompt" not in raw and "text" in raw:
            text = raw["text"]
            ids = encode(tokenizer, text) if isinstance(text, str) else []
            if len(ids) < 2:
                file, _, line = where.rpartition(":")
                raise InputError(file, int(line) if line.isdigit() else None, "text",
                                 "a text row needs a string of at least 2 tokens")
            documents.append((len(prompts) + len(documents), ids[:cfg.max_length], text))
            continue
        completion = raw.get("completion", raw.get("response"))
        if not isinstance(completion, str) or not completion.strip():
            file, _, line = where.rpartition(":")
            what = " or a 'text'" if text_rows else ""
            raise InputError(file, int(line) if line.isdigit() else None, "completion",
                             f"expert data needs a non-empty 'completion' (or 'response'){what} text")
        prompts.append(parse_prompt(dict(raw), where))
        completions.append(completion)
    if not prompts and not documents:
        raise InputError(path, None, None, "no expert rows in file")
    ids, kept = render_prompt_ids(prompts, tokenizer, cfg.template, cfg.max_length - cfg.max_new_tokens,
                                  cfg.length_policy)
    eos = tokenizer.eos_token_id
    samples = []
    for index, prompt_ids in zip(kept, ids):
        response = tokenizer(completions[index], add_special_tokens=False)["input_ids"] + [eos]
        samples.append(Sample(prompt_index=index, sample_index=0, prompt_ids=list(prompt_ids),
                              response_ids=response, text=completions[index], finish_reason="eos"))
    for index, tokens, text in documents:
        samples.append(Sample(prompt_index=index, sample_index=0, prompt_ids=tokens[:1], response_ids=tokens[1:],
                              text=text, finish_reason="eos"))
    return samples


def expert_batch(expert: Sequence[Sample], size: int, seed: int, step: int, update: int) -> list[Sample]:
    """The expert rows for one optimizer step: a function of (seed, step, update), so a resumed
    run draws the same ones."""
    rng = random.Random(seed * 1_000_003 + step * 1_009 + update)
    return rng.sample(list(expert), min(size, len(expert)))


def sequence_logps(run, samples: Sequence[Sample], pad_id: int, micro_batch_size: int, temperature: float,
                   field: str | None = None) -> torch.Tensor:
    """[N] summed response log-probs of `samples` under the current weights, no gradients
    (or, with `field`, from the per-token values already stored on the samples)."""
    from .online import batch_logprobs

    if field is not None:
        return torch.tensor([float(s.tokens[field].double().sum()) for s in samples], dtype=torch.float64)
    out = []
    for _, batch in scoring_batches(run, samples, micro_batch_size, lambda micro: collate(micro, pad_id)):
        with run.accelerator.autocast():
            logps = batch_logprobs(run.model, batch, temperature).logprobs
        out.append(torch.where(batch["response_mask"], logps, 0.0).double().sum(-1).cpu())
    return torch.cat(out)


def rollout_pairs(samples: Sequence[Sample], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-vs-worst pairs of the (prompt-major) rollout batch: (chosen, rejected) indices."""
    rewards = torch.tensor([s.score for s in samples], dtype=torch.float64).view(-1, n)
    return group_best_worst_pairs(rewards)


def set_dpo_coefficients(run, samples: Sequence[Sample], chosen: torch.Tensor, rejected: torch.Tensor,
                         pad_id: int, cfg: Any, now_field: str | None, ref_field: str | None,
                         temperature: float) -> float:
    """Store dL_dpo/dlogp on every sample (`scalars["dpo_coef"]`) at the current weights and
    return this process's summed pair loss (the caller divides by the global pair count).

    The current sequence log-probs come from `now_field` when the samples already hold them
    (pi_old before the first update), else from a no-grad pass. With no reference field the
    reference *is* the current policy (pi_old at the only update): the margin is 0 and the
    log-probs are not needed at all."""
    if ref_field is None:
        now = ref = torch.zeros(len(samples), dtype=torch.float64)
    else:
        now = sequence_logps(run, samples, pad_id, cfg.micro_batch_size, temperature, field=now_field)
        ref = sequence_logps(run, samples, pad_id, cfg.micro_batch_size, temperature, field=ref_field)
    loss_sum, coefficients = dpo_sequence_coefficients(now, ref, chosen, rejected, cfg.dpo_beta)
    for sample, value in zip(samples, coefficients.tolist()):
        sample.scalars["dpo_coef"] = value
    return float(loss_sum)


def dpo_surrogate(logps: torch.Tensor, mask: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """sum_i c_i * logp_i(theta) over a micro-batch: its gradient is the DPO loss's (see losses/combined.py)."""
    sequence = torch.where(mask, logps, 0.0).sum(-1)
    return (coefficients.to(sequence.dtype) * sequence).sum()


def bc_backward(run, expert: list[Sample], pad_id: int, cfg: Any, scale_world: int, last: bool) -> float:
    """Backpropagate bc_coef * (token-mean NLL of the expert batch); returns the NLL (this process).

    The mean is over this process's expert tokens: every process draws the same number of rows."""
    from .online import batch_logprobs

    return nll_backward(run, expert, pad_id, cfg.micro_batch_size, cfg.bc_coef * scale_world, last,
                        lambda batch: batch_logprobs(run.model, batch, 1.0).logprobs)


def nll_backward(run, rows: list[Sample], pad_id: int, micro_batch_size: int, coef: float, last: bool,
                 forward) -> float:
    """Backpropagate coef * (token-mean NLL of `rows`' response tokens), micro-batch by micro-batch
    with the denominator of all of them; returns the NLL. `forward(batch)` -> the [B, T] log-probs
    at temperature 1, or a (log-probs, extra) pair whose extra tensor is kept in the graph at weight
    0 (PPO's values: every parameter takes part in each backward, as DDP wants)."""
    from ..losses.sft import sft_loss_parts_from_logps

    collated = [collate(m, pad_id) for m in chunks(rows, micro_batch_size)]
    tokens = sum(int(b["response_mask"].sum()) for b in collated)

    def objective(batch):
        out = forward(batch)
        logps, extra = out if isinstance(out, tuple) else (out, None)
        nll_sum, _ = sft_loss_parts_from_logps(logps, batch["response_mask"], mode="token_mean")
        loss = coef * nll_sum / max(tokens, 1)
        if extra is not None:
            loss = loss + 0.0 * extra.sum()
        return loss, nll_sum.detach()
    nll_sums = run.backward_micro_batches(collated, objective, last_syncs=last)
    return sum(float(value) for value in nll_sums) / max(tokens, 1)
