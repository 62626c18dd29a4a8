"""Host-side batch layout of one RL step, built from sampler output or replayed groups.

A *group* is the G completions of one question. Every row is the left-padded prompt followed by its
completion, left-padded again to a fixed total length T = max_prompt_len + max_new_tokens so that fresh and
replayed groups share shapes (and the jitted update compiles once):

  tokens   [pad ... pad | prompt | completion | pad ...]
  mask     1 on prompt and completion tokens (real tokens; positions come from it)
  loss_mask 1 on completion tokens only (incl. the EOS token)
  logp     behaviour log-prob mu of each completion token (0 elsewhere), aligned with `tokens`
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dots_jax.rl.losses import AdvNorm, group_advantages

# Rewards are 1.0 for a correct completion and below it otherwise (0, or a format score).
_SOLVED = 1.0 - 1e-6


@dataclasses.dataclass(frozen=True)
class GroupStats:
  """Per-group outcome of Q groups of G rewards."""

  pass_rate_Q: np.ndarray  # share of correct completions
  zero_var_Q: np.ndarray  # bool: every reward equal (no GRPO signal)
  all_correct_Q: np.ndarray  # bool
  # No correct completion (a format score below 1 is still wrong): GRESO's "hard" and the official
  # trainers' solve_none.
  all_wrong_Q: np.ndarray  # bool


def signal_share(p_N: np.ndarray, group_size: int) -> np.ndarray:
  """Probability that a group of `group_size` samples of a question with pass rate p has reward
  variance: 1 - p^G - (1 - p)^G."""
  p = np.asarray(p_N, np.float64)
  return 1.0 - p ** group_size - (1.0 - p) ** group_size


def group_stats(rewards_QxG: np.ndarray) -> GroupStats:
  """Pass rate, zero-variance, all-correct and all-wrong flags of each group."""
  r = np.asarray(rewards_QxG, np.float32)
  if r.ndim != 2:
    raise ValueError(f"rewards must be [Q, G], got shape {r.shape}")
  return GroupStats(
      pass_rate_Q=(r >= _SOLVED).mean(axis=1) if r.shape[1] else np.zeros((r.shape[0],)),
      zero_var_Q=np.ptp(r, axis=1) == 0 if r.shape[0] else np.zeros((0,), bool),
      all_correct_Q=r.min(axis=1, initial=np.inf) >= _SOLVED,
      all_wrong_Q=r.max(axis=1, initial=-np.inf) < _SOLVED,
  )


@dataclasses.dataclass
class Groups:
  """Q question groups of G rows each, fixed length T (NumPy, host memory)."""

  tokens_QxGxT: np.ndarray  # int32
  mask_QxGxT: np.ndarray  # int32
  loss_mask_QxGxT: np.ndarray  # int32
  logp_QxGxT: np.ndarray  # float32, behaviour log-probs mu
  rewards_QxG: np.ndarray  # float32
  qid_Q: np.ndarray  # int64 question index (`Question.index`)

  def __post_init__(self):
    q, g, t = self.tokens_QxGxT.shape
    for name in ("mask_QxGxT", "loss_mask_QxGxT", "logp_QxGxT"):
      if getattr(self, name).shape != (q, g, t):
        raise ValueError(f"Groups.{name} has shape {getattr(self, name).shape}, expected {(q, g, t)}")
    if self.rewards_QxG.shape != (q, g):
      raise ValueError(f"Groups.rewards_QxG has shape {self.rewards_QxG.shape}, expected {(q, g)}")
    if self.qid_Q.shape != (q,):
      raise ValueError(f"Groups.qid_Q has shape {self.qid_Q.shape}, expected {(q,)}")

  @property
  def num_groups(self) -> int:
    return self.tokens_QxGxT.shape[0]

  def take(self, idx: np.ndarray) -> "Groups":
    idx = np.asarray(idx, np.int64)
    return Groups(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

  @staticmethod
  def concat(parts: list["Groups"]) -> "Groups":
    return Groups(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                     for f in dataclasses.fields(Groups)})

  def padded(self, num_groups: int) -> "Groups":
    """These groups followed by empty ones (all masks 0, question id -1) up to `num_groups`: a
    shorter batch in the planned shape, so the update compiles once; padding rows add no loss."""
    extra = num_groups - self.num_groups
    if extra < 0:
      raise ValueError(f"{self.num_groups} groups do not fit a batch of {num_groups}")
    if extra == 0:
      return self
    empty = {f.name: np.zeros((extra,) + getattr(self, f.name).shape[1:], getattr(self, f.name).dtype)
             for f in dataclasses.fields(self)}
    empty["qid_Q"] = np.full((extra,), -1, np.int64)
    return Groups.concat([self, Groups(**empty)])


@dataclasses.dataclass
class RLBatch:
  """What the jitted update consumes: N = Q*G rows (question-major)."""

  tokens_NxT: np.ndarray
  mask_NxT: np.ndarray
  loss_mask_NxT: np.ndarray
  behav_logp_NxT: np.ndarray
  adv_N: np.ndarray
  is_replay_N: np.ndarray  # bool


def groups_from_samples(sample: Any, rewards_N: np.ndarray, qid_Q: np.ndarray, group_size: int,
                        total_len: int, pad_id: int) -> Groups:
  """Packs the sampler's `SampleOutput` (rows b*G+g) and rewards into fixed-length groups.

  `total_len` must be >= prompt width + completion width; rows are left-padded with `pad_id` up to it.
  """
  p_tok, p_mask = np.asarray(sample.prompt_tokens_NxP), np.asarray(sample.prompt_mask_NxP)
  c_tok, c_mask = np.asarray(sample.tokens_NxR), np.asarray(sample.mask_NxR)
  c_logp = np.asarray(sample.logp_NxR, np.float32)
  n, p = p_tok.shape
  r = c_tok.shape[1]
  if n % group_size:
    raise ValueError(f"sampler returned {n} rows, not a multiple of group_size={group_size}")
  if total_len < p + r:
    raise ValueError(f"total_len={total_len} < prompt width {p} + completion width {r}")
  q = n // group_size
  rewards_N = np.asarray(rewards_N, np.float32)
  if rewards_N.shape != (n,):
    raise ValueError(f"rewards have shape {rewards_N.shape}, expected ({n},)")
  lead = total_len - p - r
  tokens = np.concatenate([np.full((n, lead), pad_id, np.int32), p_tok.astype(np.int32),
                           np.where(c_mask > 0, c_tok, pad_id).astype(np.int32)], axis=1)
  zeros = np.zeros((n, lead + p), np.int32)
  mask = np.concatenate([zeros[:, :lead], p_mask.astype(np.int32), c_mask.astype(np.int32)], axis=1)
  loss_mask = np.concatenate([zeros, c_mask.astype(np.int32)], axis=1)
  logp = np.concatenate([zeros.astype(np.float32), np.where(c_mask > 0, c_logp, 0.0)], axis=1)
  shape = (q, group_size, total_len)
  return Groups(tokens.reshape(shape), mask.reshape(shape), loss_mask.reshape(shape),
                logp.astype(np.float32).reshape(shape), rewards_N.reshape(q, group_size),
                np.asarray(qid_Q, np.int64).reshape(q))


def make_batch(groups: Groups, is_replay_Q: np.ndarray, adv_norm: AdvNorm,
               num_groups: int | None = None) -> RLBatch:
  """Flattens groups to rows and attaches advantages (recomputed from the stored group rewards).
  With `num_groups`, a shorter batch is padded to it with empty groups (`Groups.padded`), last."""
  is_replay_Q = np.asarray(is_replay_Q, bool)
  if num_groups is not None:
    is_replay_Q = np.concatenate([is_replay_Q, np.zeros(num_groups - groups.num_groups, bool)])
    groups = groups.padded(num_groups)
  q, g, t = groups.tokens_QxGxT.shape
  adv = group_advantages(groups.rewards_QxG, adv_norm)
  return RLBatch(
      tokens_NxT=groups.tokens_QxGxT.reshape(q * g, t),
      mask_NxT=groups.mask_QxGxT.reshape(q * g, t),
      loss_mask_NxT=groups.loss_mask_QxGxT.reshape(q * g, t),
      behav_logp_NxT=groups.logp_QxGxT.reshape(q * g, t),
      adv_N=adv.reshape(q * g),
      is_replay_N=np.repeat(is_replay_Q, g),
  )
