"""Selection from a tracking difficulty model (`difficulty.tracker`): DOTS's round structure with a
posterior that follows the policy, and GRESO's pre-rollout skip decided by the same posterior.

`TrackSource` (methods `dots_track`, `dots_track_rr`): every `round_steps` steps a round starts with
`ref_size` reference questions (uniformly drawn, as DOTS's, or `stratified`: the same number from
every embedding cluster, so no family goes unobserved), then `round_steps * batch_questions`
questions are drawn without replacement by what the posterior says about reward variance: `draw`
"variance" samples from softmax(E[p (1 - p)] / tau), the expected variance of one reward (sharp
around p = 1/2 like DOTS's rule; a question's uncertainty moves it: a stale, nearly solved one
gains, an unsure one near 1/2 loses); "signal" samples in proportion to signal^(1/tau), signal the
posterior chance that a group of G has reward variance (tau = 1: a batch composed as dynamic
sampling's, uniform over the questions with reward variance). With `floor` > 0 that share of the
round is drawn evenly from every embedding cluster, by the same rule within it: no family goes
untrained while the draw concentrates elsewhere. Every group the run rolls out (references and fresh
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


DRAWS = ("variance", "signal")


def draw_logits(post: Posterior, draw: str, tau: float) -> np.ndarray:
  """The round's draw logits from the posterior (module docstring)."""
  if draw == "variance":
    return post.reward_variance_N / tau
  return np.log(np.clip(post.signal_N, 1e-12, 1.0)) / tau


def floored_order(logits_N: np.ndarray, cluster_N: np.ndarray, budget: int, floor: float,
                  rng: np.random.Generator) -> np.ndarray:
  """`drawn_order` with round(floor * budget) of the budget spread evenly over the clusters (each
  cluster's share drawn from softmax(logits) within it), the rest from softmax(logits) over the
  questions left; the head shuffled, then the rest of the draw."""
  n = len(logits_N)
  keys = np.asarray(logits_N, np.float64) + rng.gumbel(size=n)  # Gumbel top-k = the softmax draw
  clusters = np.unique(cluster_N)
  per = np.full(len(clusters), int(round(floor * budget)) // len(clusters))
  taken = []
  for c, k in zip(clusters, per):
    members = np.flatnonzero((cluster_N == c) & np.isfinite(keys))
    taken.append(members[np.argsort(-keys[members], kind="stable")[:k]])
  floor_idx = np.concatenate(taken) if taken else np.zeros((0,), np.int64)
  rest = np.ones(n, bool)
  rest[floor_idx] = False
  order = np.flatnonzero(rest)[np.argsort(-keys[rest], kind="stable")]
  head = np.concatenate([floor_idx, order[:budget - len(floor_idx)]])
  return np.concatenate([head[rng.permutation(len(head))], order[budget - len(floor_idx):]])


class TrackSource(TargetedSource):
  """The round loop of DOTS over the tracker's posterior (module docstring)."""

  def __init__(self, tracker: DifficultyTracker, *, ref_size: int, ref_mode: str, train_refs: bool,
               round_steps: int, draw: str, tau: float, floor: float):
    if draw not in DRAWS:
      raise ValueError(f"selection.track.draw={draw!r}: expected one of {DRAWS}")
    if not 0.0 <= floor <= 1.0:
      raise ValueError(f"selection.track.floor={floor} must be in [0, 1]")
    if ref_mode not in REF_MODES:
      raise ValueError(f"selection.track.ref_mode={ref_mode!r}: expected one of {REF_MODES}")
    if not 0 <= ref_size <= tracker.num_questions:
      raise ValueError(f"selection.track.ref_size={ref_size} must be in [0, "
                       f"{tracker.num_questions}]")
    self.tracker = tracker
    self.ref_size, self.ref_mode, self.train_refs = int(ref_size), ref_mode, bool(train_refs)
    self.draw, self.floor = draw, float(floor)
    self.step = 0
    self.logits = np.full(tracker.num_questions, np.nan)  # the round's draw logits
    self.signal_mean = float("nan")
    self._drawn: np.ndarray | None = None  # trainable references of the round being started
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
    # Trainable references were this round's first draw: the rest of the round does not repeat them.
    self._predict_and_start(ctx, drawn=proposal.indices if self.train_refs else None)

  def _predict_and_start(self, ctx: StepContext, drawn: np.ndarray | None = None) -> None:
    post = self.tracker.posterior(ctx.step)
    self.pred = post.pass_rate_N
    self.logits = draw_logits(post, self.draw, self.tau)
    self.signal_mean = float(post.signal_N.mean())
    self._drawn = drawn
    self._start_round(ctx)

  def _sample_order(self, ctx: StepContext, batch_questions: int) -> np.ndarray:
    budget = min(self.round_steps * batch_questions, self.num_questions)
    logits = self.logits
    if self._drawn is not None and len(self._drawn):
      logits = logits.copy()
      logits[self._drawn] = -np.inf
      budget = min(budget, self.num_questions - len(np.unique(self._drawn)))
    if self.floor > 0:
      return floored_order(logits, self.tracker.cluster_N, budget, self.floor, ctx.rng)
    return drawn_order(logits, budget, ctx.rng)

  def observe_train(self, indices: np.ndarray, rewards_QxG: np.ndarray) -> None:
    super().observe_train(indices, rewards_QxG)
    self.tracker.observe(indices, rewards_QxG, self.step)

  def end_step(self, ctx: StepContext) -> dict[str, float]:
    out = super().end_step(ctx)
    out["track/labels"] = float(len(self.tracker.label_idx))
    out["track/signal_mean"] = self.signal_mean
    return out

  def state_dict(self) -> dict[str, np.ndarray]:
    out = super().state_dict()
    out["logits"] = np.array(self.logits)
    out["signal_mean"] = np.asarray(self.signal_mean)
    out.update({f"tracker/{k}": v for k, v in self.tracker.state_dict().items()})
    return out

  def load_state_dict(self, state: dict[str, Any]) -> None:
    super().load_state_dict(state)
    self.logits = np.asarray(state["logits"], np.float64).copy()
    self.signal_mean = float(state["signal_mean"])
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
