"""A difficulty model that tracks the policy: every question's pass rate as a posterior built from every
group a run pays for (reference groups and fresh training groups, each with its step).

In logit space (theta = logit p), question i's posterior combines two independent parts:
  * content: what its neighbours' recent labels say. The DOTS estimator's own kernel (the query
    adapter's projection of i against the reference adapter's projection of each labelled question,
    `difficulty.estimator`) weighs every label, each down-weighted by its age (half-life
    `half_life` steps); i's own labels are left out. A line fitted (by the same weights) on the
    labelled questions' leave-self-out predictions recalibrates it, with an intercept per embedding
    cluster shrunk towards that line (`shrink` labels' worth). Its variance is the cluster's
    recent residual variance (less the binomial noise of a G-sample label), inflated when the
    cluster has few recent labels: a family nobody has looked at lately is uncertain.
  * own history: a Kalman filter of i's own groups (k correct of G observed as logit((k + 1/2) /
    (G + 1)) with its binomial variance) whose variance grows by `drift` per step since i was last
    observed: a question seen lately is judged by its own groups, one not seen for long (or never)
    by its neighbours'.
The posterior is their precision-weighted sum. `signal` is what it says about reward variance: the
expected probability that a group of G samples has some (1 - p^G - (1 - p)^G), over the posterior.

It sees only what a run on a real pool sees: the question embeddings and the rewards of groups the
run rolled out. Everything is numpy (the projections are computed once: the adapters stay frozen).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dots_jax.difficulty import estimator as est

_EPS = 1e-3  # pass rates are clipped to [_EPS, 1 - _EPS] before a logit
_MAX_LOGIT_VAR = 25.0
# Gauss-Hermite (probabilists') nodes and weights for expectations over a normal posterior.
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(16)
_GH_W = _GH_W / _GH_W.sum()


@dataclasses.dataclass(frozen=True)
class TrackerSettings:
  """`config.selection.track` (config_base.py says what each does)."""

  half_life: float  # steps after which a label counts half in the content prediction
  drift: float  # logit variance a question's own estimate gains per step unobserved
  max_labels: int  # the newest labels kept (older ones weigh next to nothing anyway)
  clusters: int  # embedding clusters with their own recalibration intercept
  shrink: float  # labels' worth of evidence a cluster needs to move its intercept halfway
  content_floor: float  # least logit variance of a content prediction (model error)


def logit(p: np.ndarray) -> np.ndarray:
  p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
  return np.log(p / (1.0 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def observed_logit(k_Q: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
  """A group of k correct of G as a logit observation and its (binomial, delta-method) variance."""
  r = (np.asarray(k_Q, np.float64) + 0.5) / (group_size + 1.0)
  return np.log(r / (1.0 - r)), 1.0 / ((group_size + 1.0) * r * (1.0 - r))


def expected_signal(mean_N: np.ndarray, var_N: np.ndarray, group_size: int) -> np.ndarray:
  """E[1 - p^G - (1 - p)^G] for logit(p) ~ N(mean, var): the chance a group has reward variance."""
  theta = mean_N[:, None] + np.sqrt(np.maximum(var_N, 0.0))[:, None] * _GH_X[None, :]
  p = sigmoid(theta)
  return ((1.0 - p ** group_size - (1.0 - p) ** group_size) * _GH_W).sum(axis=1)


def expected_pass_rate(mean_N: np.ndarray, var_N: np.ndarray) -> np.ndarray:
  theta = mean_N[:, None] + np.sqrt(np.maximum(var_N, 0.0))[:, None] * _GH_X[None, :]
  return (sigmoid(theta) * _GH_W).sum(axis=1)


def expected_reward_variance(mean_N: np.ndarray, var_N: np.ndarray) -> np.ndarray:
  """E[p (1 - p)] for logit(p) ~ N(mean, var): the expected variance of one reward."""
  theta = mean_N[:, None] + np.sqrt(np.maximum(var_N, 0.0))[:, None] * _GH_X[None, :]
  p = sigmoid(theta)
  return (p * (1.0 - p) * _GH_W).sum(axis=1)


def kmeans(x_NxD: np.ndarray, k: int, seed: int, iters: int = 25) -> np.ndarray:
  """Cluster index of each row (Lloyd's algorithm from k-means++ seeds); deterministic per seed."""
  x = np.asarray(x_NxD, np.float64)
  n = x.shape[0]
  k = max(1, min(k, n))
  rng = np.random.default_rng([seed, 0xC1])
  centers = [x[rng.integers(n)]]
  d2 = ((x - centers[0]) ** 2).sum(1)
  for _ in range(1, k):
    probs = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
    centers.append(x[rng.choice(n, p=probs)])
    d2 = np.minimum(d2, ((x - centers[-1]) ** 2).sum(1))
  c = np.stack(centers)
  assign = np.zeros(n, np.int64)
  for _ in range(iters):
    dist = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None, :]
    new = dist.argmin(1)
    if _ and np.array_equal(new, assign):
      break
    assign = new
    for j in range(k):
      members = x[assign == j]
      if len(members):
        c[j] = members.mean(0)
  return assign


@dataclasses.dataclass
class Posterior:
  """Every question's posterior at one step: logit mean and variance, and the parts it came from."""

  mean_N: np.ndarray
  var_N: np.ndarray
  content_mean_N: np.ndarray  # logit
  content_var_N: np.ndarray
  group_size: int

  @property
  def pass_rate_N(self) -> np.ndarray:
    return expected_pass_rate(self.mean_N, self.var_N).astype(np.float32)

  @property
  def signal_N(self) -> np.ndarray:
    return expected_signal(self.mean_N, self.var_N, self.group_size)

  @property
  def reward_variance_N(self) -> np.ndarray:
    return expected_reward_variance(self.mean_N, self.var_N)

  @property
  def zero_var_N(self) -> np.ndarray:
    """The chance a group of G has no reward variance (GRESO's skip)."""
    return 1.0 - self.signal_N


class DifficultyTracker:
  """The model of the module docstring over a fixed pool: `observe` groups, `posterior(step)`."""

  def __init__(self, embeddings_NxD: np.ndarray, model: est.DifficultyEstimator,
               settings: TrackerSettings, *, group_size: int, seed: int, chunk: int = 8192):
    emb = np.asarray(embeddings_NxD, np.float32)
    self.settings = settings
    self.group_size = int(group_size)
    self.num_questions = emb.shape[0]
    # The estimator's kernel, projected once (the adapters stay frozen).
    self.query_NxH = est.project_queries(model, emb, chunk).astype(np.float32)
    self.ref_NxH = est.project_references(model, emb, chunk).astype(np.float32)
    self.kernel_scale = 1.0 / (np.sqrt(self.query_NxH.shape[1]) * model.cfg.tau)
    self.cluster_N = kmeans(emb, settings.clusters, seed)
    self.num_clusters = int(self.cluster_N.max()) + 1
    # Labels: question, observed pass rate, step; newest last.
    self.label_idx = np.zeros((0,), np.int64)
    self.label_y = np.zeros((0,), np.float32)
    self.label_step = np.zeros((0,), np.int64)
    # Own history (logit Kalman filter): mean, variance (inf = never seen), step of the last group.
    self.own_mean = np.zeros(self.num_questions, np.float64)
    self.own_var = np.full(self.num_questions, np.inf)
    self.own_step = np.zeros(self.num_questions, np.int64)

  # ----- evidence -----

  def observe(self, indices: np.ndarray, rewards_QxG: np.ndarray, step: int) -> None:
    """Groups rolled out at `step` (rewards 0/1, or a format score below 1 counted as wrong)."""
    idx = np.asarray(indices, np.int64)
    rewards = np.asarray(rewards_QxG, np.float64)
    if len(idx) == 0:
      return
    if rewards.shape != (len(idx), self.group_size):
      raise ValueError(f"tracker: rewards of shape {rewards.shape} for {len(idx)} groups of "
                       f"{self.group_size}")
    k = (rewards >= 1.0).sum(axis=1)
    self.label_idx = np.concatenate([self.label_idx, idx])[-self.settings.max_labels:]
    self.label_y = np.concatenate([self.label_y, (k / self.group_size).astype(np.float32)]
                                  )[-self.settings.max_labels:]
    self.label_step = np.concatenate([self.label_step, np.full(len(idx), int(step))]
                                     )[-self.settings.max_labels:]
    z, r = observed_logit(k, self.group_size)
    # A question seen twice in one call is filtered in order, as two groups.
    for i, zi, ri in zip(idx, z, r):
      prior = self.own_var[i] + self.settings.drift * max(0, step - self.own_step[i])
      if np.isinf(prior):
        self.own_mean[i], self.own_var[i] = zi, ri
      else:
        gain = prior / (prior + ri)
        self.own_mean[i] += gain * (zi - self.own_mean[i])
        self.own_var[i] = (1.0 - gain) * prior
      self.own_step[i] = step

  # ----- prediction -----

  def content(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(logit mean, logit variance) of every question from its neighbours' labels at `step`."""
    s = self.settings
    n, g = self.num_questions, self.group_size
    prior_var = 1.0 / (4.0 * 0.25 ** 2)  # no label anywhere: p = 1/2, logit sd 2
    if len(self.label_idx) == 0:
      return np.zeros(n), np.full(n, prior_var)
    age = np.maximum(step - self.label_step, 0).astype(np.float64)
    w_L = 0.5 ** (age / s.half_life)
    keep = w_L > 1e-4
    idx, y, w_L = self.label_idx[keep], self.label_y[keep].astype(np.float64), w_L[keep]
    if len(idx) == 0:
      return np.zeros(n), np.full(n, prior_var)
    scores_NxL = (self.query_NxH @ self.ref_NxH[idx].T).astype(np.float64) * self.kernel_scale
    scores_NxL += np.log(w_L)[None, :]
    scores_NxL[idx, np.arange(len(idx))] = -np.inf  # a question's own labels are its history's
    scores_NxL -= scores_NxL.max(axis=1, keepdims=True)
    a_NxL = np.exp(scores_NxL)
    a_NxL /= a_NxL.sum(axis=1, keepdims=True)
    base_N = a_NxL @ y
    base_N = np.where(np.isfinite(base_N), base_N, (w_L * y).sum() / w_L.sum())
    # Recalibration on the labelled questions' leave-self-out predictions, weighted by recency.
    x = base_N[idx]
    slope, intercept = _weighted_line(x, y, w_L)
    fitted = slope * x + intercept
    resid = y - fitted
    noise = y * (1.0 - y) / max(g - 1, 1)  # a G-sample label's own variance
    c_L = self.cluster_N[idx]
    m = self.num_clusters
    mass_C = np.bincount(c_L, w_L, minlength=m)
    shift_C = np.bincount(c_L, w_L * resid, minlength=m) / (mass_C + s.shrink)
    glob_var = max(float((w_L * (resid ** 2 - noise)).sum() / w_L.sum()), 0.0)
    var_C = (np.bincount(c_L, w_L * (resid - shift_C[c_L]) ** 2 - w_L * noise, minlength=m)
             + s.shrink * glob_var) / (mass_C + s.shrink)
    # Few recent labels in a cluster: its shift is a guess, so its prediction is uncertain.
    var_C = np.maximum(var_C, 0.0) + 0.25 * s.shrink / (mass_C + s.shrink)
    c_N = self.cluster_N
    p_N = np.clip(slope * base_N + intercept + shift_C[c_N], _EPS, 1.0 - _EPS)
    var_logit = var_C[c_N] / (p_N * (1.0 - p_N)) ** 2
    return logit(p_N), np.clip(var_logit, s.content_floor, _MAX_LOGIT_VAR)

  def posterior(self, step: int) -> Posterior:
    c_mean, c_var = self.content(step)
    own_var = self.own_var + self.settings.drift * np.maximum(step - self.own_step, 0)
    seen = np.isfinite(own_var)
    prec = 1.0 / c_var + np.where(seen, 1.0 / np.where(seen, own_var, 1.0), 0.0)
    mean = (c_mean / c_var + np.where(seen, self.own_mean / np.where(seen, own_var, 1.0), 0.0)
            ) / prec
    return Posterior(mean, 1.0 / prec, c_mean, c_var, self.group_size)

  # ----- checkpointing -----

  def state_dict(self) -> dict[str, np.ndarray]:
    return {"label_idx": self.label_idx.copy(), "label_y": self.label_y.copy(),
            "label_step": self.label_step.copy(), "own_mean": self.own_mean.copy(),
            "own_var": self.own_var.copy(), "own_step": self.own_step.copy()}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    n = self.num_questions
    for name, dtype in (("own_mean", np.float64), ("own_var", np.float64), ("own_step", np.int64)):
      arr = np.array(state[name], dtype)
      if arr.shape != (n,):
        raise ValueError(f"tracker state {name} has shape {arr.shape}, the pool has {n} questions")
      setattr(self, name, arr)
    self.label_idx = np.array(state["label_idx"], np.int64)
    self.label_y = np.array(state["label_y"], np.float32)
    self.label_step = np.array(state["label_step"], np.int64)


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
  """Weighted least-squares y = slope * x + intercept (slope 0 on constant x)."""
  sw = w.sum()
  mx, my = (w * x).sum() / sw, (w * y).sum() / sw
  var = (w * (x - mx) ** 2).sum() / sw
  if var < 1e-12:
    return 0.0, float(my)
  slope = float((w * (x - mx) * (y - my)).sum() / sw / var)
  return slope, float(my - slope * mx)
