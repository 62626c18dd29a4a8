"""Query-blocked attention (model.attn_chunk) equals full attention, values and gradients."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dots_jax.model import qwen2

CFG = qwen2.Qwen2Config(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4,
                        initializer_range=0.2)


def _batch():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (3, 11)), jnp.int32)
  mask = jnp.ones((3, 11), jnp.int32).at[0, :4].set(0).at[2, :1].set(0)  # left padding
  return tokens, mask


def _loss_and_grad(cfg):
  graphdef, params = nnx.split(qwen2.init_model(cfg, seed=3))
  tokens, mask = _batch()

  def loss(p):
    logp = qwen2.sequence_logprobs(nnx.merge(graphdef, p), tokens, mask)
    return jnp.sum(logp * jnp.arange(11.0)), logp

  (_, logp), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return logp, grads


@pytest.mark.parametrize("chunk,remat", [(4, False), (5, True), (11, False)])
def test_blocked_attention_matches_full(chunk, remat):
  ref_logp, ref_grads = _loss_and_grad(dataclasses.replace(CFG, remat=remat))
  logp, grads = _loss_and_grad(dataclasses.replace(CFG, attn_chunk=chunk, remat=remat))
  np.testing.assert_allclose(logp, ref_logp, atol=1e-6, rtol=0)
  # Gradients: float32 round-off of a different summation order (the key/value gradients add up
  # block by block), relative to each tensor's scale.
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))


def test_blocked_attention_keeps_one_block_of_scores():
  """The compiled backward holds one block's [B, heads, chunk, T] scores, not all of them."""
  cfg = dataclasses.replace(CFG, num_hidden_layers=1, remat=True)
  t = 256

  def temp_bytes(c):
    graphdef, params = nnx.split(qwen2.init_model(c, seed=0))
    tokens = jax.ShapeDtypeStruct((2, t), jnp.int32)

    def loss(p, tok):
      return jnp.sum(qwen2.sequence_logprobs(nnx.merge(graphdef, p), tok, jnp.ones_like(tok)))

    return jax.jit(jax.grad(loss)).lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

  full, blocked = temp_bytes(cfg), temp_bytes(dataclasses.replace(cfg, attn_chunk=32))
  scores = 2 * cfg.num_attention_heads * t * t * 4
  assert full > scores and blocked < full - scores // 2


@pytest.mark.parametrize("policy", ["dots_saveable", "everything_saveable"])
def test_remat_policies_give_the_same_gradients(policy):
  """model.remat_policy chooses what a layer keeps for its backward pass, not what it computes."""
  ref_logp, ref_grads = _loss_and_grad(dataclasses.replace(CFG, remat=False))
  logp, grads = _loss_and_grad(dataclasses.replace(CFG, remat=True, remat_policy=policy))
  np.testing.assert_allclose(logp, ref_logp, atol=1e-6, rtol=0)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))
  with pytest.raises(ValueError, match="remat_policy='no_such_policy'"):
    qwen2.remat_policy("no_such_policy")
