"""One training step's data collection, for every strategy: propose -> roll out -> observe, repeated
until the strategy is done, then the first `num_groups` accepted groups form the training batch.
When the strategy's rounds end with fewer accepted groups, the batch is shorter (the reference
trainers train on what they collected; rejected zero-variance groups would add no gradient and only
dilute the token mean); the update pads it to the planned shape.

The main loop supplies `rollout_fn(indices, round) -> Rollouts` (`dots_jax.rollout`): rollout + reward
for those question indices, G completions each, rows question-major; `round` numbers the rollout
calls of the step (its randomness is keyed by it). The chosen groups come back concatenated in
rollout order (`CollectedBatch.rollouts`), with every call's reward statistics. Where the task gives
exact pass rates (`pass_rates`), a strategy's predictions for the trained batch are also compared with
them: the estimator's error without the G-sample noise of the observed pass rate.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from dots_jax.rewards import RewardStats
from dots_jax.rollout.roller import Rollouts
from dots_jax.rl.batch import signal_share
from dots_jax.selection.base import (CandidateSource, Proposal, StepContext, Strategy, group_stats,
                                     step_rng)

RolloutFn = Callable[[np.ndarray, int], Rollouts]
PassRatesFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class CollectedBatch:
  """The step's training groups (`rollouts`, in rollout order), aligned with the question `indices`
  and the strategy's `predicted` pass rates; `reward_stats` covers every rollout of the step
  (label-only and rejected groups too)."""

  rollouts: Rollouts
  indices: np.ndarray
  predicted: np.ndarray
  reward_stats: RewardStats
  metrics: dict[str, float]

  @property
  def rewards_QxG(self) -> np.ndarray:
    return self.rollouts.rewards_QxG


def collect_batch(strategy: Strategy, rollout_fn: RolloutFn, step: int, num_groups: int, *,
                  rng: np.random.Generator | None = None, seed: int = 0,
                  pass_rates: PassRatesFn | None = None) -> CollectedBatch:
  """Runs the strategy's rollout rounds for `step` until `num_groups` trainable groups exist.
  `rng=None` derives it from (seed, step), which is what makes a resumed run repeat the same
  choices. `pass_rates` gives exact pass rates under the rollout policy, where the task has them."""
  if num_groups < 1:
    raise ValueError(f"num_groups must be >= 1, got {num_groups}")
  ctx = StepContext(step=int(step), rng=rng if rng is not None else step_rng(seed, step),
                    batch_questions=int(num_groups), pass_rates=pass_rates)
  overhead = 0.0
  kept_parts, spare_parts = [], []  # (call number, group rows) of accepted / rejected groups
  calls: list[tuple[Rollouts, Proposal]] = []
  rollouts = ref_rollouts = skipped_rollouts = tokens = 0
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
    result = rollout_fn(proposal.indices, ctx.round)
    rewards = np.asarray(result.rewards_QxG, np.float32)
    group_size = rewards.shape[1]
    t0 = time.perf_counter()
    keep = np.asarray(strategy.observe(ctx, proposal, rewards), bool)
    overhead += time.perf_counter() - t0
    calls.append((result, proposal))
    ctx.round += 1
    rollouts += rewards.size
    tokens += int(np.sum(result.lengths_QxG))
    skipped_rollouts += proposal.skipped * group_size
    if not proposal.train:
      ref_rollouts += rewards.size
      # Reference groups with reward variance may train (`Proposal.trainable`): first in the batch.
      ctx.kept += int(keep.sum())
      if keep.any():
        kept_parts.append((len(calls) - 1, np.flatnonzero(keep)))
      continue
    st = group_stats(rewards)
    ctx.train_rounds += 1
    ctx.generated += len(keep)
    ctx.kept += int(keep.sum())
    ctx.zero_var += int(st.zero_var_Q.sum())
    ctx.all_correct += int(st.all_correct_Q.sum())
    ctx.all_wrong += int(st.all_wrong_Q.sum())
    ctx.last_zero_var_ratio = float(st.zero_var_Q.mean())
    kept_parts.append((len(calls) - 1, np.flatnonzero(keep)))
    spare_parts.append((len(calls) - 1, np.flatnonzero(~keep)))
  t0 = time.perf_counter()
  strat_metrics = strategy.end_step(ctx)
  overhead += time.perf_counter() - t0

  # The first accepted groups, as the reference trainers slice them.
  need = ctx.batch_questions
  chosen: list[tuple[int, np.ndarray]] = []
  for call, rows in kept_parts:
    rows = rows[:need]
    if len(rows):
      chosen.append((call, rows))
      need -= len(rows)
  if not chosen:  # nothing trainable this step: an empty batch, every optimizer update is skipped
    chosen.append((spare_parts[0][0] if spare_parts else len(calls) - 1, np.zeros((0,), np.int64)))
  chosen.sort(key=lambda cr: cr[0])  # rollout order
  chosen_rollouts = Rollouts.concat([calls[c][0].take(rows) for c, rows in chosen])
  rewards_QxG = chosen_rollouts.rewards_QxG
  indices = np.concatenate([calls[c][1].indices[rows] for c, rows in chosen])
  predicted = np.concatenate([calls[c][1].predicted[rows] for c, rows in chosen])
  reward_stats = RewardStats()
  for result, _ in calls:
    reward_stats = reward_stats.merge(result.reward_stats)

  strategy.totals["rollouts"] += rollouts
  strategy.totals["skipped_rollouts"] += skipped_rollouts
  strategy.totals["steps"] += 1
  st = group_stats(rewards_QxG)
  has_pred = ~np.isnan(predicted)
  metrics = {
      "selection/pred_pass_rate": float(predicted[has_pred].mean()) if has_pred.any() else np.nan,
      "selection/obs_pass_rate": _mean(st.pass_rate_Q),
      "selection/pred_abs_err": (float(np.abs(predicted - st.pass_rate_Q)[has_pred].mean())
                                 if has_pred.any() else np.nan),
      "selection/effective_frac": 1.0 - _mean(st.zero_var_Q),
      "selection/all_correct_frac": _mean(st.all_correct_Q),
      "selection/all_wrong_frac": _mean(st.all_wrong_Q),
      "selection/effective_frac_rolled": (float(1.0 - ctx.zero_var / ctx.generated)
                                          if ctx.generated else np.nan),
      "selection/rollouts": float(rollouts),
      "selection/rollouts_reference": float(ref_rollouts),
      "selection/rollouts_skipped": float(skipped_rollouts),
      "selection/questions_skipped": float(ctx.skipped),
      "selection/rollouts_cumulative": float(strategy.totals["rollouts"]),
      "selection/rollouts_skipped_cumulative": float(strategy.totals["skipped_rollouts"]),
      "selection/rounds": float(ctx.round),
      "selection/completion_tokens": float(tokens),
      "selection/short_groups": float(ctx.batch_questions - sum(len(r) for _, r in chosen)),
      "selection/overhead_s": overhead,
  }
  metrics.update(strat_metrics)
  if pass_rates is not None and group_size:
    metrics.update(exact_figures(pass_rates, strategy.source, indices, predicted, group_size))
  return CollectedBatch(chosen_rollouts, indices, predicted, reward_stats, metrics)


# Pool questions whose exact pass rates stand for a uniform batch each step (evenly spaced indices)
EXACT_SAMPLE = 256
# The predictions' Pearson r is also taken over the sample's questions the draw has not rolled out
# in this many rounds (sources with rounds): how well the estimator follows what it stopped drawing.
UNDRAWN_ROUNDS = 5


def exact_figures(pass_rates: PassRatesFn, source: CandidateSource, indices: np.ndarray,
                  predicted: np.ndarray, group_size: int) -> dict[str, float]:
  """The step measured against exact pass rates, without the G-sample noise of observed ones:
  the trained batch's expected share of groups with reward variance (`signal_share`) beside a
  uniform batch's (a fixed sample of the pool), and where the source predicts, its error on the
  batch and the Pearson r of its predictions with the truth over the sample. Its time is reported
  (`selection/diagnostic_s`) so the loop can leave it out of the method's training seconds."""
  t0 = time.perf_counter()
  n = source.num_questions
  sample = np.unique(np.linspace(0, n - 1, min(n, EXACT_SAMPLE)).astype(np.int64))
  exact = np.asarray(pass_rates(np.concatenate([indices, sample])), np.float64)
  batch_p, pool_p = exact[:len(indices)], exact[len(indices):]
  out = {"selection/exact_pass_rate": _mean(batch_p),
         "selection/signal_share_exact": _mean(signal_share(batch_p, group_size)),
         "selection/pool_signal_share_exact": _mean(signal_share(pool_p, group_size))}
  has_pred = ~np.isnan(predicted)
  if has_pred.any():
    out["selection/pred_abs_err_exact"] = float(np.abs(predicted - batch_p)[has_pred].mean())
  pool_pred = np.asarray(source.predicted(sample), np.float64)
  if np.isfinite(pool_pred).all():
    out.update(_pearson("selection/pred_pearson_exact", pool_pred, pool_p))
    undrawn = getattr(source, "undrawn", None)
    if undrawn is not None:
      mask = undrawn(sample, UNDRAWN_ROUNDS)
      out["selection/undrawn_share"] = float(mask.mean())
      out.update(_pearson("selection/pred_pearson_undrawn_exact", pool_pred[mask], pool_p[mask]))
  out["selection/diagnostic_s"] = time.perf_counter() - t0
  return out


def _pearson(name: str, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
  """{name: Pearson r} where both vary over at least a few questions, else {}."""
  if len(x) < 8 or x.std() == 0 or y.std() == 0:
    return {}
  return {name: float(np.corrcoef(x, y)[0, 1])}


def _mean(x: np.ndarray) -> float:
  return float(np.mean(x)) if np.size(x) else float("nan")
