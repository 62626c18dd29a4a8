"""Held-out evaluation inside training (`PolicyEval`): when it is due, the scalar metrics it logs,
and each evaluation's per-question exact pass rates."""

from typing import Any

import jax
import numpy as np

from dots_jax import fs
from dots_jax.evaluate.benchmarks import EvalSettings, Evaluator
from dots_jax.evaluate.scores import flat_metrics
from dots_jax.exact import exact_logprob_fn
from dots_jax.rollout.generator import Generator


class PolicyEval:
  """Held-out evaluation inside training: `due(step)` and `run(params, step)` -> flat metrics
  (`eval/accuracy` is the first set's avg@k, the run's headline figure). Its randomness is keyed by
  (seed, step), so a resumed run evaluates as the uninterrupted one. With exact evaluation and a
  `pass_rates_dir`, each evaluation's per-question pass rates go to <pass_rates_dir>/<step>.npz (one
  array per set): which questions moved, not only the mean."""

  def __init__(self, settings: EvalSettings, evaluator: Evaluator, generator: Generator,
               graphdef: Any, *, total_steps: int, seed: int, mesh: Any = None,
               pass_rates_dir: str = ""):
    self.settings, self.evaluator, self.generator = settings, evaluator, generator
    self.graphdef, self.mesh = graphdef, mesh
    self.total_steps = int(total_steps)
    self.pass_rates_dir = pass_rates_dir
    self.key = jax.random.fold_in(jax.random.key(seed), 1)
    # The exact scorer's rows: the longest prompt bucket + the evaluation's completion length.
    self.exact_len = max(generator.buckets) + settings.max_new_tokens

  def due(self, step: int) -> bool:
    every = self.settings.every
    return every > 0 and (step % every == 0 or step == self.total_steps)

  def run(self, params: Any, step: int) -> dict[str, float]:
    s = self.settings
    exact = (exact_logprob_fn(self.graphdef, params, length=self.exact_len, batch=s.batch,
                              mesh=self.mesh) if s.exact else None)
    report = self.evaluator.run(self.generator.text_fn(params, s.decoding),
                                jax.random.fold_in(self.key, step), step, exact=exact)
    flat = flat_metrics(report)
    first = next(iter(report["sets"].values()))
    flat["eval/accuracy"] = float(first[f"avg@{first['k']}"])
    flat["eval/stderr"] = float(first["stderr"])
    flat["eval/seconds"] = float(report["seconds"])
    if self.pass_rates_dir and s.exact and jax.process_index() == 0:
      fs.save_npz(fs.join(self.pass_rates_dir, f"{step}.npz"),
                  **{k: v.astype(np.float32) for k, v in self.evaluator.pass_rates.items()})
    return flat
