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

import argparse
import json
import time

import numpy as np

from dots_jax.config_base import base_config
from dots_jax.difficulty.estimator import (EstimatorConfig, init_estimator, predict_all,
                                           predict_from_projections, project_queries)
from dots_jax.methods import METHODS
from dots_jax.rollout.roller import Rollouts
from dots_jax.selection.driver import collect_batch
from dots_jax.selection.factory import make_strategy


def _parse() -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--questions", type=int, default=100_000)
  ap.add_argument("--dim", type=int, default=1536, help="embedding width (Qwen2.5-1.5B: 1536)")
  ap.add_argument("--width", type=int, default=256, help="adapter width")
  ap.add_argument("--ref_size", type=int, default=256)
  ap.add_argument("--batch", type=int, default=256, help="questions per training batch")
  ap.add_argument("--group", type=int, default=8)
  ap.add_argument("--round_steps", type=int, default=1, help="1 = a DOTS round every step (worst case)")
  ap.add_argument("--chunk", type=int, default=8192)
  ap.add_argument("--steps", type=int, default=4, help="timed steps per method")
  ap.add_argument("--methods", default=",".join(sorted(METHODS)))
  return ap.parse_args()


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


def main() -> None:
  args = _parse()
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
    if METHODS[method].source == "dots":
      kw = dict(embeddings_NxD=emb, estimator=model)
    strategy = make_strategy(c, args.questions, **kw)
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
  main()
