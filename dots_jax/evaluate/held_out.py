"""Held-out evaluation inside training (`PolicyEval`): when it is due, the scalar metrics it logs,
and each evaluation's per-question exact pass rates."""

from typing import Any

import jax
import numpy as np

from dots_jax import fs
from dots_jax.evaluate.benchmarks import Evaluator, exact_fn
from dots_jax.evaluate.scores import flat_metrics
from dots_jax.rollout.generator import Decoding, Generator


class PolicyEval:
  """Held-out evaluation inside training: `due(step)` and `run(params, step)` -> flat metrics
  (`eval/accuracy` is the first set's avg@k, the run's headline figure). Its randomness is keyed by
  (seed, step), so a resumed run evaluates as the uninterrupted one. With exact evaluation and a
  `pass_rates_dir`, each evaluation's per-question pass rates go to <pass_rates_dir>/<step>.npz (one
  array per set): which questions moved, not only the mean."""

  def __init__(self, config: Any, evaluator: Evaluator, generator: Generator, graphdef: Any,
               mesh: Any = None, pass_rates_dir: str = ""):
    self.config, self.evaluator, self.generator = config, evaluator, generator
    self.graphdef, self.mesh = graphdef, mesh
    self.pass_rates_dir = pass_rates_dir
    self.key = jax.random.fold_in(jax.random.key(config.seed), 1)

  def due(self, step: int) -> bool:
    every = self.config.eval.every
    return every > 0 and (step % every == 0 or step == self.config.total_steps)

  def run(self, params: Any, step: int) -> dict[str, float]:
    c = self.config
    exact = exact_fn(c, self.graphdef, params, self.mesh) if c.eval.exact else None
    report = self.evaluator.run(self.generator.text_fn(params, Decoding.evaluation(c)),
                                jax.random.fold_in(self.key, step), step, exact=exact)
    flat = flat_metrics(report)
    first = next(iter(report["sets"].values()))
    flat["eval/accuracy"] = float(first[f"avg@{first['k']}"])
    flat["eval/stderr"] = float(first["stderr"])
    flat["eval/seconds"] = float(report["seconds"])
    if self.pass_rates_dir and c.eval.exact and jax.process_index() == 0:
      fs.save_npz(fs.join(self.pass_rates_dir, f"{step}.npz"),
                  **{k: v.astype(np.float32) for k, v in self.evaluator.pass_rates.items()})
    return flat
