"""GRPO / GRPO-RR objective: group advantages, the per-token clipped surrogate, aggregation weights.

Shapes: Q questions, G completions per question, N = Q*G sequences (question-major rows), T tokens.

The loss is written as a weighted *sum* over tokens, `sum(w_NxT * per_token_loss_NxT)`, with the weights
computed once per PPO mini-batch (`token_weights`). Micro-batches of a mini-batch then add up to exactly
the mini-batch loss, so gradient accumulation changes memory use and nothing else.

Statistics are returned as partial sums / extrema (`LossStats`) for the same reason: they combine across
micro-batches with `combine_stats` and become means only in `finalize_stats`.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

AdvNorm = Literal["grpo", "drgrpo"]
LossAgg = Literal["token_mean", "seq_mean_token_mean"]

ADV_EPS = 1e-6  # added to the group std; zero-variance groups get advantage exactly 0 anyway

LossStats = dict[str, jax.Array]
_MAX_KEYS = ("r_max", "r_old_max")
_MIN_KEYS = ("r_min", "r_old_min")


def group_advantages(rewards_QxG: np.ndarray | jax.Array, kind: AdvNorm = "grpo",
                     eps: float = ADV_EPS) -> np.ndarray:
  """Outcome advantages per completion, from the rewards of its group (host-side, NumPy).

  grpo: (r - mean) / (std + eps) with the unbiased std (ddof=1, as verl's GRPO); G == 1 gives 0.
  drgrpo: r - mean (Dr. GRPO drops the std division to remove its difficulty bias).
  """
  r = np.asarray(rewards_QxG, np.float64)
  if r.ndim != 2:
    raise ValueError(f"rewards must be [questions, group_size], got shape {r.shape}")
  if not np.all(np.isfinite(r)):
    raise ValueError("rewards contain non-finite values")
  centred = r - r.mean(axis=1, keepdims=True)
  if kind == "drgrpo":
    return centred.astype(np.float32)
  if kind != "grpo":
    raise ValueError(f"config.rl.adv_norm={kind!r}: expected 'grpo' or 'drgrpo'")
  g = r.shape[1]
  std = r.std(axis=1, ddof=1, keepdims=True) if g > 1 else np.zeros_like(centred[:, :1])
  return (centred / (std + eps)).astype(np.float32)


def token_weights(loss_mask_NxT: jax.Array, agg: LossAgg) -> jax.Array:
  """Per-token weights whose weighted sum is the aggregated loss over this (mini-)batch.

  token_mean (DAPO): every completion token of the batch counts equally, 1 / total tokens.
  seq_mean_token_mean: mean over sequences of each sequence's token mean; sequences without loss
  tokens (padding rows, empty completions) are left out of the sequence count.
  """
  m = loss_mask_NxT.astype(jnp.float32)
  if agg == "token_mean":
    return m / jnp.maximum(m.sum(), 1.0)
  if agg == "seq_mean_token_mean":
    len_N = m.sum(axis=1)
    n_seq = jnp.maximum(jnp.sum(len_N > 0), 1).astype(jnp.float32)
    return m / jnp.maximum(len_N, 1.0)[:, None] / n_seq
  raise ValueError(f"config.rl.loss_agg={agg!r}: expected 'token_mean' or 'seq_mean_token_mean'")


def k3_kl(logp_NxT: jax.Array, ref_logp_NxT: jax.Array) -> jax.Array:
  """k3 estimator of KL(pi_theta || pi_ref) per token: exp(d) - d - 1 with d = log pi_ref - log pi_theta."""
  d = ref_logp_NxT - logp_NxT
  return jnp.exp(d) - d - 1.0


def tis_weights(old_logp_NxT: jax.Array, sampler_logp_NxT: jax.Array, loss_mask_NxT: jax.Array,
                is_replay_N: jax.Array, cap: float
                ) -> tuple[jax.Array | None, dict[str, jax.Array]]:
  """Truncated importance sampling (verl's and TRL's TIS) of the fresh tokens: min(pi_old /
  mu_sampler, cap) per completion token of a fresh row, 1 on replayed rows (whose stored mu is the
  trainer's pi_old) and elsewhere; no gradient. `cap` <= 0: off (None, no metrics). Metrics over
  the fresh completion tokens: the mean weight and the share that the cap cut."""
  if cap <= 0:
    return None, {}
  fresh = (loss_mask_NxT > 0) & ~is_replay_N.astype(bool)[:, None]
  ratio = jnp.exp(jnp.where(fresh, old_logp_NxT - sampler_logp_NxT, 0.0))
  w = jax.lax.stop_gradient(jnp.where(fresh, jnp.minimum(ratio, cap), 1.0))
  n = jnp.maximum(jnp.sum(fresh), 1).astype(jnp.float32)
  return w, {"tis_weight_mean": jnp.sum(jnp.where(fresh, w, 0.0)) / n,
             "tis_capped_frac": jnp.sum(fresh & (ratio > cap)) / n}


def policy_loss(logp_NxT: jax.Array, old_logp_NxT: jax.Array, behav_logp_NxT: jax.Array,
                adv_N: jax.Array, weights_NxT: jax.Array, loss_mask_NxT: jax.Array,
                is_replay_N: jax.Array, *, clip_eps_low: float, clip_eps_high: float,
                ref_logp_NxT: jax.Array | None = None, kl_beta: float = 0.0,
                entropy_NxT: jax.Array | None = None, entropy_coef: float = 0.0,
                is_weight_NxT: jax.Array | None = None) -> tuple[jax.Array, LossStats]:
  """GRPO-RR clipped surrogate (+ optional k3 KL and entropy bonus), as a weighted token sum.

  r = exp(logp - mu), r_old = exp(logp_old - mu), clipped to [r_old (1 - eps_low), r_old (1 + eps_high)],
  per-token objective min(r A, clip(r) A). With mu == pi_old (fresh data) r_old == 1 and this is exactly
  the GRPO/PPO objective. `old_logp` and `behav_logp` carry no gradient. `is_weight_NxT` (TIS,
  `tis_weights`) scales each token's surrogate.
  Returns (loss, stats) where stats are sums/extrema over this batch's loss tokens (see module doc).
  """
  old = jax.lax.stop_gradient(old_logp_NxT)
  mu = jax.lax.stop_gradient(behav_logp_NxT)
  mask = loss_mask_NxT.astype(jnp.float32)
  on = mask > 0
  # Masked positions get log-ratio 0, so exp never sees pad garbage (keeps gradients finite there).
  r = jnp.exp(jnp.where(on, logp_NxT - mu, 0.0))
  r_old = jnp.exp(jnp.where(on, old - mu, 0.0))
  adv = adv_N.astype(jnp.float32)[:, None]
  lo, hi = r_old * (1.0 - clip_eps_low), r_old * (1.0 + clip_eps_high)
  r_clipped = jnp.clip(r, lo, hi)
  surrogate = jnp.minimum(r * adv, r_clipped * adv)
  if is_weight_NxT is not None:
    surrogate = surrogate * jax.lax.stop_gradient(is_weight_NxT)
  per_token = -surrogate
  # A token is "clipped" when the clipped branch wins and is flat: the token contributes no gradient.
  clipped = on & (((adv > 0) & (r > hi)) | ((adv < 0) & (r < lo)))

  stats: LossStats = {
      "tokens": mask.sum(),
      "clipped": jnp.sum(clipped.astype(jnp.float32)),
      "pg_loss": jnp.sum(weights_NxT * -surrogate),
  }
  if ref_logp_NxT is not None and kl_beta != 0.0:
    kl = jnp.where(on, k3_kl(logp_NxT, jax.lax.stop_gradient(ref_logp_NxT)), 0.0)
    per_token = per_token + kl_beta * kl
    stats["kl_sum"] = jnp.sum(kl * mask)
  if entropy_NxT is not None:
    ent = jnp.where(on, entropy_NxT, 0.0)
    if entropy_coef != 0.0:
      per_token = per_token - entropy_coef * ent
    stats["entropy_sum"] = jnp.sum(jax.lax.stop_gradient(ent) * mask)
  loss = jnp.sum(weights_NxT * per_token)
  stats["loss"] = loss

  rep = on & is_replay_N.astype(bool)[:, None]
  r_sg, r_old_sg = jax.lax.stop_gradient(r), r_old
  big = jnp.float32(jnp.inf)
  stats.update({
      "replay_tokens": jnp.sum(rep.astype(jnp.float32)),
      "r_sum": jnp.sum(jnp.where(rep, r_sg, 0.0)),
      "r_max": jnp.max(jnp.where(rep, r_sg, -big)),
      "r_min": jnp.min(jnp.where(rep, r_sg, big)),
      "r_old_sum": jnp.sum(jnp.where(rep, r_old_sg, 0.0)),
      "r_old_max": jnp.max(jnp.where(rep, r_old_sg, -big)),
      "r_old_min": jnp.min(jnp.where(rep, r_old_sg, big)),
  })
  return loss, stats


def empty_stats(like: LossStats) -> LossStats:
  """Identity element of `combine_stats` with the keys of `like` (arrays or shape structs)."""
  out = {}
  for k in like:
    fill = -jnp.inf if k in _MAX_KEYS else jnp.inf if k in _MIN_KEYS else 0.0
    out[k] = jnp.full((), fill, jnp.float32)
  return out


def combine_stats(a: LossStats, b: LossStats) -> LossStats:
  """Merges the stats of two disjoint token sets (sums add, extrema take max/min)."""
  out = {}
  for k in a:
    if k in _MAX_KEYS:
      out[k] = jnp.maximum(a[k], b[k])
    elif k in _MIN_KEYS:
      out[k] = jnp.minimum(a[k], b[k])
    else:
      out[k] = a[k] + b[k]
  return out


def finalize_stats(s: LossStats) -> dict[str, jax.Array]:
  """Turns summed stats into the logged metrics (means over loss tokens / replayed loss tokens).

  Replay ratio stats are NaN-free: with no replayed tokens they are reported as 0 (and replay_tokens 0).
  """
  tok = jnp.maximum(s["tokens"], 1.0)
  rep = s["replay_tokens"]
  has_rep = rep > 0
  rep1 = jnp.maximum(rep, 1.0)
  out = {
      "loss": s["loss"],
      "pg_loss": s["pg_loss"],
      "clip_frac": s["clipped"] / tok,
      "replay_tokens": rep,
      "replay_r_mean": jnp.where(has_rep, s["r_sum"] / rep1, 0.0),
      "replay_r_max": jnp.where(has_rep, s["r_max"], 0.0),
      "replay_r_min": jnp.where(has_rep, s["r_min"], 0.0),
      "replay_r_old_mean": jnp.where(has_rep, s["r_old_sum"] / rep1, 0.0),
      "replay_r_old_max": jnp.where(has_rep, s["r_old_max"], 0.0),
      "replay_r_old_min": jnp.where(has_rep, s["r_old_min"], 0.0),
  }
  if "kl_sum" in s:
    out["kl"] = s["kl_sum"] / tok
  if "entropy_sum" in s:
    out["entropy"] = s["entropy_sum"] / tok
  return out


def token_entropy(logits_NxTxV: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
  """Entropy of softmax(logits / temperature) at each position, float32."""
  scaled = logits_NxTxV.astype(jnp.float32) / temperature
  lse = jax.nn.logsumexp(scaled, axis=-1)
  # H = lse - E_p[logit]: one pass over the vocabulary for the expectation, no [.., V] log-softmax kept.
  return lse - jnp.sum(jnp.exp(scaled - lse[..., None]) * scaled, axis=-1)
