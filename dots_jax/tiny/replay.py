"""A selection source replayed against a finished run's exact pass-rate trajectory (open loop).

  python -m dots_jax.tiny.replay --workdir=W [--source=track|dots|oracle] [--config.selection...]

W is a run with exact evaluation of the pool (its `pass_rates/<step>.npz`, every `eval.every` steps,
over the pool's first `eval.max_questions` questions). Between evaluations every question's pass
rate is interpolated linearly. The source then runs its own rounds over those questions as in the
run (its reference rollouts and the batches it draws, G Bernoulli samples each from the trajectory),
but what it draws does not change the trajectory: the policy is the run's. So the figures measure
the estimator on a policy that moves as a real one does (for a trajectory of a sharp DOTS run: the
families it stopped drawing regress), at seconds per variant instead of a run. Per evaluation step:
the predictions' Pearson r with the exact pass rates over the questions and over those not drawn in
the last `driver.UNDRAWN_ROUNDS` rounds, and over the run, the expected share of the drawn groups
that have reward variance, against the oracle's (DOTS's rule on the exact rates) and a uniform draw's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dots_jax.data.dataset import load_dataset
from dots_jax.difficulty.offline import dots_inputs
from dots_jax.rl.batch import signal_share
from dots_jax.selection import factory
from dots_jax.rollout.roller import Rollouts
from dots_jax.selection.driver import UNDRAWN_ROUNDS, collect_batch
from dots_jax.selection.dots import TargetedSource, targeted_order
from dots_jax.tiny.tracking import pass_rate_steps, pearson, pool_pass_rates
from dots_jax.policy import policy_path
from dots_jax.run import settings
from dots_jax.run.workdir import read_config


@dataclasses.dataclass(frozen=True)
class ReplayRow:
  step: int
  pearson: float  # predictions vs exact pass rates, every question
  pearson_undrawn: float  # ... those not drawn in the last UNDRAWN_ROUNDS rounds
  undrawn_share: float


@dataclasses.dataclass(frozen=True)
class Replay:
  rows: list[ReplayRow]
  signal_share: float  # expected share of drawn groups with reward variance, over the run
  oracle_signal_share: float  # DOTS's rule on the exact rates, at the source's batch size
  uniform_signal_share: float
  reward_variance: float  # mean p (1 - p) of the drawn questions (the oracle's: 1/4 at best)
  oracle_reward_variance: float
  rollouts: int  # reference + training groups x G


class Trajectory:
  """Exact pass rates of the run's evaluated pool questions, linear between evaluations."""

  def __init__(self, workdir: str, n: int):
    self.steps = np.asarray(pass_rate_steps(workdir))
    self.rates = np.stack([pool_pass_rates(workdir, int(s), n) for s in self.steps])

  def at(self, step: float) -> np.ndarray:
    j = int(np.clip(np.searchsorted(self.steps, step, side="right") - 1, 0, len(self.steps) - 1))
    if j + 1 >= len(self.steps):
      return self.rates[-1]
    f = (step - self.steps[j]) / (self.steps[j + 1] - self.steps[j])
    return (1.0 - f) * self.rates[j] + f * self.rates[j + 1]


def replay(workdir: str, config: Any, *, seed: int = 0) -> Replay:
  """`config.method`'s source (a DOTS, track or oracle method) over `workdir`'s trajectory."""
  run = settings.read(read_config(workdir))
  pool = load_dataset(run.data, "train")
  n = min(len(pool), run.eval.max_questions or len(pool))
  problems = [pool[i].problem for i in range(len(pool))]
  traj = Trajectory(workdir, n)
  s = settings.read(config)
  emb, model = dots_inputs(settings.dots_stage(s, policy_path(s.model.path, s.tiny)), problems)
  strategy = factory.make_strategy(s.method, s.selection, n, seed=s.seed, group_size=s.group_size,
                                   embeddings_NxD=emb[:n], estimator=model)
  source = strategy.source
  if not isinstance(source, TargetedSource):
    raise ValueError(f"config.method={config.method!r} has no round source to replay")
  g, batch = int(config.sampling.group_size), int(config.rl.batch_questions)
  steps = int(traj.steps[-1])
  rng = np.random.default_rng([seed, 0x5EED])
  drawn_signal, oracle_signal, uniform_signal, drawn_var, oracle_var = [], [], [], [], []
  rows: list[ReplayRow] = []
  rollouts = 0
  for step in range(steps + 1):
    p = traj.at(step)
    if step in traj.steps:
      pred = source.predicted(np.arange(n)).astype(np.float64)
      mask = source.undrawn(np.arange(n), UNDRAWN_ROUNDS)
      rows.append(ReplayRow(step, pearson(pred, p) if np.isfinite(pred).all() else np.nan,
                            pearson(pred[mask], p[mask]) if np.isfinite(pred).all() and
                            mask.sum() > 8 else np.nan, float(mask.mean())))
    if step == steps:
      break
    def rollout_fn(indices: np.ndarray, round_: int, p=p) -> Rollouts:
      del round_
      rewards = (rng.random((len(indices), g)) < p[indices, None]).astype(np.float32)
      return Rollouts.rewards_only(indices, rewards)

    collected = collect_batch(strategy, rollout_fn, step, batch, seed=config.seed,
                              pass_rates=lambda idx, p=p: p[np.asarray(idx)])
    rollouts += int(collected.metrics["selection/rollouts"])
    drawn_signal.extend(signal_share(p[collected.indices], g))
    drawn_var.extend(p[collected.indices] * (1 - p[collected.indices]))
    if step % source.round_steps == 0:  # what the oracle and a uniform draw would take this round
      budget = min(source.round_steps * batch, n)
      oracle = targeted_order(p, config.selection.dots.alpha, 1e-3, budget, rng)[:budget]
      oracle_signal.extend(signal_share(p[oracle], g))
      oracle_var.extend(p[oracle] * (1 - p[oracle]))
      uniform_signal.extend(signal_share(p[rng.choice(n, budget, replace=False)], g))
  return Replay(rows, float(np.mean(drawn_signal)), float(np.mean(oracle_signal)),
                float(np.mean(uniform_signal)), float(np.mean(drawn_var)),
                float(np.mean(oracle_var)), rollouts)


def report(result: Replay) -> str:
  lines = ["step | Pearson r (all) | Pearson r (undrawn) | undrawn share"]
  lines += [f"{r.step} | {r.pearson:.3f} | {r.pearson_undrawn:.3f} | {r.undrawn_share:.2f}"
            for r in result.rows]
  worst = np.nanmin([r.pearson_undrawn for r in result.rows[1:]] or [np.nan])
  lines.append(f"signal share of the drawn groups {result.signal_share:.3f} (oracle "
               f"{result.oracle_signal_share:.3f}, uniform {result.uniform_signal_share:.3f}); "
               f"reward variance p(1-p) of the drawn {result.reward_variance:.4f} (oracle "
               f"{result.oracle_reward_variance:.4f}); "
               f"worst undrawn r after step 0 {worst:.3f}; {result.rollouts:,} rollouts")
  return "\n".join(lines)


def main(argv: Any) -> None:
  del argv
  from absl import flags
  f = flags.FLAGS
  config = _CONFIG.value
  print(report(replay(f.workdir, config, seed=f.seed)))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "the selection's config "
                                            "(its method, selection.* and estimator)")
  flags.DEFINE_string("workdir", None, "a finished run with exact pool evaluation", required=True)
  flags.DEFINE_integer("seed", 0, "seed of the replayed Bernoulli samples")
  app.run(main)
