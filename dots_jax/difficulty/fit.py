"""Training the difficulty estimator: binary cross-entropy against observed pass rates, Adam with linear
warmup then linear decay to zero.

Each step draws one reference set (K questions with known pass rates) and a batch of query questions
disjoint from it, as the reference trainer does; the same jitted step serves the offline stage and the
optional online fine-tuning (the learning rate is an argument, so no recompilation per schedule).
With labels from several policies ([M, N]), each query is one (policy, question) pair and is
predicted from that policy's labels of the references (the official `train.py`: `ref_values[group_id]`),
so the calibration head sees label distributions of different strengths.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dots_jax.difficulty.estimator import DifficultyEstimator

_ADAM = optax.scale_by_adam()
_EPS = 1e-6


def bce(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Soft-label binary cross-entropy, mean over queries."""
  p = jnp.clip(pred, _EPS, 1.0 - _EPS)
  return -jnp.mean(target * jnp.log(p) + (1.0 - target) * jnp.log(1.0 - p))


def epoch_steps(epochs: int, examples: int, batch: int) -> int:
  """Optimizer steps of `epochs` passes over `examples` (policy, question) pairs in batches."""
  return epochs * -(-examples // batch)


def warmup_linear_decay(step: int, *, lr: float, warmup: int, total: int) -> float:
  if warmup > 0 and step < warmup:
    return lr * (step + 1) / warmup
  return lr * max(0.0, (total - step) / max(1, total - warmup))


@functools.partial(jax.jit, static_argnums=0)
def _train_step(graphdef, params, opt_state, lr, q_BxD, y_B, ref_KxD, ref_y, key):
  def loss_fn(p):
    return bce(nnx.merge(graphdef, p)(q_BxD, ref_KxD, ref_y, key=key), y_B)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = _ADAM.update(grads, opt_state, params)
  params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
  return params, opt_state, loss


def fit_estimator(model: DifficultyEstimator, emb_NxD: np.ndarray, labels: np.ndarray, *,
                  steps: int, lr: float, warmup: int, batch: int, ref_size: int, seed: int,
                  ref_pool: np.ndarray | None = None, query_pool: np.ndarray | None = None
                  ) -> list[float]:
  """Trains `model` in place; returns the per-step losses.

  `labels` is [N] (one policy) or [M, N] (M policies' pass rates of the same questions). Without
  pools, every step splits a fresh random permutation of all N questions into K references and
  `batch` queries, each query of a random policy. With pools, references come from `ref_pool` and
  queries from `query_pool` (online fine-tuning: the latest reference set and the groups trained on
  since)."""
  n = emb_NxD.shape[0]
  labels_MxN = np.asarray(labels, np.float32)
  labels_MxN = labels_MxN[None] if labels_MxN.ndim == 1 else labels_MxN
  if labels_MxN.ndim != 2 or labels_MxN.shape[1] != n:
    raise ValueError(f"labels shape {np.shape(labels)} does not match {n} embeddings")
  num_policies = labels_MxN.shape[0]
  if ref_pool is None and n < ref_size + 2:
    raise ValueError(f"need more than ref_size={ref_size} + 1 labelled questions, have {n}")
  rng = np.random.default_rng([seed, 0xF17])
  key = jax.random.key(seed)
  graphdef, params = nnx.split(model)
  opt_state = _ADAM.init(params)
  emb = np.asarray(emb_NxD, np.float32)
  losses = []
  for t in range(steps):
    if ref_pool is None:
      perm = rng.permutation(n)
      refs = perm[:ref_size]
      rest = perm[ref_size:]
      queries = rest[:batch] if len(rest) >= batch else rng.choice(rest, batch)
    else:
      refs = rng.choice(ref_pool, min(ref_size, len(ref_pool)), replace=False)
      queries = rng.choice(query_pool, batch, replace=len(query_pool) < batch)
    lr_t = warmup_linear_decay(t, lr=lr, warmup=warmup, total=steps)
    if num_policies == 1:
      y_B, ref_y = labels_MxN[0, queries], labels_MxN[0, refs]
    else:
      policy_B = rng.integers(0, num_policies, len(queries))
      y_B, ref_y = labels_MxN[policy_B, queries], labels_MxN[policy_B][:, refs]
    params, opt_state, loss = _train_step(
        graphdef, params, opt_state, jnp.float32(lr_t), emb[queries], y_B, emb[refs], ref_y,
        jax.random.fold_in(key, t))
    losses.append(float(loss))
  nnx.update(model, params)
  return losses
