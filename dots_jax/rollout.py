"""Rollouts: question indices -> scored groups, the one path from the sampler to the batch.

`Generator` turns token-id prompts into completions under a policy (training rollouts, evaluation and
the DOTS estimator's label rollouts all use it). `Roller.run(params, step, indices, round)` rolls out
G completions for each question of the training set, scores them and returns `Rollouts`: the groups
in the fixed-length layout the replay buffer and the update read (`rl.batch.Groups`), with lengths,
truncation flags and reward statistics. Its randomness is keyed by (seed, step, rollout round).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx

from dots_jax.data.prompts import PromptTable, pad_prompts
from dots_jax.model.hf_io import pad_token_id, stop_token_ids
from dots_jax.model.qwen2 import Qwen2Config
from dots_jax.model.sharding import data_parallel_size, pad_to_multiple
from dots_jax.rewards import RewardStats, score_batch
from dots_jax.rl.batch import Groups, groups_from_samples
from dots_jax.sampling.engine import Engine, slots_for_budget
from dots_jax.sampling.sampler import FINISH_LENGTH, Sampler, SampleOutput

# prompts (token lists), samples per prompt, key -> per prompt, that many completion texts
GenerateFn = Callable[[list[list[int]], int, Any], list[list[str]]]


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How completions are drawn: `config.sampling` for training rollouts, `config.eval` for
  evaluation. Temperature <= 0 is greedy decoding."""

  temperature: float
  top_p: float
  top_k: int
  max_new_tokens: int

  @property
  def greedy(self) -> bool:
    return self.temperature <= 0

  @classmethod
  def training(cls, config: Any) -> "Decoding":
    s = config.sampling
    return cls(s.temperature, s.top_p, s.top_k, s.max_new_tokens)

  @classmethod
  def evaluation(cls, config: Any) -> "Decoding":
    e = config.eval
    return cls(e.temperature, e.top_p, 0, e.max_new_tokens)


@dataclasses.dataclass(frozen=True)
class EngineSettings:
  """config.sampling's slot-engine settings: a slot count, or a per-device KV budget (GiB) the
  count is derived from (slots 0 and budget 0: the static batch)."""

  slots: int = 0
  kv_budget_gib: float = 0.0
  steps_per_call: int = 8
  windows: int = 4
  prefill_prompts: int = 0

  @classmethod
  def from_config(cls, config: Any) -> "EngineSettings":
    s = config.sampling
    return cls(slots=s.slots, kv_budget_gib=s.kv_budget_gib, steps_per_call=s.engine_steps,
               windows=s.engine_windows, prefill_prompts=s.prefill_prompts)

  def slots_for(self, cfg: Qwen2Config, max_prompt_len: int, max_new_tokens: int,
                shards: int = 1) -> int:
    """Slots in all (`shards` data-parallel shards hold slots / shards each); 0 = static batch.
    The budget is per device."""
    if self.slots < 0 or self.kv_budget_gib < 0:
      raise ValueError(f"config.sampling.slots={self.slots} and kv_budget_gib="
                       f"{self.kv_budget_gib} must be >= 0")
    if self.slots or self.kv_budget_gib <= 0:
      return self.slots
    return shards * slots_for_budget(cfg, self.kv_budget_gib, max_prompt_len, max_new_tokens)


class Generator:
  """Completions of left-padded token-id prompts under one policy architecture (params per call).

  Stop tokens are the checkpoint's and the tokenizer's EOS ids; prompts are padded to the smallest
  of `prompt_buckets` that fits, and their count to a multiple of `row_multiple` (default: the
  data-parallel shards) so that a batch splits over the mesh; the extra rows are dropped.

  `engine` (`EngineSettings.from_config`) streams completions through a fixed number of KV-cache
  slots (`dots_jax.sampling.engine`); without it (slots 0) a call is one static batch."""

  def __init__(self, graphdef: nnx.GraphDef, cfg: Qwen2Config, tokenizer: Any, *,
               prompt_buckets: Sequence[int], max_new_tokens: int, mesh: Any = None,
               engine: "EngineSettings | None" = None):
    self.tokenizer = tokenizer
    self.buckets = tuple(sorted(prompt_buckets))
    self.stop_ids = stop_token_ids(cfg, tokenizer)
    self.pad_id = pad_token_id(tokenizer, self.stop_ids)
    self.shards = data_parallel_size(mesh)
    slots = (engine.slots_for(cfg, self.buckets[-1], max_new_tokens, self.shards)
             if engine else 0)
    if slots:
      self.sampler = Engine(graphdef, cfg, slots=slots, max_prompt_len=self.buckets[-1],
                            max_new_tokens=max_new_tokens, eos_ids=self.stop_ids,
                            pad_id=self.pad_id, steps_per_call=engine.steps_per_call,
                            windows=engine.windows, mesh=mesh,
                            prefill_prompts=engine.prefill_prompts)
    else:
      self.sampler = Sampler(graphdef, cfg, max_prompt_len=self.buckets[-1],
                             max_new_tokens=max_new_tokens, eos_ids=self.stop_ids,
                             pad_id=self.pad_id, mesh=mesh)

  def generate(self, params: Any, prompts: Sequence[Sequence[int]], num_samples: int, key: Any,
               decoding: Decoding, *, row_multiple: int | None = None) -> SampleOutput:
    """`num_samples` completions of each prompt; rows question-major (row b*G+g), extra rows cut."""
    n = len(prompts)
    tokens_BxP, mask_BxP = pad_prompts(pad_to_multiple(list(prompts), row_multiple or self.shards),
                                       self.buckets, self.pad_id)
    sample = self.sampler.generate(
        params, tokens_BxP, mask_BxP, key, num_samples=num_samples,
        temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k,
        greedy=decoding.greedy, max_new_tokens=decoding.max_new_tokens)
    return _first_rows(sample, n * num_samples)

  def texts(self, sample: SampleOutput) -> list[str]:
    """Completion texts without special tokens (the reward reads these)."""
    rows = [t[:n].tolist() for t, n in zip(sample.tokens_NxR, sample.lengths_N)]
    return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

  def text_fn(self, params: Any, decoding: Decoding) -> GenerateFn:
    """A GenerateFn at `params` (the evaluator's interface: it never sees the sampler)."""
    def generate(prompts: list[list[int]], k: int, key: Any) -> list[list[str]]:
      texts = self.texts(self.generate(params, prompts, k, key, decoding))
      return [texts[b * k:(b + 1) * k] for b in range(len(prompts))]
    return generate


def _first_rows(sample: SampleOutput, n: int) -> SampleOutput:
  fields = {f.name: getattr(sample, f.name) for f in dataclasses.fields(sample)}
  return SampleOutput(**{k: (v[:n] if isinstance(v, np.ndarray) else v) for k, v in fields.items()})


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

  def __init__(self, config: Any, generator: Generator, prompts: PromptTable):
    self.generator = generator
    self.prompts = prompts
    self.group_size = config.sampling.group_size
    self.decoding = Decoding.training(config)
    self.reward = config.reward
    self.total_len = max(config.data.prompt_buckets) + config.sampling.max_new_tokens
    self.quantum = math.lcm(generator.shards, max(1, config.rl.batch_questions // 4))
    self.key = jax.random.fold_in(jax.random.key(config.seed), 0)

  def run(self, params: Any, step: int, indices: np.ndarray, round: int) -> Rollouts:
    indices = np.asarray(indices, np.int64)
    g = self.group_size
    key = jax.random.fold_in(jax.random.fold_in(self.key, step), round)
    sample = self.generator.generate(params, [self.prompts.tokens[int(i)] for i in indices], g, key,
                                     self.decoding, row_multiple=self.quantum)
    golds = [self.prompts.question(i).answer for i in indices for _ in range(g)]
    scores_N, stats = score_batch(self.generator.texts(sample), golds, kind=self.reward.kind,
                                  timeout_s=self.reward.timeout_s, workers=self.reward.workers,
                                  format_score=self.reward.format_score)
    q = len(indices)
    groups = groups_from_samples(sample, scores_N, indices, g, self.total_len, self.generator.pad_id)
    return Rollouts(groups, sample.lengths_N.reshape(q, g),
                    (sample.finish_reason_N == FINISH_LENGTH).reshape(q, g), stats)
