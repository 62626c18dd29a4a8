"""Shared pieces of every selection strategy: proposals, per-step context, group statistics, the
epoch stream of candidate questions and the strategy base class.

A strategy never sees completions: the driver (`driver.collect_batch`) asks it which question indices
to roll out (`propose`), hands it the N x G rewards (`observe`, which says which groups may enter the
training batch) and closes the step (`end_step`). Randomness comes only from the numpy Generator the
driver derives from (seed, step), so a strategy restored from `state_dict` replays the same choices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import numpy as np

from dots_jax.rl.batch import group_stats


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
  """The Generator a strategy uses at `step`: a pure function of (seed, step, stream)."""
  return np.random.default_rng([int(seed), int(step), int(stream), 0x5E1EC7])


@dataclasses.dataclass
class Proposal:
  """Question indices to roll out now. `train=False` marks reference rollouts, rolled out for their
  labels (DOTS's reference sets): none of them is trained on unless `trainable`, which lets those
  with reward variance enter the batch; `predicted` holds the strategy's predicted pass rates (NaN
  where it has none)."""

  indices: np.ndarray
  predicted: np.ndarray
  train: bool = True
  skipped: int = 0  # candidates looked at and declined before settling on `indices`
  trainable: bool = False  # reference rollouts (train=False) whose groups with reward variance train

  def __post_init__(self):
    self.indices = np.asarray(self.indices, np.int64)
    self.predicted = np.asarray(self.predicted, np.float32)
    if self.indices.shape != self.predicted.shape:
      raise ValueError(f"indices {self.indices.shape} and predicted {self.predicted.shape} differ")


def per_question_array(state: dict[str, Any], name: str, dtype: Any, num_questions: int,
                       owner: str) -> np.ndarray:
  """A checkpointed per-question array, checked against the data set size."""
  arr = np.array(state[name], dtype)
  if arr.shape != (num_questions,):
    raise ValueError(f"{owner} state {name} has shape {arr.shape}, data set has {num_questions} "
                     "questions")
  return arr


@dataclasses.dataclass
class StepContext:
  """What the driver knows about the step in progress; strategies read it and write only
  `final_round_planned` (through `RolloutRounds`)."""

  step: int
  rng: np.random.Generator
  batch_questions: int
  round: int = 0  # rollout rounds done so far in this step (label-only rounds included)
  train_rounds: int = 0  # of those, rounds whose groups may be trained on
  kept: int = 0  # groups accepted for training so far
  generated: int = 0  # groups rolled out for training so far
  zero_var: int = 0  # of those, zero-variance groups
  all_correct: int = 0
  all_wrong: int = 0
  last_zero_var_ratio: float = float("nan")  # over the latest training round
  skipped: int = 0  # questions strategies declined to roll out this step (GRESO)
  final_round_planned: bool = False  # `RolloutRounds` has sized the step's last round
  # Exact pass rates of question indices under the policy rolling out this step, where the task has
  # one accepted completion (`dots_jax.evaluate.PoolPassRates`); None elsewhere. The driver measures
  # the predictions' error with it; the oracle source selects with it.
  pass_rates: Callable[[np.ndarray], np.ndarray] | None = None


@dataclasses.dataclass
class RolloutRounds:
  """How many questions each post-rollout-filtering round rolls out (dynamic sampling and GRESO, as
  the GRESO trainer sizes them): the first round `first` x batch_questions; after a round that
  left the batch short, remaining / (1 - that round's zero-variance ratio) x `slack` questions,
  clamped to [`floor`, `first`] x batch_questions; when that estimate fits in a first-sized round,
  the round is the step's last and the step trains on what it has (a shorter batch rather than
  back-filled zero-variance groups). `max_rounds` bounds a step whose rounds all come back
  zero-variance (the reference loop would go on; its estimate then divides by zero)."""

  # No defaults: `config.selection.rounds` (config_base.py) holds them.
  first: float
  floor: float
  slack: float
  max_rounds: int

  def __post_init__(self):
    if not 0.0 < self.floor <= self.first:
      raise ValueError(f"selection.rounds needs 0 < floor <= first, got {self.floor}, {self.first}")
    if self.max_rounds < 1:
      raise ValueError(f"selection.rounds.max_rounds must be >= 1, got {self.max_rounds}")

  def next_size(self, ctx: "StepContext") -> int | None:
    """Questions for the next round of this step, or None when the step's rollouts are done."""
    default = max(1, int(round(self.first * ctx.batch_questions)))
    if ctx.train_rounds == 0:
      return default
    if (ctx.kept >= ctx.batch_questions or ctx.train_rounds >= self.max_rounds
        or ctx.final_round_planned):
      return None
    zv = ctx.last_zero_var_ratio
    if not zv < 1.0:  # a round of only zero-variance groups says nothing about the yield
      return default
    estimate = int((ctx.batch_questions - ctx.kept) / (1.0 - zv) * self.slack)
    floor = max(1, int(round(self.floor * ctx.batch_questions)))
    if estimate <= default:
      ctx.final_round_planned = True
    return int(np.clip(estimate, floor, default))


class CandidateSource(Protocol):
  """Where a strategy's candidates and predictions come from: `EpochStream` (the plain epoch order)
  or `dots_jax.selection.dots.TargetedSource` (DOTS's and the oracle's pass-rate-targeted order)."""

  num_questions: int  # the pool's size

  def take(self, n: int) -> np.ndarray:
    """The next `n` candidate question indices (consumed for the epoch)."""

  def prelude(self, ctx: StepContext) -> Proposal | None:
    """Label-only rollouts due before the step's training rollouts (DOTS's reference set), or None."""

  def observe_prelude(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> None:
    """Rewards of the prelude's rollouts."""

  def predicted(self, indices: np.ndarray) -> np.ndarray:
    """Predicted pass rates of `indices` (NaN where the source predicts nothing)."""

  def observe_train(self, indices: np.ndarray, rewards_QxG: np.ndarray) -> None:
    """Rewards of the training rollouts of `indices`."""

  def end_step(self, ctx: StepContext) -> dict[str, float]:
    """Closes the step; returns the source's metrics."""

  def state_dict(self) -> dict[str, np.ndarray]:
    ...

  def load_state_dict(self, state: dict[str, Any]) -> None:
    ...


class EpochStream:
  """Candidate questions in a seeded random order, reshuffled every epoch (the dataloader of the
  reference trainers). Consumed candidates are gone for the epoch, rolled out or skipped."""

  def __init__(self, num_questions: int, seed: int):
    if num_questions <= 0:
      raise ValueError(f"EpochStream needs at least one question, got {num_questions}")
    self.num_questions = int(num_questions)
    self.seed = int(seed)
    self.epoch = 0
    self.pos = 0
    self._cached: tuple[int, np.ndarray] | None = None  # (epoch, its order): GRESO takes many times

  def _order(self, epoch: int) -> np.ndarray:
    if self._cached is None or self._cached[0] != epoch:
      order = np.random.default_rng([self.seed, epoch, 0xE90C]).permutation(self.num_questions)
      self._cached = (epoch, order)
    return self._cached[1]

  def take(self, n: int) -> np.ndarray:
    out = []
    while n > 0:
      order = self._order(self.epoch)
      part = order[self.pos:self.pos + n]
      out.append(part)
      n -= len(part)
      self.pos += len(part)
      if self.pos >= self.num_questions:
        self.epoch, self.pos = self.epoch + 1, 0
    return np.concatenate(out) if out else np.zeros((0,), np.int64)

  # The plain stream has no label-only rollouts and predicts nothing.
  def prelude(self, ctx: StepContext) -> Proposal | None:
    del ctx
    return None

  def observe_prelude(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> None:
    raise RuntimeError("EpochStream proposed no label-only rollouts")

  def predicted(self, indices: np.ndarray) -> np.ndarray:
    return np.full(len(indices), np.nan, np.float32)

  def observe_train(self, indices: np.ndarray, rewards_QxG: np.ndarray) -> None:
    del indices, rewards_QxG

  def end_step(self, ctx: StepContext) -> dict[str, float]:
    del ctx
    return {}

  def state_dict(self) -> dict[str, np.ndarray]:
    return {"epoch": np.asarray(self.epoch), "pos": np.asarray(self.pos)}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class Strategy:
  """Base: routes label-only (prelude) rollouts to the candidate source; subclasses implement
  `_propose` / `_observe` for training rollouts over a `CandidateSource`."""

  name = "base"

  def __init__(self, source: CandidateSource):
    self.source = source
    # Whole-run counters (the driver adds to them); part of the checkpointed state.
    self.totals = {"rollouts": 0, "skipped_rollouts": 0, "steps": 0}

  def propose(self, ctx: StepContext) -> Proposal | None:
    """Indices to roll out next, or None when the step's batch is complete."""
    pre = self.source.prelude(ctx)
    if pre is not None:
      return pre
    return self._propose(ctx)

  def observe(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> np.ndarray:
    """Records rewards; returns which of the proposal's groups may enter the training batch."""
    rewards_QxG = np.asarray(rewards_QxG, np.float32)
    if rewards_QxG.shape[0] != len(proposal.indices):
      raise ValueError(f"rollout returned {rewards_QxG.shape[0]} groups for "
                       f"{len(proposal.indices)} proposed questions")
    if not proposal.train:
      self.source.observe_prelude(ctx, proposal, rewards_QxG)
      if proposal.trainable:
        return ~group_stats(rewards_QxG).zero_var_Q
      return np.zeros(len(proposal.indices), bool)
    self.source.observe_train(proposal.indices, rewards_QxG)
    return self._observe(ctx, proposal, rewards_QxG)

  def end_step(self, ctx: StepContext) -> dict[str, float]:
    """Closes the step (adaptations that look at the whole step); returns strategy metrics."""
    return self.source.end_step(ctx)

  def _propose(self, ctx: StepContext) -> Proposal | None:
    raise NotImplementedError

  def _observe(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def _own_state(self) -> dict[str, np.ndarray]:
    return {}

  def _load_own_state(self, state: dict[str, Any]) -> None:
    del state

  def state_dict(self) -> dict[str, np.ndarray]:
    """Flat {name: numpy array}: saveable with np.savez or as an orbax pytree."""
    out = {f"source/{k}": v for k, v in self.source.state_dict().items()}
    out.update({f"strategy/{k}": v for k, v in self._own_state().items()})
    out.update({f"totals/{k}": np.asarray(v) for k, v in self.totals.items()})
    out["name"] = np.asarray(self.name)
    return out

  def load_state_dict(self, state: dict[str, Any]) -> None:
    if str(state["name"]) != self.name:
      raise ValueError(f"selection state was saved by strategy {str(state['name'])!r}, "
                       f"cannot load into {self.name!r}")
    self.source.load_state_dict(
        {k[len("source/"):]: v for k, v in state.items() if k.startswith("source/")})
    self._load_own_state(
        {k[len("strategy/"):]: v for k, v in state.items() if k.startswith("strategy/")})
    self.totals = {k: int(state[f"totals/{k}"]) for k in self.totals}
