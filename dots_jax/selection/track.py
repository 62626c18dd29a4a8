"""Selection from a tracking difficulty model (`difficulty.tracker`): DOTS's round structure with a
posterior that follows the policy, and GRESO's pre-rollout skip decided by the same posterior.

`TrackSource` (methods `dots_track`, `dots_track_rr`): every `round_steps` steps a round starts with
`ref_size` reference questions (uniformly drawn, as DOTS's, or `stratified`: the same number from
every embedding cluster, so no family goes unobserved), then `round_steps * batch_questions`
questions are drawn without replacement with probability proportional to signal^(1/tau), where
signal is the posterior's chance that a group of G has reward variance (tau = 1 draws a batch
composed as dynamic sampling's, uniform over the questions with reward variance; smaller tau
concentrates on the surest). Every group the run rolls out (references and fresh
training groups) updates the model, so a question trained on is tracked by its own groups and one
the draw neglects by its neighbours' fresh labels: when a family it stopped drawing regresses, its
signal rises and it is drawn again. With `train_refs`, reference groups that have reward variance
enter the step's batch (they cost rollouts either way) and the step rolls out only the rest.

`GresoTrackStrategy` (method `greso_track`): GRESO's candidate stream and rollout rounds, with the
skip decided by the posterior: a candidate is rolled out with probability max(signal, min_keep), so
a question seen once, or never, is judged by its neighbours' labels as well as by its own groups.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dots_jax.difficulty.tracker import DifficultyTracker, Posterior
from dots_jax.selection.base import CandidateSource, Proposal, RolloutRounds, StepContext
from dots_jax.selection.dots import TargetedSource, drawn_order
from dots_jax.selection.greso import GresoStrategy

REF_MODES = ("uniform", "stratified")


def stratified_refs(cluster_N: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """`size` questions spread evenly over the clusters (the remainder to randomly chosen clusters),
  uniformly at random within each."""
  clusters = np.unique(cluster_N)
  per = np.full(len(clusters), size // len(clusters))
  per[rng.choice(len(clusters), size % len(clusters), replace=False)] += 1
  out = []
  for c, k in zip(clusters, per):
    members = np.flatnonzero(cluster_N == c)
    out.append(rng.choice(members, min(k, len(members)), replace=False))
  refs = np.concatenate(out)
  if len(refs) < size:  # small clusters: the rest uniformly from the others
    rest = np.setdiff1d(np.arange(len(cluster_N)), refs)
    refs = np.concatenate([refs, rng.choice(rest, size - len(refs), replace=False)])
  return refs


def signal_logits(signal_N: np.ndarray, tau: float) -> np.ndarray:
  """Draw logits: a question is drawn with probability proportional to signal^(1/tau), its chance of
  reward variance sharpened (tau = 1: as dynamic sampling's batch, uniform over the questions whose
  groups have variance, without rolling out the others first)."""
  return np.log(np.clip(np.asarray(signal_N, np.float64), 1e-12, 1.0)) / tau


class TrackSource(TargetedSource):
  """The round loop of DOTS over the tracker's posterior (module docstring)."""

  def __init__(self, tracker: DifficultyTracker, *, ref_size: int, ref_mode: str, train_refs: bool,
               round_steps: int, tau: float):
    if ref_mode not in REF_MODES:
      raise ValueError(f"selection.track.ref_mode={ref_mode!r}: expected one of {REF_MODES}")
    if not 0 <= ref_size <= tracker.num_questions:
      raise ValueError(f"selection.track.ref_size={ref_size} must be in [0, "
                       f"{tracker.num_questions}]")
    self.tracker = tracker
    self.ref_size, self.ref_mode, self.train_refs = int(ref_size), ref_mode, bool(train_refs)
    self.step = 0
    self.signal = np.full(tracker.num_questions, np.nan)
    super().__init__(tracker.num_questions, round_steps=round_steps, alpha=0.5, tau=tau)

  def prelude(self, ctx: StepContext) -> Proposal | None:
    self.step = ctx.step
    if not self._round_due(ctx):
      return None
    if self.ref_size == 0:  # no references: the round starts from what the model already holds
      self._predict_and_start(ctx)
      return None
    if self.ref_mode == "stratified":
      refs = stratified_refs(self.tracker.cluster_N, self.ref_size, ctx.rng)
    else:
      refs = ctx.rng.choice(self.num_questions, self.ref_size, replace=False)
    return Proposal(refs, self.pred[refs], train=False, trainable=self.train_refs)

  def observe_prelude(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> None:
    self.tracker.observe(proposal.indices, rewards_QxG, ctx.step)
    self._predict_and_start(ctx)

  def _predict_and_start(self, ctx: StepContext) -> None:
    post = self.tracker.posterior(ctx.step)
    self.pred = post.pass_rate_N
    self.signal = post.signal_N
    self._start_round(ctx)

  def _sample_order(self, ctx: StepContext, batch_questions: int) -> np.ndarray:
    return drawn_order(signal_logits(self.signal, self.tau),
                       min(self.round_steps * batch_questions, self.num_questions), ctx.rng)

  def observe_train(self, indices: np.ndarray, rewards_QxG: np.ndarray) -> None:
    super().observe_train(indices, rewards_QxG)
    self.tracker.observe(indices, rewards_QxG, self.step)

  def end_step(self, ctx: StepContext) -> dict[str, float]:
    out = super().end_step(ctx)
    out["track/labels"] = float(len(self.tracker.label_idx))
    out["track/signal_mean"] = float(np.nanmean(self.signal))
    return out

  def state_dict(self) -> dict[str, np.ndarray]:
    out = super().state_dict()
    out["signal"] = np.array(self.signal)
    out.update({f"tracker/{k}": v for k, v in self.tracker.state_dict().items()})
    return out

  def load_state_dict(self, state: dict[str, Any]) -> None:
    super().load_state_dict(state)
    self.signal = np.asarray(state["signal"], np.float64).copy()
    self.tracker.load_state_dict({k[len("tracker/"):]: v for k, v in state.items()
                                  if k.startswith("tracker/")})


class GresoTrackStrategy(GresoStrategy):
  """GRESO whose skip is the tracker's posterior chance of no reward variance (module docstring)."""

  name = "greso_track"

  def __init__(self, source: CandidateSource, tracker: DifficultyTracker, *, min_keep: float,
               rounds: RolloutRounds, **greso: Any):
    super().__init__(source, tracker.num_questions, min_keep=min_keep, rounds=rounds, **greso)
    self.tracker = tracker
    self._posterior: tuple[int, Posterior] | None = None  # (step, posterior), not checkpointed
    self.step = 0

  def _signal(self, indices: np.ndarray) -> np.ndarray:
    if self._posterior is None or self._posterior[0] != self.step:
      self._posterior = (self.step, self.tracker.posterior(self.step))
    post = self._posterior[1]
    return post.signal_N[indices]

  def skip_probability(self, indices: np.ndarray) -> np.ndarray:
    return 1.0 - np.maximum(self._signal(indices), self.min_keep)

  def _propose(self, ctx: StepContext) -> Proposal | None:
    self.step = ctx.step
    return super()._propose(ctx)

  def _observe(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> np.ndarray:
    self.tracker.observe(proposal.indices, rewards_QxG, ctx.step)
    self._posterior = None  # the step's later rounds see its earlier groups
    return super()._observe(ctx, proposal, rewards_QxG)

  def _own_state(self) -> dict[str, np.ndarray]:
    out = super()._own_state()
    out.update({f"tracker/{k}": v for k, v in self.tracker.state_dict().items()})
    return out

  def _load_own_state(self, state: dict[str, Any]) -> None:
    super()._load_own_state(state)
    self.tracker.load_state_dict({k[len("tracker/"):]: v for k, v in state.items()
                                  if k.startswith("tracker/")})
