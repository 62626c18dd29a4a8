"""Selection overhead per training step over a large question pool (default 100k), rollouts excluded.

  python -m dots_jax.bench.selection                                   # 100k questions, D=1536
  python -m dots_jax.bench.selection --questions 2000 --dim 64 --steps 2   # smoke test

For every method the driver runs `steps` steps with an instant fake rollout (Bernoulli rewards from
hidden pass rates); the time per step is collect_batch's wall time minus the rollout function's. DOTS
steps that start a round include the estimator forward over every question (cold: adapters applied to
all embeddings; warm: cached query projections, the frozen-adapter case) plus recalibration and
sampling. Also printed: the estimator's full forward alone. Compilation is excluded (one untimed
warm-up step). Divide by the training step time to get the fraction.
"""

from __future__ import annotations

import json
import time

from absl import app, flags
import numpy as np

from dots_jax.config_base import base_config
from dots_jax.run import settings
from dots_jax.difficulty.estimator import (EstimatorConfig, init_estimator, predict_all,
                                           predict_from_projections, project_queries)
from dots_jax.methods import METHODS
from dots_jax.rollout.roller import Rollouts
from dots_jax.selection.driver import collect_batch
from dots_jax.selection.factory import make_strategy


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This benchmark's flags (on `fv`; tests parse their own)."""
  flags.DEFINE_integer("questions", 100000, 'questions', flag_values=fv)
  flags.DEFINE_integer("dim", 1536, 'embedding width (Qwen2.5-1.5B: 1536)', flag_values=fv)
  flags.DEFINE_integer("width", 256, 'adapter width', flag_values=fv)
  flags.DEFINE_integer("ref_size", 256, 'ref size', flag_values=fv)
  flags.DEFINE_integer("batch", 256, 'questions per training batch', flag_values=fv)
  flags.DEFINE_integer("group", 8, 'group', flag_values=fv)
  flags.DEFINE_integer("round_steps", 1, '1 = a DOTS round every step (worst case)', flag_values=fv)
  flags.DEFINE_integer("chunk", 8192, 'chunk', flag_values=fv)
  flags.DEFINE_integer("steps", 4, 'timed steps per method', flag_values=fv)
  flags.DEFINE_string("methods", ','.join(sorted(METHODS)), 'methods', flag_values=fv)


class FakeRollout:
  """Instant rewards; records its own time so the benchmark can subtract it."""

  def __init__(self, pass_rates: np.ndarray, group: int, seed: int):
    self.p, self.group, self.seed, self.calls, self.seconds = pass_rates, group, seed, 0, 0.0

  def __call__(self, indices: np.ndarray, round: int) -> Rollouts:
    t0 = time.perf_counter()
    rng = np.random.default_rng([self.seed, self.calls])
    self.calls += 1
    r = (rng.random((len(indices), self.group)) < self.p[indices][:, None]).astype(np.float32)
    self.seconds += time.perf_counter() - t0
    return Rollouts.rewards_only(indices, r)


def _best_of(fn, repeats: int = 3) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def main(argv: list[str]) -> None:
  del argv
  args = flags.FLAGS
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(args.questions, args.dim)).astype(np.float32)
  pass_rates = rng.beta(0.5, 0.5, args.questions)
  model = init_estimator(EstimatorConfig(args.dim, width=args.width))
  refs = rng.choice(args.questions, args.ref_size, replace=False)
  labels = pass_rates[refs].astype(np.float32)

  predict_all(model, emb, emb[refs], labels, args.chunk)  # compile
  cold = _best_of(lambda: predict_all(model, emb, emb[refs], labels, args.chunk))
  pq = project_queries(model, emb, args.chunk)
  warm = _best_of(lambda: predict_from_projections(model, pq, emb[refs], labels, args.chunk))
  results = {"questions": args.questions, "dim": args.dim, "width": args.width,
             "ref_size": args.ref_size, "batch": args.batch, "group": args.group,
             "estimator_forward_cold_s": cold, "estimator_forward_warm_s": warm, "methods": {}}
  print(f"estimator forward over {args.questions:,} questions (D={args.dim}, width {args.width}, "
        f"K={args.ref_size}): cold {cold * 1e3:.1f} ms, cached projections {warm * 1e3:.1f} ms")

  for method in args.methods.split(","):
    c = base_config()
    c.method = method
    c.selection.dots.update(ref_size=args.ref_size, round_steps=args.round_steps, chunk=args.chunk)
    kw = {}
    if METHODS[method].needs_estimator:
      kw = dict(embeddings_NxD=emb, estimator=model)
    s = settings.read(c)
    strategy = make_strategy(method, s.selection, args.questions, seed=s.seed,
                             group_size=s.group_size, **kw)
    env = FakeRollout(pass_rates, args.group, seed=1)
    collect_batch(strategy, env, 0, args.batch)  # warm-up: compiles, fills the projection cache
    per_step, rounds = [], []
    for step in range(1, args.steps + 1):
      env.seconds = 0.0
      t0 = time.perf_counter()
      out = collect_batch(strategy, env, step, args.batch)
      per_step.append(time.perf_counter() - t0 - env.seconds)
      rounds.append(out.metrics["selection/rounds"])
    results["methods"][method] = {"step_overhead_s": float(np.mean(per_step)),
                                  "step_overhead_max_s": float(np.max(per_step)),
                                  "rounds_per_step": float(np.mean(rounds))}
    print(f"{method:>14}: {np.mean(per_step) * 1e3:8.2f} ms/step (max {np.max(per_step) * 1e3:.2f}), "
          f"{np.mean(rounds):.1f} rollout rounds/step")
  print(json.dumps(results))


if __name__ == "__main__":
  define_flags()
  app.run(main)
