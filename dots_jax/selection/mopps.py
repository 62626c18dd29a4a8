"""MoPPS (arXiv 2507.04632): a Beta posterior over each question's pass rate, Thompson sampling,
questions whose sampled pass rate is nearest the target enter the batch.

Posterior update after a group with pass rate s of G rollouts (the reference recipe's form, with
forgetting lambda toward the prior so the estimate tracks a changing policy):
  a <- lambda * a + (1 - lambda) * a0 + s * G,   b <- lambda * b + (1 - lambda) * b0 + (1 - s) * G.
Each step draws `candidate_factor * batch_questions` candidates from the source, samples
theta ~ Beta(a, b) for each and keeps the `batch_questions` with the smallest (theta - target)^2.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dots_jax.selection.base import (CandidateSource, Proposal, StepContext, Strategy, group_stats,
                                     per_question_array)


class MoppsStrategy(Strategy):
  name = "mopps"

  def __init__(self, source: CandidateSource, num_questions: int, *, prior_a: float, prior_b: float,
               forget: float, alpha: float, candidate_factor: int):
    super().__init__(source)
    if not (prior_a > 0 and prior_b > 0 and 0.0 <= forget <= 1.0 and candidate_factor >= 1):
      raise ValueError("selection.mopps needs prior_a, prior_b > 0, forget in [0, 1], "
                       f"candidate_factor >= 1; got {prior_a}, {prior_b}, {forget}, {candidate_factor}")
    self.num_questions = int(num_questions)
    self.prior_a, self.prior_b, self.forget = float(prior_a), float(prior_b), float(forget)
    self.target, self.candidate_factor = float(alpha), int(candidate_factor)
    self.a = np.full(self.num_questions, self.prior_a, np.float64)
    self.b = np.full(self.num_questions, self.prior_b, np.float64)

  def posterior_mean(self, indices: np.ndarray) -> np.ndarray:
    return (self.a[indices] / (self.a[indices] + self.b[indices])).astype(np.float32)

  def _propose(self, ctx: StepContext) -> Proposal | None:
    if ctx.train_rounds > 0:
      return None
    cand = self.source.take(self.candidate_factor * ctx.batch_questions)
    theta = ctx.rng.beta(self.a[cand], self.b[cand])
    order = np.argsort((theta - self.target) ** 2, kind="stable")[:ctx.batch_questions]
    idx = cand[order]
    return Proposal(idx, self.posterior_mean(idx))

  def _observe(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> np.ndarray:
    s = group_stats(rewards_QxG).pass_rate_Q.astype(np.float64)
    g = rewards_QxG.shape[1]
    idx, lam = proposal.indices, self.forget
    self.a[idx] = lam * self.a[idx] + (1 - lam) * self.prior_a + s * g
    self.b[idx] = lam * self.b[idx] + (1 - lam) * self.prior_b + (1 - s) * g
    return np.ones(len(idx), bool)

  def _own_state(self) -> dict[str, np.ndarray]:
    return {"a": self.a.copy(), "b": self.b.copy()}

  def _load_own_state(self, state: dict[str, Any]) -> None:
    for name in ("a", "b"):
      setattr(self, name, per_question_array(state, name, np.float64, self.num_questions, "MoPPS"))
