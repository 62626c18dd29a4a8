"""`Generator`: token-id prompts -> completions under a policy (training rollouts, evaluation and the
DOTS estimator's label rollouts all use it), through the slot engine (`engine.py`) or the static
batch (`sampler.py`), with `Decoding` settings (temperature, top-p/k, length) and `EngineSettings`."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
from flax import nnx

from dots_jax.data.prompts import pad_prompts
from dots_jax.model.hf_io import pad_token_id, stop_token_ids
from dots_jax.model.qwen2 import Qwen2Config
from dots_jax.model.sharding import data_parallel_size, kv_head_shards, pad_to_multiple
from dots_jax.rollout.engine import Engine, slots_for_budget
from dots_jax.rollout.sampler import Sampler, SampleOutput

# prompts (token lists), samples per prompt, key -> per prompt, that many completion texts
GenerateFn = Callable[[list[list[int]], int, Any], list[list[str]]]


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How completions are drawn (`config.sampling` for training rollouts, `config.eval` for
  evaluation). Temperature <= 0 is greedy decoding."""

  temperature: float
  top_p: float
  top_k: int
  max_new_tokens: int

  @property
  def greedy(self) -> bool:
    return self.temperature <= 0



@dataclasses.dataclass(frozen=True)
class EngineSettings:
  """config.sampling's slot-engine settings: a slot count, or a per-device KV budget (GiB) the
  count is derived from (slots 0 and budget 0: the static batch)."""

  slots: int = 0
  kv_budget_gib: float = 0.0
  steps_per_call: int = 8
  windows: int = 4
  prefill_prompts: int = 0

  def slots_for(self, cfg: Qwen2Config, max_prompt_len: int, max_new_tokens: int,
                shards: int = 1, kv_shards: int = 1) -> int:
    """Slots in all (`shards` data-parallel shards hold slots / shards each); 0 = static batch.
    The budget is per device, whose cache holds 1 / kv_shards of the KV heads."""
    if self.slots < 0 or self.kv_budget_gib < 0:
      raise ValueError(f"config.sampling.slots={self.slots} and kv_budget_gib="
                       f"{self.kv_budget_gib} must be >= 0")
    if self.slots or self.kv_budget_gib <= 0:
      return self.slots
    return shards * slots_for_budget(cfg, self.kv_budget_gib, max_prompt_len, max_new_tokens,
                                     kv_shards=kv_shards)


class Generator:
  """Completions of left-padded token-id prompts under one policy architecture (params per call).

  Stop tokens are the checkpoint's and the tokenizer's EOS ids; prompts are padded to the smallest
  of `prompt_buckets` that fits, and their count to a multiple of `row_multiple` (default: the
  data-parallel shards) so that a batch splits over the mesh; the extra rows are dropped.

  `engine` (`config.sampling`'s `EngineSettings`) streams completions through a fixed number of KV-cache
  slots (`dots_jax.rollout.engine`); without it (slots 0) a call is one static batch."""

  def __init__(self, graphdef: nnx.GraphDef, cfg: Qwen2Config, tokenizer: Any, *,
               prompt_buckets: Sequence[int], max_new_tokens: int, mesh: Any = None,
               engine: "EngineSettings | None" = None):
    self.tokenizer = tokenizer
    self.buckets = tuple(sorted(prompt_buckets))
    self.stop_ids = stop_token_ids(cfg, tokenizer)
    self.pad_id = pad_token_id(tokenizer, self.stop_ids)
    self.shards = data_parallel_size(mesh)
    slots = (engine.slots_for(cfg, self.buckets[-1], max_new_tokens, self.shards,
                              kv_head_shards(mesh, cfg.num_key_value_heads)) if engine else 0)
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
