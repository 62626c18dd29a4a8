"""GRESO (arXiv 2506.02177): skip questions whose recent groups had zero reward variance, before
rolling them out.

Per question we keep the current streak z of consecutive all-correct groups (easy) or all-wrong groups
(hard). A candidate with z > 0 is skipped with probability 1 - max(p^z, min_keep), p = p_easy or
p_hard; a candidate never rolled out (z = 0) is never skipped. After every training step p_easy and
p_hard move by `p_step` toward the zero-variance targets alpha/3 (easy) and 2*alpha/3 (hard): when the
step's share of all-correct (all-wrong) groups is at or above its target, p drops (skip more), else it
rises; both stay in [p_min, p_max]. As in the reference trainer (which adapts from the second epoch
on), p stays put on steps where no candidate had a reward history, since nothing could be skipped.
Rollout rounds (post-rollout filtering of zero-variance groups) are sized by `RolloutRounds`, the
reference trainer's adaptive sampling batch; a round's questions are the first candidates that
survive the skip.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dots_jax.selection.base import (CandidateSource, Proposal, RolloutRounds, StepContext, Strategy,
                                     group_stats, per_question_array)


class GresoStrategy(Strategy):
  name = "greso"

  def __init__(self, source: CandidateSource, num_questions: int, *, alpha: float, p_init: float, p_step: float,
               p_min: float, p_max: float, min_keep: float, rounds: RolloutRounds):
    super().__init__(source)
    if not 0.0 < p_min <= p_init <= p_max <= 1.0:
      raise ValueError(f"selection.greso needs 0 < p_min <= p_init <= p_max <= 1, got "
                       f"{p_min}, {p_init}, {p_max}")
    self.num_questions = int(num_questions)
    self.target_easy = alpha / 3.0
    self.target_hard = 2.0 * alpha / 3.0  # more exploration of hard questions: they may turn solvable
    self.p_step, self.p_min, self.p_max = p_step, p_min, p_max
    self.min_keep, self.rounds = min_keep, rounds
    self.p_easy = self.p_hard = float(p_init)
    self.easy_streak = np.zeros(self.num_questions, np.int32)
    self.hard_streak = np.zeros(self.num_questions, np.int32)
    self.seen = np.zeros(self.num_questions, bool)
    self._history_this_step = False  # reset every step, so not checkpointed

  def skip_probability(self, indices: np.ndarray) -> np.ndarray:
    ze, zh = self.easy_streak[indices], self.hard_streak[indices]
    keep = np.where(ze > 0, self.p_easy ** ze, np.where(zh > 0, self.p_hard ** zh, 1.0))
    return np.where((ze > 0) | (zh > 0), 1.0 - np.maximum(keep, self.min_keep), 0.0)

  def _propose(self, ctx: StepContext) -> Proposal | None:
    want = self.rounds.next_size(ctx)
    if want is None:
      return None
    chosen, skipped, looked = [], 0, 0
    # Look at candidates in source order until `want` survive the coin flips; stop after one pass
    # over the data set's worth of candidates (only reachable if min_keep is tiny).
    while want > 0 and looked < self.num_questions:
      cand = self.source.take(want)
      looked += len(cand)
      self._history_this_step |= bool(self.seen[cand].any())
      survive = ctx.rng.random(len(cand)) >= self.skip_probability(cand)
      chosen.append(cand[survive])
      skipped += int((~survive).sum())
      want -= int(survive.sum())
    if want > 0:
      chosen.append(self.source.take(want))
    idx = np.concatenate(chosen)
    return Proposal(idx, self.source.predicted(idx), skipped=skipped)

  def _observe(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> np.ndarray:
    st = group_stats(rewards_QxG)
    idx = proposal.indices
    self.easy_streak[idx] = np.where(st.all_correct_Q, self.easy_streak[idx] + 1, 0)
    self.hard_streak[idx] = np.where(st.all_wrong_Q, self.hard_streak[idx] + 1, 0)
    self.seen[idx] = True
    return ~st.zero_var_Q

  def end_step(self, ctx: StepContext) -> dict[str, float]:
    metrics = super().end_step(ctx)
    if ctx.generated > 0 and self._history_this_step:
      self.adapt(ctx.all_correct / ctx.generated, ctx.all_wrong / ctx.generated)
    self._history_this_step = False
    metrics.update({"greso/p_easy": self.p_easy, "greso/p_hard": self.p_hard})
    return metrics

  def adapt(self, easy_ratio: float, hard_ratio: float) -> None:
    """One step of p_easy / p_hard toward the zero-variance targets, given the step's shares of
    all-correct and all-wrong groups among the groups rolled out."""
    self.p_easy = self._move(self.p_easy, easy_ratio >= self.target_easy)
    self.p_hard = self._move(self.p_hard, hard_ratio >= self.target_hard)

  def _move(self, p: float, above_target: bool) -> float:
    # Above target: too many zero-variance groups of that kind were rolled out, so skip more.
    if above_target:
      return max(p - self.p_step, self.p_min)
    return min(p + self.p_step, self.p_max)

  def _own_state(self) -> dict[str, np.ndarray]:
    return {"p_easy": np.asarray(self.p_easy), "p_hard": np.asarray(self.p_hard),
            "easy_streak": self.easy_streak.copy(), "hard_streak": self.hard_streak.copy(),
            "seen": self.seen.copy()}

  def _load_own_state(self, state: dict[str, Any]) -> None:
    self.p_easy, self.p_hard = float(state["p_easy"]), float(state["p_hard"])
    for name in ("easy_streak", "hard_streak"):
      setattr(self, name, per_question_array(state, name, np.int32, self.num_questions, "GRESO"))
    self.seen = per_question_array(state, "seen", bool, self.num_questions, "GRESO")
