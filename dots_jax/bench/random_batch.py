"""Deterministic random RL batches (no sampler needed): tests, the update benchmark, smoke runs."""

from __future__ import annotations

import numpy as np

from dots_jax.rl.batch import RLBatch


def random_batch(seed: int, *, rows: int, prompt_len: int, completion_len: int, vocab_size: int,
                 group_size: int = 4, replay_fraction: float = 0.0, pad_id: int = 0) -> RLBatch:
  """Left-padded prompts of random length, completions of random length, GRPO-style advantages.

  Replayed rows (the last `replay_fraction` of the groups) get behaviour log-probs that differ from any
  policy's, so their r_old != 1; fresh rows carry a placeholder mu (the update replaces it by pi_old).
  """
  if rows % group_size:
    raise ValueError(f"rows={rows} is not a multiple of group_size={group_size}")
  rng = np.random.default_rng(seed)
  t = prompt_len + completion_len
  tokens = rng.integers(1, vocab_size, (rows, t)).astype(np.int32)
  mask = np.zeros((rows, t), np.int32)
  loss_mask = np.zeros((rows, t), np.int32)
  for i in range(rows):
    p = rng.integers(1, prompt_len + 1)
    c = rng.integers(1, completion_len + 1)
    mask[i, prompt_len - p:prompt_len + c] = 1
    loss_mask[i, prompt_len:prompt_len + c] = 1
  tokens = np.where(mask > 0, tokens, pad_id).astype(np.int32)
  q = rows // group_size
  rewards = (rng.random((q, group_size)) > 0.5).astype(np.float32)
  centred = rewards - rewards.mean(axis=1, keepdims=True)
  adv = (centred / (rewards.std(axis=1, keepdims=True) + 1e-6)).reshape(rows).astype(np.float32)
  n_replay_groups = int(round(replay_fraction * q))
  is_replay = np.repeat(np.arange(q) >= q - n_replay_groups, group_size)
  behav = np.where(loss_mask > 0, rng.normal(-np.log(vocab_size), 0.3, (rows, t)), 0.0)
  return RLBatch(tokens, mask, loss_mask, behav.astype(np.float32), adv, is_replay)
