"""Exact pass rates of training-pool questions under the current policy (synthetic tasks with one
accepted completion): the predictions' true error, and the oracle's selection."""

from typing import Any, Callable

import numpy as np

from dots_jax.config_common import ConfigError
from dots_jax.data.prompts import PromptTable
from dots_jax.evaluate.benchmarks import exact_targets, reward_kind
from dots_jax.exact import exact_logprob_fn


class PoolPassRates:
  """Exact pass rates of training-pool questions (`PromptTable` indices) under given params, for a
  training set whose reward accepts one completion (the synthetic sets) and config.eval.exact. The
  loop hands `at(params)` to the driver: it measures a strategy's predictions on the trained batch
  against the truth, and the oracle source selects with it. Scoring runs in calls of
  rl.batch_questions rows (one compiled shape; the trained batch is one call)."""

  def __init__(self, config: Any, tokenizer: Any, prompts: PromptTable, graphdef: Any,
               mesh: Any = None):
    golds = [prompts.question(i).answer for i in range(len(prompts))]
    self.targets = exact_targets(config.data.train, golds, tokenizer)
    self.prompts = prompts.tokens
    self.graphdef, self.mesh = graphdef, mesh
    self.length = max(config.data.prompt_buckets) + config.sampling.max_new_tokens
    self.rows = int(config.rl.batch_questions)

  @classmethod
  def for_config(cls, config: Any, tokenizer: Any, prompts: PromptTable, graphdef: Any,
                 mesh: Any = None, *, required: bool = False) -> "PoolPassRates | None":
    """The scorer where the training task has exact pass rates, else None (`required`: raise a
    ConfigError naming the settings instead)."""
    if config.eval.exact and reward_kind(config.data.train) == "reversed_digits":
      return cls(config, tokenizer, prompts, graphdef, mesh)
    if required:
      raise ConfigError(f"config.method={config.method!r} selects with exact pass rates: it needs "
                        f"config.eval.exact=True and a synthetic training set (data.train="
                        f"{config.data.train!r}, eval.exact={config.eval.exact})")
    return None

  def at(self, params: Any) -> Callable[[np.ndarray], np.ndarray]:
    """indices -> float64 pass rates under `params`."""
    exact = exact_logprob_fn(self.graphdef, params, length=self.length, batch=self.rows,
                             mesh=self.mesh)

    def rates(indices: np.ndarray) -> np.ndarray:
      idx = [int(i) for i in np.asarray(indices).ravel()]
      logp = [np.asarray(exact([self.prompts[i] for i in idx[s:s + self.rows]],
                               [self.targets[i] for i in idx[s:s + self.rows]]), np.float64)
              for s in range(0, len(idx), self.rows)]
      return np.exp(np.concatenate(logp)) if logp else np.zeros((0,), np.float64)

    return rates
