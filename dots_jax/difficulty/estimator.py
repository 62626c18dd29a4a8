"""DOTS adaptive difficulty estimator (arXiv 2506.05316) in Flax NNX.

Given frozen question embeddings, a query question's pass rate is predicted from K reference questions
whose pass rates under the current policy were just measured:
  scores_k = <P_ref(e_k), P_q(e_q)> / sqrt(d) / tau,  w = softmax_k(scores),  base = sum_k w_k y_k,
then a calibration head maps (mean, std) of the reference labels to a temperature T and a bias b:
  p = sigmoid(logit(base) / T + b).
P_q and P_ref are separate adapters: LayerNorm -> [Linear -> GELU -> Dropout] x (layers-1) -> Linear
-> LayerNorm (the reference code's projection). Everything here is pure given (graphdef, params), so
callers jit it; `predict_all` runs the queries in fixed-size chunks (one compilation).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dots_jax import fs

_EPS = 1e-4  # clamp before logit, as the reference head does


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
  input_dim: int
  width: int = 256
  layers: int = 3
  dropout: float = 0.1
  tau: float = 1.0  # softmax temperature over reference scores
  calib_hidden: int = 10


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


class Adapter(nnx.Module):
  """Projects frozen embeddings into the space where query/reference similarity is measured."""

  def __init__(self, cfg: EstimatorConfig, *, rngs: nnx.Rngs):
    self.rate = cfg.dropout
    self.norm_in = nnx.LayerNorm(cfg.input_dim, rngs=rngs)
    dims = [cfg.input_dim] + [cfg.width] * cfg.layers
    self.linears = nnx.List([nnx.Linear(dims[i], dims[i + 1], rngs=rngs) for i in range(cfg.layers)])
    self.norm_out = nnx.LayerNorm(cfg.width, rngs=rngs)

  def __call__(self, x_NxD: jax.Array, key: jax.Array | None = None) -> jax.Array:
    x = self.norm_in(x_NxD)
    last = len(self.linears) - 1
    for i, lin in enumerate(self.linears):
      x = lin(x)
      if i < last:
        x = jax.nn.gelu(x, approximate=False)
        sub = None if key is None else jax.random.fold_in(key, i)
        x = _dropout(x, self.rate, sub)
    return self.norm_out(x)


class DifficultyEstimator(nnx.Module):
  def __init__(self, cfg: EstimatorConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.query = Adapter(cfg, rngs=rngs)
    self.ref = Adapter(cfg, rngs=rngs)
    self.calib_in = nnx.Linear(2, cfg.calib_hidden, rngs=rngs)
    self.calib_out = nnx.Linear(cfg.calib_hidden, 2, rngs=rngs)

  def calibration(self, ref_labels_CxK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per query: temperature in [1e-2, 10] and bias in (-1, 1) from the mean and std of the
    reference labels it is predicted from."""
    stats_Cx2 = jnp.stack([ref_labels_CxK.mean(-1), ref_labels_CxK.std(-1, ddof=1)], axis=-1)
    out_Cx2 = self.calib_out(jax.nn.relu(self.calib_in(stats_Cx2)))
    temp = jnp.clip(jax.nn.softplus(out_Cx2[..., 0]), 1e-2, 10.0)
    return temp, jnp.tanh(out_Cx2[..., 1])

  def from_projections(self, pq_CxH: jax.Array, pref_KxH: jax.Array,
                       ref_labels: jax.Array) -> jax.Array:
    """Calibrated predictions from already-projected queries and references. `ref_labels` is [K]
    (one policy's labels for every query) or [C, K] (each query its own policy's labels of the same
    references, as the official estimator is trained on several policies)."""
    labels_CxK = jnp.broadcast_to(ref_labels, (pq_CxH.shape[0], pref_KxH.shape[0]))
    scores = pq_CxH @ pref_KxH.T / jnp.sqrt(pq_CxH.shape[-1]) / self.cfg.tau
    base = jnp.sum(jax.nn.softmax(scores, axis=-1) * labels_CxK, axis=-1)
    temp, bias = self.calibration(labels_CxK)
    base = jnp.clip(base, _EPS, 1.0 - _EPS)
    return jax.nn.sigmoid(jnp.log(base / (1.0 - base)) / temp + bias)

  def __call__(self, q_CxD: jax.Array, ref_KxD: jax.Array, ref_labels: jax.Array,
               key: jax.Array | None = None) -> jax.Array:
    kq = kr = None
    if key is not None:
      kq, kr = jax.random.split(key)
    return self.from_projections(self.query(q_CxD, kq), self.ref(ref_KxD, kr), ref_labels)


def init_estimator(cfg: EstimatorConfig, seed: int = 0) -> DifficultyEstimator:
  return DifficultyEstimator(cfg, rngs=nnx.Rngs(seed))


@functools.partial(jax.jit, static_argnums=0)
def _project_queries(graphdef, params, q_CxD):
  return nnx.merge(graphdef, params).query(q_CxD)


@functools.partial(jax.jit, static_argnums=0)
def _project_references(graphdef, params, r_CxD):
  return nnx.merge(graphdef, params).ref(r_CxD)


@functools.partial(jax.jit, static_argnums=0)
def _predict_projected(graphdef, params, pq_CxH, ref_KxD, labels_K):
  model = nnx.merge(graphdef, params)
  return model.from_projections(pq_CxH, model.ref(ref_KxD), labels_K)


def _chunks(n: int, chunk: int):
  for start in range(0, n, chunk):
    yield start, min(start + chunk, n)


def _chunk_size(n: int, chunk: int) -> int:
  """Fixed rows per jitted call: `chunk`, or n rounded up to 8 when everything fits in one call."""
  return min(chunk, -(-n // 8) * 8)


def project_queries(model: DifficultyEstimator, emb_NxD: np.ndarray, chunk: int = 8192) -> np.ndarray:
  """P_q of every question (float32 [N, width]); reusable across rounds while the adapter is fixed."""
  return _project(_project_queries, model, emb_NxD, chunk)


def project_references(model: DifficultyEstimator, emb_NxD: np.ndarray, chunk: int = 8192
                       ) -> np.ndarray:
  """P_ref of every question (float32 [N, width]): each as a labelled reference."""
  return _project(_project_references, model, emb_NxD, chunk)


def _project(fn, model: DifficultyEstimator, emb_NxD: np.ndarray, chunk: int) -> np.ndarray:
  graphdef, params = nnx.split(model)
  chunk = _chunk_size(emb_NxD.shape[0], chunk)
  out = np.empty((emb_NxD.shape[0], model.cfg.width), np.float32)
  for s, e in _chunks(emb_NxD.shape[0], chunk):
    block = np.zeros((chunk, emb_NxD.shape[1]), np.float32)  # pad: one compiled shape
    block[:e - s] = emb_NxD[s:e]
    out[s:e] = np.asarray(fn(graphdef, params, block))[:e - s]
  return out


def predict_from_projections(model: DifficultyEstimator, pq_NxH: np.ndarray, ref_KxD: np.ndarray,
                             ref_labels_K: np.ndarray, chunk: int = 8192) -> np.ndarray:
  graphdef, params = nnx.split(model)
  ref = jnp.asarray(ref_KxD, jnp.float32)
  labels = jnp.asarray(ref_labels_K, jnp.float32)
  chunk = _chunk_size(pq_NxH.shape[0], chunk)
  out = np.empty(pq_NxH.shape[0], np.float32)
  for s, e in _chunks(pq_NxH.shape[0], chunk):
    block = np.zeros((chunk, pq_NxH.shape[1]), np.float32)
    block[:e - s] = pq_NxH[s:e]
    out[s:e] = np.asarray(_predict_projected(graphdef, params, block, ref, labels))[:e - s]
  return out


def predict_all(model: DifficultyEstimator, emb_NxD: np.ndarray, ref_KxD: np.ndarray,
                ref_labels_K: np.ndarray, chunk: int = 8192) -> np.ndarray:
  """Calibrated pass-rate predictions for every row of `emb_NxD` against one reference set."""
  return predict_from_projections(model, project_queries(model, emb_NxD, chunk), ref_KxD,
                                  ref_labels_K, chunk)


def linear_recalibration(pred_K: np.ndarray, labels_K: np.ndarray) -> tuple[float, float]:
  """Least-squares y = slope * pred + intercept on the fresh reference set (the reference trainer's
  online step). Degenerate references (constant predictions) give slope 0, intercept mean(y)."""
  x = np.asarray(pred_K, np.float64)
  y = np.asarray(labels_K, np.float64)
  var = x.var()
  if var < 1e-12:
    return 0.0, float(y.mean())
  slope = float(((x - x.mean()) * (y - y.mean())).mean() / var)
  return slope, float(y.mean() - slope * x.mean())


def predict_recalibrated(model: DifficultyEstimator, pq_NxH: np.ndarray, emb_NxD: np.ndarray,
                         ref_idx_K: np.ndarray, ref_labels_K: np.ndarray, chunk: int = 8192
                         ) -> tuple[np.ndarray, tuple[float, float]]:
  """DOTS's prediction of a round: every question against the references `ref_idx_K` (rows of
  `emb_NxD`, projected queries `pq_NxH`) with their labels, then the linear recalibration fitted on
  the references' own predictions, clipped to [0, 1]. Returns (predictions [N], (slope, intercept))."""
  raw = predict_from_projections(model, pq_NxH, emb_NxD[ref_idx_K], ref_labels_K, chunk)
  recal = linear_recalibration(raw[ref_idx_K], ref_labels_K)
  return np.clip(recal[0] * raw + recal[1], 0.0, 1.0).astype(np.float32), recal


# ----- persistence: estimator.json (architecture) + params.npz (leaves keyed by tree path) -----

def params_to_flat(model: nnx.Module) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def load_flat_params(model: nnx.Module, flat: dict[str, Any], *, where: str = "params") -> None:
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  new = []
  for path, leaf in leaves:
    key = jax.tree_util.keystr(path)
    if key not in flat:
      raise ValueError(f"{where}: missing estimator parameter {key}")
    arr = np.asarray(flat[key])
    if arr.shape != leaf.shape:
      raise ValueError(f"{where}: parameter {key} has shape {arr.shape}, expected {leaf.shape}")
    new.append(jnp.asarray(arr, leaf.dtype))
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, new))


def save_estimator(model: DifficultyEstimator, out_dir: str, extra: dict[str, Any] | None = None
                   ) -> None:
  """Writes params.npz, then estimator.json (by rename, last): a directory with estimator.json holds
  a complete estimator, which is what concurrent readers wait for."""
  os.makedirs(out_dir, exist_ok=True)
  marker = os.path.join(out_dir, "estimator.json")
  if os.path.exists(marker):  # a refit: the old marker must not vouch for half-written params
    os.remove(marker)
  fs.save_npz(os.path.join(out_dir, "params.npz"), **params_to_flat(model))
  fs.write_text(marker, json.dumps({"config": dataclasses.asdict(model.cfg), **(extra or {})},
                                   indent=2))


def load_estimator(path: str) -> DifficultyEstimator:
  cfg_path = os.path.join(path, "estimator.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"no estimator.json in {path!r} (selection.dots.estimator_path); train "
                            "one with `python -m dots_jax.difficulty.offline`")
  with open(cfg_path) as f:
    cfg = EstimatorConfig(**json.load(f)["config"])
  model = init_estimator(cfg)
  load_flat_params(model, fs.load_npz(os.path.join(path, "params.npz")),
                   where=os.path.join(path, "params.npz"))
  return model
