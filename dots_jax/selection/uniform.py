"""Plain GRPO (one round, every group trained on) and dynamic sampling (rounds of rollouts sized by
`RolloutRounds`, zero-variance groups dropped, until the batch is full or the last round is done)."""

from __future__ import annotations

import numpy as np

from dots_jax.selection.base import (CandidateSource, Proposal, RolloutRounds, StepContext, Strategy,
                                     group_stats)


class UniformStrategy(Strategy):
  """Rolls out the next `batch_questions` candidates of its source once and trains on all of them.

  With an `EpochStream` this is plain GRPO; with a `DotsSource` it is DOTS (the source picks the
  questions)."""

  name = "uniform"

  def _propose(self, ctx: StepContext) -> Proposal | None:
    # What reference groups already filled (`Proposal.trainable`) is not rolled out again.
    want = ctx.batch_questions - ctx.kept
    if ctx.train_rounds > 0 or want <= 0:
      return None
    idx = self.source.take(want)
    return Proposal(idx, self.source.predicted(idx))

  def _observe(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> np.ndarray:
    return np.ones(len(proposal.indices), bool)


class DynamicSamplingStrategy(Strategy):
  """Dynamic sampling (DAPO; the GRESO trainer's baseline): rounds of fresh candidates sized by
  `rounds`, keeping the groups whose rewards differ."""

  name = "ds"

  def __init__(self, source: CandidateSource, *, rounds: RolloutRounds):
    super().__init__(source)
    self.rounds = rounds

  def _propose(self, ctx: StepContext) -> Proposal | None:
    size = self.rounds.next_size(ctx)
    if size is None:
      return None
    idx = self.source.take(size)
    return Proposal(idx, self.source.predicted(idx))

  def _observe(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> np.ndarray:
    return ~group_stats(rewards_QxG).zero_var_Q
