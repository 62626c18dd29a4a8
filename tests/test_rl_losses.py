"""GRPO / GRPO-RR loss and gradients vs an independent per-token NumPy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dots_jax.rl import losses

EPS_LO, EPS_HI = 0.2, 0.28


def ref_advantages(rewards, kind):
  out = np.zeros_like(rewards, dtype=np.float64)
  for q, row in enumerate(rewards):
    mean = sum(row) / len(row)
    var = sum((x - mean) ** 2 for x in row) / (len(row) - 1)
    for g, x in enumerate(row):
      out[q, g] = (x - mean) if kind == "drgrpo" else (x - mean) / (math.sqrt(var) + 1e-6)
  return out


def ref_loss_and_grad(logp, old, mu, adv, lmask, agg, ref=None, beta=0.0, ent=None, ent_coef=0.0):
  """Token loop: objective, d objective / d logp (analytic), clip count."""
  n, t = logp.shape
  lens = [sum(lmask[i]) for i in range(n)]
  total = sum(lens)
  n_seq = sum(1 for x in lens if x > 0)
  loss, grad, clipped = 0.0, np.zeros((n, t)), 0
  for i in range(n):
    for j in range(t):
      if not lmask[i, j]:
        continue
      w = 1.0 / total if agg == "token_mean" else 1.0 / lens[i] / n_seq
      r = math.exp(logp[i, j] - mu[i, j])
      r_old = math.exp(old[i, j] - mu[i, j])
      lo, hi = r_old * (1 - EPS_LO), r_old * (1 + EPS_HI)
      rc = min(max(r, lo), hi)
      a = adv[i]
      unclipped, clipped_obj = r * a, rc * a
      if unclipped <= clipped_obj:
        obj, dobj = unclipped, r * a
      else:
        obj, dobj = clipped_obj, (r * a if lo <= r <= hi else 0.0)
        clipped += 1
      tok_loss, dtok = -obj, -dobj
      if ref is not None:
        d = ref[i, j] - logp[i, j]
        tok_loss += beta * (math.exp(d) - d - 1)
        dtok += beta * (1 - math.exp(d))
      if ent is not None:
        tok_loss -= ent_coef * ent[i, j]
      loss += w * tok_loss
      grad[i, j] = w * dtok
  return loss, grad, clipped


def make_batch(seed=0):
  rng = np.random.default_rng(seed)
  q, g, t = 3, 4, 7
  n = q * g
  rewards = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0.5, 0, 1, 0]], np.float32)  # group 2: zero var
  adv = losses.group_advantages(rewards, "grpo").reshape(n)
  old = rng.normal(-1.5, 0.5, (n, t)).astype(np.float32)
  # Current policy: large moves so tokens land on both sides of both clip bounds.
  logp = (old + rng.choice([-0.6, -0.1, 0.05, 0.4], size=(n, t))).astype(np.float32)
  is_replay = np.zeros(n, bool)
  is_replay[[1, 2, 9, 10]] = True
  mu = old.copy()
  mu[is_replay] += rng.normal(0, 0.3, (4, t)).astype(np.float32)  # replayed: r_old != 1
  lmask = (rng.random((n, t)) > 0.25).astype(np.int32)
  lmask[5] = 0  # a row without loss tokens
  logp[lmask == 0] = 40.0  # garbage at masked positions must not matter
  return dict(logp=logp, old=old, mu=mu, adv=adv, lmask=lmask, is_replay=is_replay,
              rewards=rewards)


def jax_loss(b, agg, **kw):
  w = losses.token_weights(jnp.asarray(b["lmask"]), agg)

  def f(logp):
    return losses.policy_loss(logp, b["old"], b["mu"], b["adv"], w, b["lmask"], b["is_replay"],
                              clip_eps_low=EPS_LO, clip_eps_high=EPS_HI, **kw)
  (loss, stats), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(b["logp"]))
  return float(loss), np.asarray(grad), stats


def test_group_advantages_match_reference():
  r = np.array([[1, 0, 0], [2, 2, 2], [0.3, 0.9, 0.1]], np.float32)
  for kind in ("grpo", "drgrpo"):
    np.testing.assert_allclose(losses.group_advantages(r, kind), ref_advantages(r, kind),
                               rtol=1e-5, atol=1e-6)
  assert np.all(losses.group_advantages(r, "grpo")[1] == 0.0)  # zero-variance group
  with pytest.raises(ValueError, match="adv_norm"):
    losses.group_advantages(r, "bogus")


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_loss_and_grad_match_numpy(agg):
  b = make_batch()
  loss, grad, stats = jax_loss(b, agg)
  ref_loss, ref_grad, ref_clipped = ref_loss_and_grad(
      b["logp"].astype(np.float64), b["old"], b["mu"], b["adv"], b["lmask"], agg)
  assert ref_clipped > 3 and ref_clipped < b["lmask"].sum() - 3  # both kinds of tokens present
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
  assert np.all(grad[b["lmask"] == 0] == 0)
  assert float(stats["clipped"]) == ref_clipped
  assert float(stats["tokens"]) == b["lmask"].sum()


def test_kl_and_entropy_terms_match_numpy():
  b = make_batch(1)
  rng = np.random.default_rng(5)
  ref = (b["old"] + rng.normal(0, 0.2, b["old"].shape)).astype(np.float32)
  ent = rng.random(b["old"].shape).astype(np.float32)
  loss, grad, stats = jax_loss(b, "token_mean", ref_logp_NxT=ref, kl_beta=0.05,
                               entropy_NxT=jnp.asarray(ent), entropy_coef=0.01)
  ref_loss, ref_grad, _ = ref_loss_and_grad(b["logp"].astype(np.float64), b["old"], b["mu"], b["adv"],
                                            b["lmask"], "token_mean", ref=ref, beta=0.05, ent=ent,
                                            ent_coef=0.01)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
  m = b["lmask"] > 0
  d = ref[m] - b["logp"][m]
  np.testing.assert_allclose(float(stats["kl_sum"]), np.sum(np.exp(d) - d - 1), rtol=1e-5)
  np.testing.assert_allclose(float(stats["entropy_sum"]), ent[m].sum(), rtol=1e-5)


def test_fresh_data_reduces_to_grpo():
  """mu == pi_old: the RR objective equals plain PPO-clip GRPO with ratio exp(logp - logp_old)."""
  b = make_batch(2)
  b["mu"] = b["old"]
  loss, grad, _ = jax_loss(b, "token_mean")
  m = b["lmask"] > 0
  r = np.exp(b["logp"].astype(np.float64) - b["old"])
  a = np.broadcast_to(b["adv"][:, None], r.shape)
  obj = np.minimum(r * a, np.clip(r, 1 - EPS_LO, 1 + EPS_HI) * a)
  np.testing.assert_allclose(loss, -obj[m].sum() / m.sum(), rtol=1e-6)


def test_replay_ratio_stats_and_accumulation():
  b = make_batch(3)
  w = losses.token_weights(jnp.asarray(b["lmask"]), "token_mean")
  args = lambda s: [jnp.asarray(b[k][s]) for k in ("logp", "old", "mu", "adv")] + [
      w[s], jnp.asarray(b["lmask"][s]), jnp.asarray(b["is_replay"][s])]
  kw = dict(clip_eps_low=EPS_LO, clip_eps_high=EPS_HI)
  full_loss, full = losses.policy_loss(*args(slice(None)), **kw)
  # Two halves combined == the whole batch (what micro-batch accumulation relies on).
  _, s1 = losses.policy_loss(*args(slice(0, 6)), **kw)
  _, s2 = losses.policy_loss(*args(slice(6, 12)), **kw)
  merged = losses.combine_stats(losses.combine_stats(losses.empty_stats(s1), s1), s2)
  for k in full:
    np.testing.assert_allclose(float(merged[k]), float(full[k]), rtol=1e-6, err_msg=k)
  out = losses.finalize_stats(full)
  rep = (b["lmask"] > 0) & b["is_replay"][:, None]
  r = np.exp(b["logp"] - b["mu"])[rep]
  r_old = np.exp(b["old"] - b["mu"])[rep]
  assert not np.allclose(r_old, 1.0)
  np.testing.assert_allclose(float(out["replay_r_mean"]), r.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(out["replay_r_max"]), r.max(), rtol=1e-5)
  np.testing.assert_allclose(float(out["replay_r_old_min"]), r_old.min(), rtol=1e-5)
  np.testing.assert_allclose(float(out["replay_r_old_mean"]), r_old.mean(), rtol=1e-5)
  assert float(out["loss"]) == pytest.approx(float(full_loss))


def test_token_weights_aggregations():
  m = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
  tm = np.asarray(losses.token_weights(m, "token_mean"))
  np.testing.assert_allclose(tm.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(tm[0, 0], 1 / 6)
  sm = np.asarray(losses.token_weights(m, "seq_mean_token_mean"))
  np.testing.assert_allclose(sm[0, 0], 1 / 2 / 2)
  np.testing.assert_allclose(sm[1, 0], 1 / 4 / 2)
  assert sm[2].sum() == 0
  with pytest.raises(ValueError, match="loss_agg"):
    losses.token_weights(m, "sum")


def test_tis_weights_match_a_hand_computation():
  old = np.array([[0.0, -1.0, -0.5, -2.0], [0.0, -0.3, -0.1, 0.0]], np.float32)
  sampler = np.array([[0.0, -1.2, -0.1, -0.5], [0.0, -0.9, -0.1, 0.0]], np.float32)
  lmask = np.array([[0, 1, 1, 1], [0, 1, 1, 0]], np.int32)
  w, m = losses.tis_weights(jnp.asarray(old), jnp.asarray(sampler), jnp.asarray(lmask),
                            jnp.asarray([False, True]), cap=1.1)
  # Row 0 fresh: exp(0.2) = 1.2214 capped to 1.1, exp(-0.4) = 0.6703, exp(-1.5) = 0.2231;
  # row 1 replayed and prompt positions: 1.
  want = np.array([[1, 1.1, math.exp(-0.4), math.exp(-1.5)], [1, 1, 1, 1]], np.float32)
  np.testing.assert_allclose(np.asarray(w), want, rtol=1e-6)
  assert float(m["tis_weight_mean"]) == pytest.approx((1.1 + math.exp(-0.4) + math.exp(-1.5)) / 3,
                                                      rel=1e-6)
  assert float(m["tis_capped_frac"]) == pytest.approx(1 / 3)
  off, none = losses.tis_weights(jnp.asarray(old), jnp.asarray(sampler), jnp.asarray(lmask),
                                 jnp.asarray([False, True]), cap=0.0)
  assert off is None and none == {}


def test_tis_scales_the_policy_gradient_and_is_neutral_at_an_infinite_cap():
  rng = np.random.default_rng(5)
  n, t = 4, 6
  logp = jnp.asarray(rng.normal(-1.0, 0.3, (n, t)), jnp.float32)
  old = logp + jnp.asarray(rng.normal(0, 0.05, (n, t)), jnp.float32)
  lmask = jnp.asarray(np.tile([0, 0, 1, 1, 1, 1], (n, 1)), jnp.int32)
  adv = jnp.asarray([1.0, -1.0, 0.5, -0.5])
  is_rep = jnp.zeros((n,), bool)
  wts = losses.token_weights(lmask, "token_mean")
  kw = dict(clip_eps_low=EPS_LO, clip_eps_high=EPS_HI)
  base, _ = losses.policy_loss(logp, old, old, adv, wts, lmask, is_rep, **kw)
  # Identical sampler and trainer log-probs, cap +inf: every weight 1, the loss unchanged.
  w, _ = losses.tis_weights(old, old, lmask, is_rep, cap=float("inf"))
  same, _ = losses.policy_loss(logp, old, old, adv, wts, lmask, is_rep, is_weight_NxT=w, **kw)
  assert float(same) == float(base)
  # Weights w: the per-token surrogate is w times GRPO's, so the loss and its gradient scale.
  w = jnp.asarray(rng.uniform(0.5, 1.5, (n, t)), jnp.float32)
  f = lambda lp, ww: losses.policy_loss(lp, old, old, adv, wts, lmask, is_rep, is_weight_NxT=ww,
                                        **kw)[0]
  g_w = jax.grad(f)(logp, w)
  g_1 = jax.grad(f)(logp, jnp.ones_like(w))
  np.testing.assert_allclose(np.asarray(g_w), np.asarray(g_1 * w), rtol=1e-5, atol=1e-8)
