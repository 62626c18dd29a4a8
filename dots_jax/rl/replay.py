"""Host-side rollout-replay buffer (GRPO-RR): whole question groups in fixed NumPy arrays, with the
official DOTS trainer's rules (`select_buffer` in its ray_trainer.py; docs/REPRODUCTION.md).

With B = batch_groups, sigma = fresh_fraction and C = capacity, one RL step is:
  * plan (`plan(step)`): during the first `warmup_steps` steps (the official first round of mu steps)
    the batch is B fresh groups and nothing is replayed; afterwards int(sigma * B) fresh groups and
    up to B - int(sigma * B) replayed ones. When the buffer holds fewer, the batch is shorter (the
    official trainer concatenates what it has; the update pads the batch, `make_batch`).
  * sample (`mix`): the replayed groups are drawn uniformly without replacement from everything the
    buffer holds; the step's fresh groups come first in the batch, replayed ones after them.
  * add (`add`, after the trainer has computed pi_old for the fresh rows, which become their stored
    behaviour log-probs mu): the buffer first keeps only its newest C - int(sigma * B) groups, then
    admits the step's fresh groups whose rewards vary (others carry no GRPO signal); a question
    already held loses its old copy (the official dedupe keeps the last occurrence).
So the buffer holds at most C - int(sigma * B) older groups plus one step's fresh ones (for the DOTS
script: 256 + up to 512), and arrays are allocated once for that many.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from dots_jax.model.sharding import to_host
from dots_jax.rl.batch import Groups, group_stats

_ARRAYS = ("tokens_QxGxT", "mask_QxGxT", "loss_mask_QxGxT", "logp_QxGxT", "rewards_QxG", "qid_Q")


@dataclasses.dataclass(frozen=True)
class ReplaySettings:
  """`config.replay`: the buffer's capacity in groups, the fresh share sigma of a step's batch, and
  the first steps trained on fresh groups only (the job resolves -1, the DOTS round)."""

  capacity: int
  fresh_fraction: float
  warmup_steps: int


class ReplayBuffer:
  """Replay buffer of question groups; see the module docstring for the rules."""

  def __init__(self, capacity: int, group_size: int, total_len: int, *, batch_groups: int,
               fresh_fraction: float, warmup_steps: int = 0):
    if not 0.0 <= fresh_fraction <= 1.0:
      raise ValueError(f"config.replay.fresh_fraction must be in [0, 1], got {fresh_fraction}")
    if batch_groups < 1:
      raise ValueError(f"config.rl.batch_questions must be >= 1, got {batch_groups}")
    self.batch_groups = int(batch_groups)
    self.num_fresh = int(fresh_fraction * batch_groups)
    self.retain = capacity - self.num_fresh
    if self.retain < 0:
      raise ValueError(f"config.replay.capacity={capacity} is below the fresh groups of a step "
                       f"(fresh_fraction x batch_questions = {self.num_fresh})")
    self.capacity, self.group_size, self.total_len = capacity, group_size, total_len
    self.warmup_steps = int(warmup_steps)
    s, g, t = self.retain + self.batch_groups, group_size, total_len
    self.tokens_QxGxT = np.zeros((s, g, t), np.int32)
    self.mask_QxGxT = np.zeros((s, g, t), np.int32)
    self.loss_mask_QxGxT = np.zeros((s, g, t), np.int32)
    self.logp_QxGxT = np.zeros((s, g, t), np.float32)
    self.rewards_QxG = np.zeros((s, g), np.float32)
    self.qid_Q = np.full((s,), -1, np.int64)
    self.step_Q = np.full((s,), -1, np.int64)  # training step that wrote the slot
    self.seq_Q = np.full((s,), -1, np.int64)  # insertion counter; -1 = empty slot
    self.next_seq = 0

  @classmethod
  def build(cls, settings: "ReplaySettings", group_size: int, total_len: int, batch_groups: int
            ) -> "ReplayBuffer":
    return cls(settings.capacity, group_size, total_len, batch_groups=batch_groups,
               fresh_fraction=settings.fresh_fraction, warmup_steps=settings.warmup_steps)

  def __len__(self) -> int:
    return int(np.sum(self.seq_Q >= 0))

  def fifo_qids(self) -> np.ndarray:
    """Question ids held, oldest first."""
    live = np.flatnonzero(self.seq_Q >= 0)
    return self.qid_Q[live[np.argsort(self.seq_Q[live])]]

  def plan(self, step: int) -> tuple[int, int]:
    """(fresh groups to roll out, groups to replay) for `step` given what the buffer holds now."""
    if step < self.warmup_steps:
      return self.batch_groups, 0
    return self.num_fresh, min(self.batch_groups - self.num_fresh, len(self))

  def _drop(self, slots: np.ndarray) -> None:
    self.seq_Q[slots] = -1
    self.qid_Q[slots] = -1

  def add(self, groups: Groups, step: int) -> int:
    """Keeps the newest `capacity - num_fresh` groups, then admits the non-zero-variance groups of
    `groups` (in order, newest last); returns how many were admitted."""
    g, t = groups.tokens_QxGxT.shape[1:]
    if (g, t) != (self.group_size, self.total_len):
      raise ValueError(f"replay buffer holds groups of shape (G={self.group_size}, "
                       f"T={self.total_len}); got (G={g}, T={t})")
    if groups.num_groups > self.batch_groups:
      raise ValueError(f"{groups.num_groups} fresh groups exceed batch_questions="
                       f"{self.batch_groups}")
    live = np.flatnonzero(self.seq_Q >= 0)
    oldest_first = live[np.argsort(self.seq_Q[live])]
    self._drop(oldest_first[:max(0, len(oldest_first) - self.retain)])
    keep = np.flatnonzero(~group_stats(groups.rewards_QxG).zero_var_Q)
    for i in keep:
      self._drop(np.flatnonzero((self.qid_Q == int(groups.qid_Q[i])) & (self.seq_Q >= 0)))
      slot = int(np.flatnonzero(self.seq_Q < 0)[0])
      for name in _ARRAYS:
        getattr(self, name)[slot] = getattr(groups, name)[i]
      self.step_Q[slot] = step
      self.seq_Q[slot] = self.next_seq
      self.next_seq += 1
    return int(keep.size)

  def sample(self, n: int, rng: np.random.Generator) -> Groups:
    """n groups uniformly without replacement (n <= len(self))."""
    live = np.flatnonzero(self.seq_Q >= 0)
    if n > live.size:
      raise ValueError(f"asked for {n} replayed groups, buffer holds {live.size}")
    slots = np.sort(rng.choice(live, size=n, replace=False))
    return Groups(**{name: getattr(self, name)[slots].copy() for name in _ARRAYS})

  def mix(self, fresh: Groups, step: int, rng: np.random.Generator) -> tuple[Groups, np.ndarray]:
    """The step's training groups: all of `fresh` (at most `plan(step)[0]`), then `plan(step)[1]`
    replayed ones. Returns (groups, is_replay_Q)."""
    n_fresh, n_replay = self.plan(step)
    if fresh.num_groups > n_fresh:
      raise ValueError(f"step {step} plans {n_fresh} fresh groups, got {fresh.num_groups}")
    parts = [fresh]
    if n_replay:
      parts.append(self.sample(n_replay, rng))
    is_replay = np.concatenate([np.zeros(fresh.num_groups, bool), np.ones(n_replay, bool)])
    return Groups.concat(parts), is_replay

  def state_dict(self) -> dict[str, np.ndarray]:
    out = {name: getattr(self, name).copy() for name in _ARRAYS + ("step_Q", "seq_Q")}
    out["next_seq"] = np.asarray(self.next_seq, np.int64)
    return out

  def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
    expected = self.tokens_QxGxT.shape
    got = tuple(np.shape(state["tokens_QxGxT"]))
    if got != expected:
      raise ValueError(f"replay checkpoint has shape {got}, config wants (capacity - fresh + "
                       f"batch_questions, G, T)={expected}")
    for name in _ARRAYS + ("step_Q", "seq_Q"):
      cur = getattr(self, name)
      setattr(self, name, np.asarray(state[name], cur.dtype).copy())
    self.next_seq = int(state["next_seq"])


def mix_replay(buffer: ReplayBuffer | None, fresh: Groups, seed: int, step: int
               ) -> tuple[Groups, np.ndarray]:
  """The step's training groups and which of them are replayed (`ReplayBuffer.mix`; the fresh
  groups join the buffer later, with their pi_old, via `admit`). Without a buffer all are fresh."""
  if buffer is None:
    return fresh, np.zeros(fresh.num_groups, bool)
  return buffer.mix(fresh, step, np.random.default_rng([seed, step, 0xBEEF]))


def admit(buffer: ReplayBuffer | None, fresh: Groups, old_logp_NxT: Any, step: int) -> int:
  """Adds the step's fresh groups with their behaviour log-probs mu := the trainer's pi_old
  (`old_logp_NxT`: a host or device array of the batch's rows, fresh groups first, as `mix` lays
  them out). Returns how many groups were admitted."""
  if buffer is None:
    return 0
  q, g, t = fresh.tokens_QxGxT.shape
  old = to_host(old_logp_NxT) if isinstance(old_logp_NxT, jax.Array) else old_logp_NxT
  mu = np.asarray(old[:q * g], np.float32).reshape(q, g, t)
  mu = np.where(fresh.loss_mask_QxGxT > 0, mu, 0.0).astype(np.float32)
  groups = Groups(fresh.tokens_QxGxT, fresh.mask_QxGxT, fresh.loss_mask_QxGxT, mu,
                  fresh.rewards_QxG, fresh.qid_Q)
  return buffer.add(groups, step)
