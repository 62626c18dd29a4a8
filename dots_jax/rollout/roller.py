"""`Roller.run(params, step, indices, round)`: question indices -> scored groups, the one path from the
sampler to the batch. It rolls out G completions for each question of the training set (`Generator`),
scores them (`dots_jax.rewards`) and returns `Rollouts`: the groups in the fixed-length layout the
replay buffer and the update read (`rl.batch.Groups`), with lengths, truncation flags and reward
statistics. Its randomness is keyed by (seed, step, rollout round).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import numpy as np

from dots_jax.data.prompts import PromptTable
from dots_jax.rewards import RewardSettings, RewardStats, score_batch
from dots_jax.rl.batch import Groups, groups_from_samples
from dots_jax.rollout.generator import Decoding, Generator
from dots_jax.rollout.sampler import FINISH_LENGTH


@dataclasses.dataclass
class Rollouts:
  """G scored completions for each of Q questions, rows question-major.

  `groups` is what replay and the update read; the rest feeds selection metrics and logs. A `take`
  keeps the reward statistics of the whole call (they describe what was scored)."""

  groups: Groups
  lengths_QxG: np.ndarray  # int32 completion tokens (stop token included)
  truncated_QxG: np.ndarray  # bool: hit max_new_tokens without a stop token
  reward_stats: RewardStats

  @property
  def rewards_QxG(self) -> np.ndarray:
    return self.groups.rewards_QxG

  @property
  def num_groups(self) -> int:
    return self.groups.num_groups

  @staticmethod
  def rewards_only(indices: np.ndarray, rewards_QxG: np.ndarray) -> "Rollouts":
    """Rollouts that carry rewards and question ids only (rows of one empty token): selection
    simulations and benchmarks, which never train on what they roll out."""
    q, g = np.shape(rewards_QxG)
    empty_QxGx1 = np.zeros((q, g, 1), np.int32)
    groups = Groups(empty_QxGx1, empty_QxGx1, empty_QxGx1, empty_QxGx1.astype(np.float32),
                    np.asarray(rewards_QxG, np.float32), np.asarray(indices, np.int64))
    return Rollouts(groups, np.zeros((q, g), np.int32), np.zeros((q, g), bool), RewardStats())

  def take(self, rows: np.ndarray) -> "Rollouts":
    rows = np.asarray(rows, np.int64)
    return Rollouts(self.groups.take(rows), self.lengths_QxG[rows], self.truncated_QxG[rows],
                    self.reward_stats)

  @staticmethod
  def concat(parts: Sequence["Rollouts"]) -> "Rollouts":
    stats = RewardStats()
    for p in parts:
      stats = stats.merge(p.reward_stats)
    return Rollouts(Groups.concat([p.groups for p in parts]),
                    np.concatenate([p.lengths_QxG for p in parts]),
                    np.concatenate([p.truncated_QxG for p in parts]), stats)


class Roller:
  """Rolls out and scores training questions: `run(params, step, indices, round) -> Rollouts`.

  Rows are padded to a multiple of `quantum` questions: a multiple of the data-parallel shards that
  also keeps the number of distinct shapes (one compilation each) small when strategies roll out
  rounds of varying size (reference sets, GRESO, dynamic sampling)."""

  def __init__(self, generator: Generator, prompts: PromptTable, *, group_size: int,
               decoding: Decoding, reward: RewardSettings, batch_questions: int, seed: int):
    self.generator = generator
    self.prompts = prompts
    self.group_size = int(group_size)
    self.decoding = decoding
    self.reward = reward
    self.total_len = max(generator.buckets) + decoding.max_new_tokens
    self.quantum = math.lcm(generator.shards, max(1, batch_questions // 4))
    self.key = jax.random.fold_in(jax.random.key(seed), 0)

  def run(self, params: Any, step: int, indices: np.ndarray, round: int) -> Rollouts:
    indices = np.asarray(indices, np.int64)
    g = self.group_size
    key = jax.random.fold_in(jax.random.fold_in(self.key, step), round)
    sample = self.generator.generate(params, [self.prompts.tokens[int(i)] for i in indices], g, key,
                                     self.decoding, row_multiple=self.quantum)
    golds = [self.prompts.question(i).answer for i in indices for _ in range(g)]
    scores_N, stats = score_batch(self.generator.texts(sample), golds, self.reward)
    q = len(indices)
    groups = groups_from_samples(sample, scores_N, indices, g, self.total_len, self.generator.pad_id)
    return Rollouts(groups, sample.lengths_N.reshape(q, g),
                    (sample.finish_reason_N == FINISH_LENGTH).reshape(q, g), stats)
