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
  training set whose reward accepts one completion (the synthetic sets) and config.eval.exact
  (`available`). The loop hands `at(params)` to the driver: it measures a strategy's predictions on
  the trained batch against the truth, and the oracle source selects with it. Scoring runs in calls
  of `rows` (rl.batch_questions: one compiled shape, the trained batch is one call)."""

  def __init__(self, tokenizer: Any, prompts: PromptTable, graphdef: Any, *, train_set: str,
               length: int, rows: int, mesh: Any = None):
    golds = [prompts.question(i).answer for i in range(len(prompts))]
    self.targets = exact_targets(train_set, golds, tokenizer)
    self.prompts = prompts.tokens
    self.graphdef, self.mesh = graphdef, mesh
    self.length = int(length)  # the longest prompt bucket + the training completion length
    self.rows = int(rows)

  @staticmethod
  def available(train_set: str, exact_eval: bool) -> bool:
    """Whether the training set has exact pass rates here: one accepted completion (the synthetic
    sets) and exact evaluation on."""
    return exact_eval and reward_kind(train_set) == "reversed_digits"

  @staticmethod
  def require(method: str, train_set: str, exact_eval: bool) -> None:
    """A ConfigError naming the settings when `method` selects with exact pass rates it cannot have."""
    if not PoolPassRates.available(train_set, exact_eval):
      raise ConfigError(f"config.method={method!r} selects with exact pass rates: it needs "
                        f"config.eval.exact=True and a synthetic training set (data.train="
                        f"{train_set!r}, eval.exact={exact_eval})")

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
