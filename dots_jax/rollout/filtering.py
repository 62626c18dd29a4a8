"""Token choice for one decode step: temperature, top-k, top-p (nucleus), greedy, and the draw.

All controls are traced scalars, so changing them between calls never recompiles. The truncation is
exact and defined on the temperature-scaled distribution, in the order Hugging Face and vLLM use
(temperature, then top-k, then top-p over the renormalised top-k set):

  * top-k keeps every token whose logit is >= the k-th largest logit (k <= 0 or k >= V: all tokens;
    tokens tied with the k-th logit are all kept);
  * top-p keeps token i when the renormalised mass of the kept tokens with a strictly larger logit is
    < p: the shortest prefix of the ranking whose mass reaches p, with ties at the cutoff kept.

Both cutoffs are found by bisection over the ordered bit patterns of float32 (32 exact steps of one
pass over the vocabulary each) instead of a sort: on CPU a [128, 32k] sort costs seconds per step.
The draw is an exact inverse-CDF sample that needs one uniform per row (drawing V Gumbel variables
per row dominated the decode step on CPU): block sums locate the block, one in-block prefix sum
locates the token.

`choose_tokens` also returns each chosen token's log-prob under the distribution it was drawn from:
the truncated, renormalised one when top-k/top-p cut the vocabulary (what the rollout's behaviour
policy mu really is), which equals the trainer's full-softmax pi_old when nothing is cut. With
greedy decoding the log-prob is that of the full softmax at temperature 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dots_jax.model.qwen2 import token_logprobs

_BISECT_STEPS = 32  # the ordered-int32 search range has at most 2**32 values
_DRAW_BLOCK = 256


def _ordered_int(x: jax.Array) -> jax.Array:
  """Monotone map float32 -> int32 (an involution: applying it twice returns the bits)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  return jnp.where(bits >= 0, bits, bits ^ jnp.int32(0x7FFFFFFF))


def _from_ordered_int(o: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(jnp.where(o >= 0, o, o ^ jnp.int32(0x7FFFFFFF)), jnp.float32)


def _mid(lo: jax.Array, hi: jax.Array, round_up: bool) -> jax.Array:
  """(lo + hi) // 2 (or the ceiling) without int32 overflow."""
  carry = (lo | hi) & 1 if round_up else lo & hi & 1
  return (lo >> 1) + (hi >> 1) + carry


def _top_k_cutoff(logits_NxV: jax.Array, k: jax.Array) -> jax.Array:
  """Per row, the largest logit c with #{logits >= c} >= k (the k-th largest value)."""
  lo = _ordered_int(jnp.min(logits_NxV, axis=-1))  # count(>= min) = V >= k holds here
  hi = _ordered_int(jnp.max(logits_NxV, axis=-1))

  def step(_, lo_hi):
    lo, hi = lo_hi
    mid = _mid(lo, hi, round_up=True)
    ok = jnp.sum(logits_NxV >= _from_ordered_int(mid)[:, None], axis=-1) >= k
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, _BISECT_STEPS, step, (lo, hi))
  return _from_ordered_int(lo)


def _top_p_cutoff(logits_NxV: jax.Array, probs_NxV: jax.Array, p: jax.Array) -> jax.Array:
  """Per row, the smallest logit c with mass(logits > c) < p; `probs_NxV` sums to 1 per row."""
  lo = _ordered_int(jnp.min(logits_NxV, axis=-1))
  hi = _ordered_int(jnp.max(logits_NxV, axis=-1))  # mass(> max) = 0 < p holds here

  def step(_, lo_hi):
    lo, hi = lo_hi
    mid = _mid(lo, hi, round_up=False)
    above = logits_NxV > _from_ordered_int(mid)[:, None]
    ok = jnp.sum(jnp.where(above, probs_NxV, 0.0), axis=-1) < p
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  _, hi = jax.lax.fori_loop(0, _BISECT_STEPS, step, (lo, hi))
  return _from_ordered_int(hi)


def truncation_mask(scaled_logits_NxV: jax.Array, top_k: jax.Array | int,
                    top_p: jax.Array | float) -> jax.Array:
  """Boolean [N, V]: which tokens survive top-k then top-p (see the module docstring)."""
  logits = scaled_logits_NxV.astype(jnp.float32)
  n, v = logits.shape
  top_k = jnp.asarray(top_k, jnp.int32)
  top_p = jnp.asarray(top_p, jnp.float32)
  keep_k = jax.lax.cond(
      (top_k > 0) & (top_k < v),
      lambda x: x >= _top_k_cutoff(x, top_k)[:, None],
      lambda x: jnp.ones((n, v), bool),
      logits)

  def nucleus(x):
    probs_NxV = jax.nn.softmax(jnp.where(keep_k, x, -jnp.inf), axis=-1)
    return keep_k & (x >= _top_p_cutoff(x, probs_NxV, top_p)[:, None])

  return jax.lax.cond(top_p < 1.0, nucleus, lambda x: keep_k, logits)


def needs_truncation(top_k: jax.Array | int, top_p: jax.Array | float, vocab_size: int) -> jax.Array:
  """False when top-k and top-p keep everything, so their passes can be skipped at run time."""
  return ((top_k > 0) & (top_k < vocab_size)) | (top_p < 1.0)


def draw(logits_NxV: jax.Array, rng: jax.Array) -> jax.Array:
  """One exact sample per row from softmax(logits) (-inf entries are never drawn) -> int32 [N].
  `rng` is one key for the batch or a key per row ([N])."""
  n, v = logits_NxV.shape
  blocks = -(-v // _DRAW_BLOCK)
  w_NxV = jnp.exp(logits_NxV - jnp.max(logits_NxV, axis=-1, keepdims=True))
  w_NxBxK = jnp.pad(w_NxV, ((0, 0), (0, blocks * _DRAW_BLOCK - v))).reshape(n, blocks, _DRAW_BLOCK)
  bsum_NxB = jnp.sum(w_NxBxK, axis=-1)
  bcum_NxB = jnp.cumsum(bsum_NxB, axis=-1)
  if rng.shape == (n,):  # one key per row: each row's draw independent of the batch it is in
    u_N = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(rng)
  else:
    u_N = jax.random.uniform(rng, (n,), jnp.float32)
  u_N = u_N * bcum_NxB[:, -1]

  def first_above(cum_NxM, target_N, weights_NxM):
    """First index whose prefix sum exceeds the target; float rounding can leave none, in which
    case the last index with nonzero weight is used, so a zero-probability token is never drawn."""
    idx = jnp.sum(cum_NxM <= target_N[:, None], axis=-1)
    m = weights_NxM.shape[-1]
    last_nonzero = m - 1 - jnp.argmax(weights_NxM[:, ::-1] > 0, axis=-1)
    return jnp.minimum(idx, last_nonzero).astype(jnp.int32)

  blk_N = first_above(bcum_NxB, u_N, bsum_NxB)
  before_N = jnp.take_along_axis(bcum_NxB - bsum_NxB, blk_N[:, None], axis=-1)[:, 0]
  w_NxK = jnp.take_along_axis(w_NxBxK, blk_N[:, None, None], axis=1)[:, 0]
  idx_N = first_above(jnp.cumsum(w_NxK, axis=-1), u_N - before_N, w_NxK)
  return blk_N * _DRAW_BLOCK + idx_N


def choose_tokens(logits_NxV: jax.Array, rng: jax.Array, *, temperature: jax.Array,
                  top_p: jax.Array, top_k: jax.Array, greedy: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """(next tokens [N] int32, their log-probs [N] float32): argmax when `greedy`, else a draw from
  the truncated distribution, with its log-prob under that distribution (module docstring)."""
  logits = logits_NxV.astype(jnp.float32)

  def logp(scaled_NxV, tok_N):
    return token_logprobs(scaled_NxV[:, None], tok_N[:, None])[:, 0]

  def sample(x):
    scaled_NxV = x / jnp.where(temperature > 0, temperature, 1.0)
    truncated_NxV = jax.lax.cond(
        needs_truncation(top_k, top_p, x.shape[-1]),
        lambda s: jnp.where(truncation_mask(s, top_k, top_p), s, -jnp.inf),
        lambda s: s,
        scaled_NxV)
    tok_N = draw(truncated_NxV, rng)
    return tok_N, logp(truncated_NxV, tok_N)

  def argmax(x):
    tok_N = jnp.argmax(x, axis=-1).astype(jnp.int32)
    return tok_N, logp(x, tok_N)

  return jax.lax.cond(greedy, argmax, sample, logits)
