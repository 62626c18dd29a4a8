"""Host-side rollout-replay buffer (GRPO-RR): a FIFO of whole question groups in fixed NumPy arrays.

Memory is allocated once: capacity x G x T for tokens/masks/log-probs, so it is bounded whatever happens.

Rules:
  * admission: only groups whose rewards have non-zero variance (others carry no GRPO signal);
  * dedupe: adding a question already in the buffer drops the old copy, the new one becomes the newest;
  * eviction: when full, the oldest group (by insertion order) is overwritten;
  * mixing (`plan` / `mix`): a batch of B groups takes n_replay = min(B - round(sigma * B), len(buffer))
    groups sampled uniformly *without replacement* from the buffer, and n_fresh = B - n_replay fresh
    groups. When the buffer holds fewer groups than wanted the shortfall is filled with more fresh groups
    (so early steps are all fresh). A replayed question may also appear among the fresh groups of the
    same batch; both copies are kept (they are different rollouts).
Call `mix` before `add`-ing the step's fresh groups, so a group is never replayed in the step that made it.
"""

from __future__ import annotations

import numpy as np

from dots_jax.rl.batch import Groups, group_stats

_ARRAYS = ("tokens_QxGxT", "mask_QxGxT", "loss_mask_QxGxT", "logp_QxGxT", "rewards_QxG", "qid_Q")


class ReplayBuffer:
  """FIFO ring buffer of question groups; see the module docstring for the rules."""

  def __init__(self, capacity: int, group_size: int, total_len: int):
    if capacity <= 0:
      raise ValueError(f"config.replay.capacity must be > 0, got {capacity}")
    self.capacity, self.group_size, self.total_len = capacity, group_size, total_len
    c, g, t = capacity, group_size, total_len
    self.tokens_QxGxT = np.zeros((c, g, t), np.int32)
    self.mask_QxGxT = np.zeros((c, g, t), np.int32)
    self.loss_mask_QxGxT = np.zeros((c, g, t), np.int32)
    self.logp_QxGxT = np.zeros((c, g, t), np.float32)
    self.rewards_QxG = np.zeros((c, g), np.float32)
    self.qid_Q = np.full((c,), -1, np.int64)
    self.step_Q = np.full((c,), -1, np.int64)  # training step that wrote the slot
    self.seq_Q = np.full((c,), -1, np.int64)  # insertion counter; -1 = empty slot
    self.next_seq = 0

  def __len__(self) -> int:
    return int(np.sum(self.seq_Q >= 0))

  def fifo_qids(self) -> np.ndarray:
    """Question ids held, oldest first."""
    live = np.flatnonzero(self.seq_Q >= 0)
    return self.qid_Q[live[np.argsort(self.seq_Q[live])]]

  def add(self, groups: Groups, step: int) -> int:
    """Admits the non-zero-variance groups (in order); returns how many were admitted."""
    g, t = groups.tokens_QxGxT.shape[1:]
    if (g, t) != (self.group_size, self.total_len):
      raise ValueError(f"replay buffer holds groups of shape (G={self.group_size}, "
                       f"T={self.total_len}); got (G={g}, T={t})")
    keep = np.flatnonzero(~group_stats(groups.rewards_QxG)["zero_var"])
    for i in keep:
      qid = int(groups.qid_Q[i])
      self.seq_Q[(self.qid_Q == qid) & (self.seq_Q >= 0)] = -1
      self.qid_Q[self.seq_Q < 0] = -1
      empty = np.flatnonzero(self.seq_Q < 0)
      slot = int(empty[0]) if empty.size else int(np.argmin(self.seq_Q))
      for name in _ARRAYS:
        getattr(self, name)[slot] = getattr(groups, name)[i]
      self.step_Q[slot] = step
      self.seq_Q[slot] = self.next_seq
      self.next_seq += 1
    return int(keep.size)

  def plan(self, batch_groups: int, fresh_fraction: float) -> tuple[int, int]:
    """(n_fresh, n_replay) for a batch of `batch_groups` groups given the buffer's current size."""
    if not 0.0 <= fresh_fraction <= 1.0:
      raise ValueError(f"config.replay.fresh_fraction must be in [0, 1], got {fresh_fraction}")
    want_replay = batch_groups - int(round(fresh_fraction * batch_groups))
    n_replay = min(want_replay, len(self))
    return batch_groups - n_replay, n_replay

  def sample(self, n: int, rng: np.random.Generator) -> Groups:
    """n groups uniformly without replacement (n <= len(self))."""
    live = np.flatnonzero(self.seq_Q >= 0)
    if n > live.size:
      raise ValueError(f"asked for {n} replayed groups, buffer holds {live.size}")
    slots = np.sort(rng.choice(live, size=n, replace=False))
    return Groups(**{name: getattr(self, name)[slots].copy() for name in _ARRAYS})

  def mix(self, fresh: Groups, batch_groups: int, fresh_fraction: float,
          rng: np.random.Generator) -> tuple[Groups, np.ndarray]:
    """Batch of `batch_groups`: the first n_fresh fresh groups then n_replay replayed ones (`plan`).

    Returns (groups, is_replay_Q). `fresh` must hold at least n_fresh groups.
    """
    n_fresh, n_replay = self.plan(batch_groups, fresh_fraction)
    if fresh.num_groups < n_fresh:
      raise ValueError(f"mix needs {n_fresh} fresh groups (buffer holds {len(self)}), "
                       f"got {fresh.num_groups}")
    parts = [fresh.take(np.arange(n_fresh))]
    if n_replay:
      parts.append(self.sample(n_replay, rng))
    is_replay = np.concatenate([np.zeros(n_fresh, bool), np.ones(n_replay, bool)])
    return Groups.concat(parts), is_replay

  def state_dict(self) -> dict[str, np.ndarray]:
    out = {name: getattr(self, name).copy() for name in _ARRAYS + ("step_Q", "seq_Q")}
    out["next_seq"] = np.asarray(self.next_seq, np.int64)
    return out

  def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
    expected = (self.capacity, self.group_size, self.total_len)
    got = tuple(np.shape(state["tokens_QxGxT"]))
    if got != expected:
      raise ValueError(f"replay checkpoint has shape {got}, config wants (capacity, G, T)={expected}")
    for name in _ARRAYS + ("step_Q", "seq_Q"):
      cur = getattr(self, name)
      setattr(self, name, np.asarray(state[name], cur.dtype).copy())
    self.next_seq = int(state["next_seq"])


def mix_replay(buffer: ReplayBuffer | None, fresh: Groups, batch_groups: int, fresh_fraction: float,
               seed: int, step: int) -> tuple[Groups, np.ndarray]:
  """The step's training groups and which of them are replayed: buffered groups mixed in (`mix`),
  then the fresh ones added, so a group is never replayed in the step that made it. Without a buffer
  every group is fresh."""
  if buffer is None:
    return fresh, np.zeros(fresh.num_groups, bool)
  groups, is_replay = buffer.mix(fresh, batch_groups, fresh_fraction,
                                 np.random.default_rng([seed, step, 0xBEEF]))
  buffer.add(fresh, step)
  return groups, is_replay
