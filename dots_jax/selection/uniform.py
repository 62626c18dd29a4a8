"""Plain GRPO (one round, every group trained on) and DAPO-style dynamic sampling (rounds of rollouts,
zero-variance groups dropped, until the batch is full or the round budget is spent)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dots_jax.selection.base import Proposal, StepContext, Strategy, group_stats


class UniformStrategy(Strategy):
  """Rolls out the next `batch_questions` candidates of its source once and trains on all of them.

  With an `EpochStream` this is plain GRPO; with a `DotsSource` it is DOTS (the source picks the
  questions)."""

  name = "uniform"

  def _propose(self, ctx: StepContext) -> Proposal | None:
    if ctx.train_rounds > 0:
      return None
    idx = self.source.take(ctx.batch_questions)
    return Proposal(idx, self.source.predicted(idx))

  def _observe(self, ctx: StepContext, proposal: Proposal, rewards_NxG: np.ndarray) -> np.ndarray:
    return np.ones(len(proposal.indices), bool)


class DynamicSamplingStrategy(Strategy):
  """DAPO dynamic sampling: each round rolls out `gen_questions` fresh candidates and keeps the groups
  whose rewards differ; stops once `batch_questions` groups are kept or after `max_rounds` rounds."""

  name = "ds"

  def __init__(self, source: Any, *, max_rounds: int, gen_questions: int = 0):
    super().__init__(source)
    if max_rounds < 1:
      raise ValueError(f"selection.ds.max_rounds must be >= 1, got {max_rounds}")
    self.max_rounds = int(max_rounds)
    self.gen_questions = int(gen_questions)

  def _propose(self, ctx: StepContext) -> Proposal | None:
    if ctx.kept >= ctx.batch_questions or ctx.train_rounds >= self.max_rounds:
      return None
    idx = self.source.take(self.gen_questions or ctx.batch_questions)
    return Proposal(idx, self.source.predicted(idx))

  def _observe(self, ctx: StepContext, proposal: Proposal, rewards_NxG: np.ndarray) -> np.ndarray:
    return ~group_stats(rewards_NxG)["zero_var"]
