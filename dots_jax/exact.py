"""Exact pass rates for a task with one accepted completion (the synthetic reversed-digit sets).

Under an exact-match reward a temperature-1 sample is correct iff it is the target completion, so a
question's pass rate is p = exp(log p(target | prompt)): one forward pass, no sampling noise. Used by
the evaluator (`eval.exact`), the tiny base's spread report and the tiny SFT loss (the same packing).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dots_jax.model.qwen2 import Qwen2ForCausalLM, positions_from_mask, sequence_logprobs
from dots_jax.model.sharding import batch_sharding, data_parallel_size, to_host
from dots_jax.rewards.reversed_digits import format_reversed

# (prompt token lists, completion token lists) -> log p(completion | prompt) per row, float64 [B].
ExactFn = Callable[[list[list[int]], list[list[int]]], np.ndarray]


def target_tokens(answer: str, encode: Callable[[str], list[int]], eos_id: int) -> list[int]:
  """The one completion the reversed-digit reward accepts for `answer`: reversed digits, then EOS."""
  return list(encode(format_reversed(answer))) + [eos_id]


def pack_completions(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                     length: int, *, rows: int | None = None,
                     name: Callable[[int], str] = lambda i: f"row {i}", hint: str = ""
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Left-padded (prompt + completion) tokens, token mask and completion (loss) mask, [rows, length].

  Rows beyond len(prompts) (`rows` pads a batch to one compiled shape) are all padding. A prompt +
  completion longer than `length` raises ValueError naming the row (`name(i)`) and `hint`.
  """
  n = len(prompts) if rows is None else rows
  tokens = np.zeros((n, length), np.int32)
  mask = np.zeros((n, length), np.int32)
  loss_mask = np.zeros((n, length), np.float32)
  for i, (prompt, completion) in enumerate(zip(prompts, completions)):
    seq = list(prompt) + list(completion)
    if len(seq) > length:
      raise ValueError(f"{name(i)} needs {len(seq)} tokens > {length}; {hint}")
    tokens[i, length - len(seq):] = seq
    mask[i, length - len(seq):] = 1
    loss_mask[i, length - len(completion):] = 1.0
  return tokens, mask, loss_mask


def completion_logprob(model: Qwen2ForCausalLM, tokens_BxT: jax.Array, mask_BxT: jax.Array,
                       loss_mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example log p(target completion) and whether greedy decoding reproduces it exactly."""
  logits_BxTxV, _ = model(tokens_BxT, positions_from_mask(mask_BxT), mask_BxT)
  logp_BxT = sequence_logprobs(model, tokens_BxT, mask_BxT)
  pred_BxT = jnp.pad(jnp.argmax(logits_BxTxV[:, :-1], -1), ((0, 0), (1, 0)))
  lm = loss_mask_BxT > 0
  greedy_ok_B = jnp.all(jnp.where(lm, pred_BxT == tokens_BxT, True), axis=-1)
  return jnp.sum(logp_BxT * loss_mask_BxT, axis=-1), greedy_ok_B


@functools.lru_cache(maxsize=None)
def scorer(graphdef: nnx.GraphDef) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """One jitted `completion_logprob` per model structure (new params reuse its compilation)."""
  return jax.jit(lambda p, t, m, l: completion_logprob(nnx.merge(graphdef, p), t, m, l))


def exact_logprob_fn(graphdef: nnx.GraphDef, params: Any, *, length: int, batch: int,
                     mesh: Any = None) -> ExactFn:
  """An ExactFn at `params`: one forward pass per call of up to `batch` rows (padded to that size, and
  to a multiple of the data-parallel shards, so every call has one compiled shape)."""
  shards = data_parallel_size(mesh)
  rows = -(-batch // shards) * shards
  score = scorer(graphdef)

  def exact(prompts: list[list[int]], completions: list[list[int]]) -> np.ndarray:
    n = len(prompts)
    if n > rows or n != len(completions):
      raise ValueError(f"exact scoring takes up to {rows} (prompt, completion) pairs, got "
                       f"{n} prompts and {len(completions)} completions")
    packed = pack_completions(prompts, completions, length, rows=rows,
                              name=lambda i: f"exact evaluation row {i}",
                              hint="raise config.eval.max_new_tokens")
    if mesh is not None:  # every process passes the same rows (as the training batch)
      packed = tuple(jax.device_put(a, batch_sharding(mesh, 2)) for a in packed)
    return to_host(score(params, *packed)[0])[:n]

  return exact
