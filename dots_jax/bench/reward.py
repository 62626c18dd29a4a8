"""Reward throughput: time to score N MATH-style responses (default 4,096) with the worker pool.

  python -m dots_jax.bench.reward [--n 4096] [--group 8] [--workers 2] [--timeout_s 5] [--seed 0]

Responses are built from math_train golds (shared data dir, $DOTS_JAX_DATA): `--group` responses per
question as in a GRPO step, each ~1.5k characters of reasoning ending in one of: the gold verbatim
(fast path), the gold in a form that needs math-verify ("x = gold"), a wrong answer
(another integer for integer golds, else "gold+1"), or no box. The pool is started before timing (a one-off cost, reported separately).
"""

from typing import Any
import json
import os
import time

from absl import app, flags
import numpy as np

from dots_jax.config_base import base_config
from dots_jax.data.sources import shared_data_dir
from dots_jax.rewards import score_batch
from dots_jax.rewards.verify_pool import get_pool

_FILLER = ("We expand the expression and collect like terms, then check the boundary cases. " * 20)


def make_responses(golds: list[str], n: int, group: int, seed: int) -> tuple[list[str], list[str]]:
  rng = np.random.default_rng(seed)
  questions = rng.choice(len(golds), size=-(-n // group), replace=False)
  responses, targets = [], []
  for q in questions:
    gold = golds[q]
    for kind in rng.choice(4, size=group, p=[0.3, 0.2, 0.4, 0.1]):
      wrong = str(int(gold) + int(rng.integers(1, 20))) if gold.isdigit() else gold + "+1"
      answer = (gold, "x = " + gold, wrong, None)[kind]
      tail = "I could not finish." if answer is None else f"The final answer is $\\boxed{{{answer}}}$."
      responses.append(_FILLER + tail)
      targets.append(gold)
  return responses[:n], targets[:n]


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This benchmark's flags (on `fv`; tests parse their own)."""
  flags.DEFINE_integer("n", 4096, 'n', flag_values=fv)
  flags.DEFINE_integer("group", 8, 'responses per question', flag_values=fv)
  flags.DEFINE_integer("workers", 2, 'workers', flag_values=fv)
  flags.DEFINE_float("timeout_s", 5.0, 'timeout s', flag_values=fv)
  flags.DEFINE_integer("seed", 0, 'seed', flag_values=fv)


def main(argv: list[str]) -> None:
  del argv
  run(flags.FLAGS)


def run(args: Any) -> None:
  """The benchmark with parsed flags `args` (attribute access)."""
  path = os.path.join(shared_data_dir(base_config().data), "math_train.jsonl")
  if not os.path.isfile(path):
    raise SystemExit(f"{path} not found: set DOTS_JAX_DATA to the shared benchmark directory")
  with open(path, encoding="utf-8") as f:
    golds = [json.loads(line)["answer"] for line in f if line.strip()]
  responses, targets = make_responses(golds, args.n, args.group, args.seed)

  t0 = time.perf_counter()
  score_batch(["\\boxed{\\sqrt{4}}"], ["2"], workers=args.workers, timeout_s=30)
  startup_s = time.perf_counter() - t0
  verify_pool = get_pool(args.workers)
  cpu0, parent_cpu0 = verify_pool.worker_cpu_seconds(), time.process_time()
  t0 = time.perf_counter()
  scores, stats = score_batch(responses, targets, workers=args.workers, timeout_s=args.timeout_s)
  seconds = time.perf_counter() - t0
  # CPU seconds are what a quiet machine would need; wall time depends on what else runs.
  worker_cpu = verify_pool.worker_cpu_seconds() - cpu0
  parent_cpu = time.process_time() - parent_cpu0
  print(json.dumps({
      "responses": len(responses), "group": args.group, "workers": args.workers,
      "seconds": round(seconds, 3), "responses_per_s": round(len(responses) / seconds, 1),
      "pool_startup_s": round(startup_s, 3), "worker_cpu_s": round(worker_cpu, 2),
      "parent_cpu_s": round(parent_cpu, 2),
      "projected_s_on_idle_cores": round(max(worker_cpu / args.workers, parent_cpu), 2),
      "load_avg_1min": os.getloadavg()[0], "mean_score": round(float(scores.mean()), 4),
      "verify_calls": stats.verify_calls, "reasons": dict(sorted(stats.counts.items())),
  }, indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(main)
