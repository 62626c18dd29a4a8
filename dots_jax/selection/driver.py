"""One training step's data collection, for every strategy: propose -> roll out -> observe, repeated
until the strategy is done, then exactly `batch_questions` groups form the training batch.

The main loop supplies `rollout_fn(indices) -> RolloutResult`: rollout + reward for those question
indices, G completions each, rows question-major. Its payload (e.g. the sampler output) is opaque here:
the batch says which group rows of which payload to train on (`CollectedBatch.parts`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from dots_jax.selection.base import StepContext, Strategy, group_stats, step_rng


@dataclasses.dataclass
class RolloutResult:
  rewards_NxG: np.ndarray
  payload: Any


@dataclasses.dataclass
class CollectedBatch:
  """`parts[i] = (payload, group_rows)`: take groups `group_rows` (question positions of that rollout
  call; completions rows g*G..g*G+G-1) of that payload; concatenating the parts in order gives the
  batch, aligned with `indices`, `rewards_BxG` and `predicted`."""

  indices: np.ndarray
  rewards_BxG: np.ndarray
  predicted: np.ndarray
  parts: list[tuple[Any, np.ndarray]]
  metrics: dict[str, float]


def collect_batch(strategy: Strategy, rollout_fn: Callable[[np.ndarray], RolloutResult], step: int,
                  rng: np.random.Generator | None, batch_questions: int, *,
                  seed: int = 0) -> CollectedBatch:
  """Runs the strategy's rollout rounds for `step`. `rng=None` derives it from (seed, step), which
  is what makes a resumed run repeat the same choices."""
  if batch_questions < 1:
    raise ValueError(f"batch_questions must be >= 1, got {batch_questions}")
  ctx = StepContext(step=int(step), rng=rng if rng is not None else step_rng(seed, step),
                    batch_questions=int(batch_questions))
  overhead = 0.0
  kept_parts, spare_parts = [], []  # (call number, group rows) of trainable groups, in order
  calls: list[tuple[RolloutResult, Any]] = []
  rollouts = ref_rollouts = skipped_rollouts = 0
  group_size = 0
  while True:
    t0 = time.perf_counter()
    proposal = strategy.propose(ctx)
    overhead += time.perf_counter() - t0
    if proposal is None:
      break
    ctx.skipped += proposal.skipped
    if len(proposal.indices) == 0:
      raise RuntimeError(f"strategy {strategy.name} proposed an empty rollout at step {step}")
    result = rollout_fn(proposal.indices)
    rewards = np.asarray(result.rewards_NxG, np.float32)
    group_size = rewards.shape[1]
    t0 = time.perf_counter()
    keep = np.asarray(strategy.observe(ctx, proposal, rewards), bool)
    overhead += time.perf_counter() - t0
    calls.append((result, proposal))
    ctx.round += 1
    rollouts += rewards.size
    skipped_rollouts += proposal.skipped * group_size
    if not proposal.train:
      ref_rollouts += rewards.size
      continue
    st = group_stats(rewards)
    ctx.train_rounds += 1
    ctx.generated += len(keep)
    ctx.kept += int(keep.sum())
    ctx.zero_var += int(st["zero_var"].sum())
    ctx.all_correct += int(st["all_correct"].sum())
    ctx.all_wrong += int(st["all_wrong"].sum())
    ctx.last_zero_var_ratio = float(st["zero_var"].mean())
    kept_parts.append((len(calls) - 1, np.flatnonzero(keep)))
    spare_parts.append((len(calls) - 1, np.flatnonzero(~keep)))
  t0 = time.perf_counter()
  strat_metrics = strategy.end_step(ctx)
  overhead += time.perf_counter() - t0

  # Accepted groups first (the reference trainers slice the first ones), then, if the round budget
  # ran out, groups the strategy rejected, so the batch always has the same shape.
  need = ctx.batch_questions
  chosen: list[tuple[int, np.ndarray]] = []
  backfilled = 0
  for pool, is_spare in ((kept_parts, False), (spare_parts, True)):
    for call, rows in pool:
      if need == 0:
        break
      rows = rows[:need]
      if len(rows):
        chosen.append((call, rows))
        need -= len(rows)
        backfilled += len(rows) if is_spare else 0
  if need:
    raise RuntimeError(f"strategy {strategy.name} rolled out {ctx.generated} trainable groups at "
                       f"step {step}, fewer than batch_questions={ctx.batch_questions}")
  chosen.sort(key=lambda cr: cr[0])  # payload order, so consumers can concatenate calls in order
  parts = [(calls[c][0].payload, rows) for c, rows in chosen]
  indices = np.concatenate([calls[c][1].indices[rows] for c, rows in chosen])
  rewards_BxG = np.concatenate([np.asarray(calls[c][0].rewards_NxG, np.float32)[rows]
                                for c, rows in chosen])
  predicted = np.concatenate([calls[c][1].predicted[rows] for c, rows in chosen])

  strategy.totals["rollouts"] += rollouts
  strategy.totals["skipped_rollouts"] += skipped_rollouts
  strategy.totals["steps"] += 1
  st = group_stats(rewards_BxG)
  has_pred = ~np.isnan(predicted)
  metrics = {
      "selection/pred_pass_rate": float(predicted[has_pred].mean()) if has_pred.any() else np.nan,
      "selection/obs_pass_rate": float(st["pass_rate"].mean()),
      "selection/pred_abs_err": (float(np.abs(predicted - st["pass_rate"])[has_pred].mean())
                                 if has_pred.any() else np.nan),
      "selection/effective_frac": float(1.0 - st["zero_var"].mean()),
      "selection/effective_frac_rolled": (float(1.0 - ctx.zero_var / ctx.generated)
                                          if ctx.generated else np.nan),
      "selection/rollouts": float(rollouts),
      "selection/rollouts_reference": float(ref_rollouts),
      "selection/rollouts_skipped": float(skipped_rollouts),
      "selection/questions_skipped": float(ctx.skipped),
      "selection/rollouts_cumulative": float(strategy.totals["rollouts"]),
      "selection/rollouts_skipped_cumulative": float(strategy.totals["skipped_rollouts"]),
      "selection/rounds": float(ctx.round),
      "selection/backfilled": float(backfilled),
      "selection/overhead_s": overhead,
  }
  metrics.update(strat_metrics)
  return CollectedBatch(indices, rewards_BxG, predicted, parts, metrics)
