"""Sampling distribution tests: exact top-k/top-p masks and chi-square tests of the draws."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import stats

from dots_jax.model.qwen2 import Qwen2Config, init_model, positions_from_mask
from dots_jax.rollout.filtering import choose_tokens, draw, truncation_mask
from dots_jax.rollout.sampler import Sampler
from dots_jax.data.prompts import pad_prompts

P_ACCEPT = 1e-4  # a correct sampler fails a single test with this probability


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x[np.isfinite(x)].max())
  return e / e.sum()


def _ref_mask(logits_V, k, p):
  """Brute-force float64 definition; also returns the distance of p from a decision boundary."""
  v = len(logits_V)
  keep = np.ones(v, bool)
  if 0 < k < v:
    keep = logits_V >= np.sort(logits_V)[::-1][k - 1]
  probs = np.where(keep, _softmax(np.where(keep, logits_V, -np.inf)), 0.0)
  above = np.array([probs[logits_V > l].sum() for l in logits_V])
  margin = np.inf if p >= 1 else np.min(np.abs(above[keep] - p))
  if p < 1:
    keep &= above < p
  return keep, margin


def _chi2_pvalue(counts, probs):
  """Chi-square goodness of fit, bins with expected count < 5 pooled into one."""
  expected = probs * counts.sum()
  small = expected < 5
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def test_truncation_mask_matches_bruteforce_definition():
  rng = np.random.default_rng(0)
  rows, ks, ps = [], [], []
  for i in range(240):
    v = int(rng.integers(2, 60))
    logits = rng.normal(0, 2, v)
    if i % 3 == 0:
      logits = np.round(logits, 1)  # ties, including at the cutoffs
    rows.append(np.pad(logits, (0, 60 - v), constant_values=-1e4))  # padding never survives
    ks.append(int(rng.choice([0, 1, 2, 5, 20, 70])))
    ps.append(float(rng.choice([1.0, 0.05, 0.5, 0.9, 0.99])))
  mask_fn = jax.jit(truncation_mask)  # k and p traced: one compile for every case
  checked = 0
  for logits, k, p in zip(rows, ks, ps):
    want, margin = _ref_mask(logits, k, p)
    if margin < 1e-5:
      continue  # float32 rounding may legitimately decide a p that sits on a boundary
    got = np.asarray(mask_fn(jnp.asarray(logits, jnp.float32)[None], jnp.int32(k), jnp.float32(p)))[0]
    np.testing.assert_array_equal(got, want, err_msg=f"k={k} p={p} logits={logits}")
    checked += 1
  assert checked > 200


def test_truncation_mask_batched_and_extreme_values():
  logits = jnp.array([[3.0, 1.0, 3.0, -2.0, 0.5], [-1e30, 5.0, 4.0, 4.0, -7.0]])
  # top-k keeps every token tied with the k-th logit.
  np.testing.assert_array_equal(truncation_mask(logits, 1, 1.0), [[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]])
  np.testing.assert_array_equal(truncation_mask(logits, 2, 1.0), [[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]])
  # A tiny top-p keeps just the most likely token (and its ties); k = 0 / p = 1 keep everything.
  np.testing.assert_array_equal(truncation_mask(logits, 0, 1e-6), [[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]])
  assert bool(jnp.all(truncation_mask(logits, 0, 1.0)))


def test_draw_frequencies_match_softmax():
  n, v = 60_000, 300  # two draw blocks, the second one partial
  logits = np.random.default_rng(1).normal(0, 0.7, v).astype(np.float32)
  logits[17] = -np.inf  # a masked token must never be drawn
  toks = np.asarray(draw(jnp.broadcast_to(jnp.asarray(logits), (n, v)), jax.random.key(0)))
  counts = np.bincount(toks, minlength=v)
  assert counts[17] == 0
  assert _chi2_pvalue(counts, _softmax(logits)) > P_ACCEPT
  # The same test rejects a slightly wrong distribution (temperature 1/1.15), so it can fail.
  assert _chi2_pvalue(counts, _softmax(logits * 1.15)) < 1e-6


def test_choose_tokens_samples_the_truncated_distribution():
  n, v = 40_000, 40
  logits = np.random.default_rng(2).normal(0, 1.5, v).astype(np.float32)
  temperature, k, p = 0.7, 12, 0.8
  keep, margin = _ref_mask(logits / temperature, k, p)
  assert margin > 1e-3 and 2 < keep.sum() < k
  toks, logp = choose_tokens(jnp.broadcast_to(jnp.asarray(logits), (n, v)), jax.random.key(1),
                             temperature=jnp.float32(temperature), top_p=jnp.float32(p),
                             top_k=jnp.int32(k), greedy=jnp.bool_(False))
  toks = np.asarray(toks)
  counts = np.bincount(toks, minlength=v)
  assert counts[~keep].sum() == 0
  want = np.where(keep, _softmax(np.where(keep, logits / temperature, -np.inf)), 0.0)
  # Each token's log-prob is that of the truncated distribution it was drawn from.
  np.testing.assert_allclose(np.asarray(logp), np.log(want[toks]), atol=2e-6)
  assert _chi2_pvalue(counts[keep], want[keep]) > P_ACCEPT
  wrong = _softmax(np.where(keep, logits / (temperature * 1.15), -np.inf))  # power check
  assert _chi2_pvalue(counts[keep], wrong[keep]) < 1e-6
  greedy, greedy_logp = choose_tokens(
      jnp.asarray(logits)[None], jax.random.key(1), temperature=jnp.float32(0.7),
      top_p=jnp.float32(1.0), top_k=jnp.int32(0), greedy=jnp.bool_(True))
  assert int(greedy[0]) == int(np.argmax(logits))
  np.testing.assert_allclose(float(greedy_logp[0]), np.log(_softmax(logits).max()), atol=2e-6)


def test_sampler_first_token_frequencies_match_model_softmax():
  """End to end: G samples of one prompt (one prefill, per-row randomness) follow the model."""
  cfg = Qwen2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
  model = init_model(cfg, 3)
  graphdef, params = nnx.split(model)
  tokens, mask = pad_prompts([[4, 9, 2, 33]], (4,), 0)
  logits, _ = model(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))
  sampler = Sampler(graphdef, cfg, max_prompt_len=4, max_new_tokens=1, eos_ids=(), pad_id=0)
  g = 20_000
  # Low temperatures turn the weak logits of a random init into a peaked distribution.
  for temperature, top_p in [(1.0 / 8.0, 1.0), (1.0 / 5.0, 0.7)]:
    out = sampler.generate(params, tokens, mask, jax.random.key(4), num_samples=g,
                           temperature=temperature, top_p=top_p)
    counts = np.bincount(out.tokens_NxR[:, 0], minlength=cfg.vocab_size)
    scaled = np.asarray(logits[0, -1], np.float64) / temperature
    keep, margin = _ref_mask(scaled, 0, top_p)
    assert margin > 1e-3 and counts[~keep].sum() == 0
    want = np.where(keep, _softmax(np.where(keep, scaled, -np.inf)), 0.0)
    assert _chi2_pvalue(counts[keep], want[keep]) > P_ACCEPT, (temperature, top_p)
    # Log-probs are under the distribution the tokens were drawn from (truncated, renormalised).
    np.testing.assert_allclose(out.logp_NxR[:, 0], np.log(want)[out.tokens_NxR[:, 0]], atol=1e-4)
  assert sampler.trace_count == 1
