"""One simulated run: the config's own selection strategy (`factory.make_strategy`, driven by
`driver.collect_batch`) and replay buffer (`rl.replay`) over a `PassRateWorld` instead of a policy.

The loop is the trainer's (collect -> learn -> log -> evaluate), with the world in place of the
rollout engine and the update: rollouts are Bernoulli draws of the world's pass rates, the update
is `PassRateWorld.learn` on the trained groups, the evaluation the exact mean pass rate of the held-out
questions. DOTS gets an estimator fitted offline as the trainer's offline stage fits it
(`difficulty.offline.fit_on_labels`: `selection.dots.fit.pool` questions labelled by `fit.group`
rollouts of the initial policy) on the world's synthesized embeddings.

Time is modelled, not measured: a step costs its rollouts (reference rollouts included) plus
`sim.train_cost` rollout-equivalents per trained sequence (pi_old and the update).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np
from flax import nnx

from dots_jax.difficulty.estimator import DifficultyEstimator
from dots_jax.difficulty.offline import fit_on_labels
from dots_jax.difficulty.quality import estimator_predict, pearson_with_refs
from dots_jax.methods import get_method
from dots_jax.rl.replay import ReplayBuffer, admit, mix_replay
from dots_jax.run import settings
from dots_jax.rollout.roller import Rollouts
from dots_jax.selection.base import group_stats
from dots_jax.selection.dots import TargetedSource
from dots_jax.selection.driver import collect_batch
from dots_jax.selection.factory import make_strategy
from dots_jax.sim.world import PassRateWorld, WorldParams
from dots_jax.tiny.tracking import pearson


@dataclasses.dataclass
class Visits:
  """Every training rollout of a question (kept or rejected by the strategy; label-only reference
  rollouts excluded): (question, step, zero-variance), in step order."""

  qid: np.ndarray
  step: np.ndarray
  zero_var: np.ndarray


@dataclasses.dataclass
class SimResult:
  """A run's curve in `compare.read_curve`'s layout, its visits and the estimator's figures."""

  curve: dict[str, Any]
  visits: Visits
  estimator: dict[str, float]


def make_world(sim: ml_collections.ConfigDict, seed: int) -> PassRateWorld:
  """The world of the simulator's settings `sim` (`dots_jax.sim.settings.sim_config`) for `seed`."""
  if sim.questions < 1:
    raise ValueError("sim.questions must be the training set's size (>= 1), got "
                     f"{sim.questions}")
  return PassRateWorld(WorldParams.from_config(sim), sim.questions, sim.heldout, seed)


def fit_dots_estimator(config: ml_collections.ConfigDict, world: PassRateWorld, seed: int,
                       log: Callable[[str], None] = lambda _: None
                       ) -> tuple[DifficultyEstimator, dict[str, float]]:
  """The offline stage on the simulated pool: `fit.pool` questions with `fit.group` rollouts each
  under the initial policy, `fit.heldout` of them held out. Returns the estimator and its held-out
  Pearson against the observed labels (the DOTS paper's measure) and against the exact pass rates."""
  stage = settings.read(config).stage
  f = stage.fit
  rng = np.random.default_rng([seed, 0xF1])
  n = min(f.pool, world.num_questions)
  idx = rng.choice(world.num_questions, n, replace=False)
  observed = world.rollout(idx, f.group, rng).mean(axis=1)
  exact = world.pass_rates(idx)
  held = min(f.heldout, n // 4)
  train, test = np.arange(held, n), np.arange(held)
  emb = world.emb_NxD[idx]
  model, summary = fit_on_labels(stage, emb[train], observed[train], log)
  ref_size = min(f.ref_size, len(train))
  predict = estimator_predict(model)
  r_obs = pearson_with_refs(predict, emb, observed, train, test, ref_size, seed)[0]
  r_exact = pearson_with_refs(predict, emb, exact, train, test, ref_size, seed)[0]
  return model, {"heldout_pearson_observed": r_obs, "heldout_pearson_exact": r_exact,
                 "fit_steps": float(summary["steps"])}


Fitted = tuple[DifficultyEstimator, dict[str, float]]  # `fit_dots_estimator`'s result


def simulate(config: ml_collections.ConfigDict, sim: ml_collections.ConfigDict,
             log: Callable[[str], None] = lambda _: None,
             fitted: Fitted | None = None) -> SimResult:
  """`config.method` over the world of `sim` and `config.seed` for `config.total_steps` steps. A
  method with the DOTS estimator uses `fitted` (the offline stage on this seed's world, shared by
  the methods of a report), else fits its own."""
  s = settings.read(config)
  seed, steps = s.seed, s.total_steps
  method = get_method(s.method)
  group_size, batch = s.group_size, s.batch_questions
  world = make_world(sim, seed)
  kw, est_figures = {}, {}
  if method.needs_estimator:
    model, figures = fitted or fit_dots_estimator(config, world, seed, log)
    est_figures = dict(figures)
    # Each run its own copy: online fine-tuning (selection.dots.online_finetune) moves the adapters.
    kw = dict(embeddings_NxD=world.pool_embeddings(), estimator=nnx.clone(model))
  strategy = make_strategy(s.method, s.selection, world.num_questions, seed=seed,
                           group_size=group_size, **kw)
  buffer = (ReplayBuffer.build(s.replay, group_size, total_len=1, batch_groups=batch)
            if s.replay is not None else None)
  heldout = world.heldout_indices()
  visits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
  observe = strategy.observe

  def recording_observe(ctx, proposal, rewards_QxG):  # the strategy's own, plus a record
    if proposal.train:
      visits.append((proposal.indices.copy(), np.full(len(proposal.indices), ctx.step),
                     group_stats(rewards_QxG).zero_var_Q))
    return observe(ctx, proposal, rewards_QxG)

  strategy.observe = recording_observe

  def rollout_fn(indices: np.ndarray, round_: int) -> Rollouts:
    rng = np.random.default_rng([seed, step, round_, 0x5011])
    return Rollouts.rewards_only(indices, world.rollout(indices, group_size, rng))

  rows: list[dict[str, float]] = []
  tracking: list[float] = []
  rollouts = seconds = 0.0
  seen = np.zeros(world.num_questions, bool)
  rows.append(_evaluate(world, heldout, 0, rollouts, seconds))
  for step in range(steps):
    # collect
    n_fresh = buffer.plan(step)[0] if buffer is not None else batch
    collected = collect_batch(strategy, rollout_fn, step, n_fresh, seed=seed,
                              pass_rates=world.pass_rates)
    fresh = collected.rollouts.groups
    if isinstance(strategy.source, TargetedSource) and strategy.source.steps_in_round == 1 \
        and np.isfinite(strategy.source.pred).all():
      # A round started this step: its predictions against the policy they were made for.
      tracking.append(pearson(strategy.source.pred, world.pass_rates(world.pool_indices())))
    # learn
    born = _replay_steps(buffer)
    groups, is_replay_Q = mix_replay(buffer, fresh, seed, step)
    age_Q = np.where(is_replay_Q, step - np.array([born.get(int(q), step) for q in groups.qid_Q]),
                     0)
    weight_Q = np.where(is_replay_Q, sim.replay_decay ** age_Q, 1.0)
    world.learn(groups.qid_Q, ~group_stats(groups.rewards_QxG).zero_var_Q, weight_Q)
    admit(buffer, fresh, np.zeros((fresh.num_groups * group_size, 1), np.float32), step)
    world.drift(np.random.default_rng([seed, step, 0xD21F]))
    # log
    m = collected.metrics
    step_rollouts = m["selection/rollouts"]
    step_train = groups.num_groups * group_size * sim.train_cost
    rollouts += step_rollouts
    seconds += step_rollouts + step_train
    seen[fresh.qid_Q] = True
    # evaluate
    row = _evaluate(world, heldout, step + 1, rollouts, seconds)
    row.update({k: m.get(f"selection/{k}", np.nan) for k in
                ("effective_frac", "all_correct_frac", "all_wrong_frac", "pred_abs_err",
                 "pred_abs_err_exact", "pred_pearson_exact", "signal_share_exact",
                 "pool_signal_share_exact")})
    row.update(rollout_s=step_rollouts, update_s=step_train, step_s=step_rollouts + step_train,
               replayed=float(is_replay_Q.sum()))
    rows.append(row)
  curve = _curve(rows, float(seen.sum()))
  qid, st, zv = (np.concatenate(x) for x in zip(*visits))
  est_figures["tracking_pearson_min"] = float(np.min(tracking)) if tracking else np.nan
  est_figures["tracking_pearson_mean"] = float(np.mean(tracking)) if tracking else np.nan
  return SimResult(curve, Visits(qid, st, zv), est_figures)


def _replay_steps(buffer: ReplayBuffer | None) -> dict[int, int]:
  """Question id -> the step that rolled out its group in the buffer (the buffer keeps one per id)."""
  if buffer is None:
    return {}
  live = np.flatnonzero(buffer.seq_Q >= 0)
  return {int(q): int(s) for q, s in zip(buffer.qid_Q[live], buffer.step_Q[live])}


def _evaluate(world: PassRateWorld, heldout: np.ndarray, step: int, rollouts: float,
              seconds: float) -> dict[str, float]:
  p = world.pass_rates(heldout)
  return {"step": float(step), "accuracy": float(p.mean()),
          "stderr": float(p.std() / np.sqrt(len(p))), "rollouts": rollouts, "seconds": seconds,
          "pool_accuracy": float(world.pass_rates(world.pool_indices()).mean())}


# compare.read_curve's per-step names for the metrics logged above.
_PER_STEP = {"effective_frac": "effective_frac", "all_correct": "all_correct_frac",
             "all_wrong": "all_wrong_frac", "pred_abs_err": "pred_abs_err",
             "pred_abs_err_exact": "pred_abs_err_exact", "rollout_s": "rollout_s",
             "update_s": "update_s", "step_s": "step_s", "replayed": "replayed",
             "train_step": "step", "pred_pearson_exact": "pred_pearson_exact",
             "signal_share_exact": "signal_share_exact",
             "pool_signal_share_exact": "pool_signal_share_exact"}


def _curve(rows: list[dict[str, float]], distinct: float) -> dict[str, Any]:
  evals = {k: np.array([r[k] for r in rows], np.float64)
           for k in ("step", "accuracy", "stderr", "seconds", "rollouts", "pool_accuracy")}
  per_step = {name: np.array([r[key] for r in rows[1:]], np.float64)
              for name, key in _PER_STEP.items()}
  curve: dict[str, Any] = {**evals, **per_step, "distinct_questions": distinct, "pass_rates": {}}
  curve["zero_var"] = 1.0 - curve.pop("effective_frac")
  return curve
