"""Estimator quality: Pearson correlation between predicted and observed pass rates on held-out
questions (observed from selection.dots.fit.group >= 16 rollouts each by the initial policy).

  python -m dots_jax.difficulty --config=configs/tiny.py --quality

Compares the trained estimator (adapters + calibration head, then the online linear recalibration on
the reference set) with a raw-embedding baseline (softmax over cosine similarities of the frozen
embeddings, temperature picked on the training split, same linear recalibration). Each number is the
mean over `_REF_SETS` random reference sets of K = fit.ref_size training questions. Writes
evaluation.json (both numbers) to the pool directory; the last printed line is the trained
estimator's held-out Pearson.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dots_jax.difficulty.estimator import (DifficultyEstimator, init_estimator, linear_recalibration,
                                           predict_all)
from dots_jax.difficulty.offline import Pool, StageSettings

_REF_SETS = 5
_RAW_TEMPS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)

# predict(queries [Q, D], refs [K, D], ref labels [K]) -> predictions [Q]
PredictFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def estimator_predict(model: DifficultyEstimator) -> PredictFn:
  return lambda q, r, y: predict_all(model, q, r, y, chunk=4096)


def raw_predict(temp: float) -> PredictFn:
  """Attention over references by cosine similarity of the raw embeddings."""
  def predict(q, r, y):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-8)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True).clip(1e-8)
    s = qn @ rn.T / temp
    w = np.exp(s - s.max(axis=1, keepdims=True))
    return (w / w.sum(axis=1, keepdims=True)) @ y
  return predict


def pearson_with_refs(predict: PredictFn, emb: np.ndarray, labels: np.ndarray, ref_pool: np.ndarray,
                      queries: np.ndarray, ref_size: int, seed: int) -> tuple[float, float, float]:
  """Over `_REF_SETS` reference sets: mean and std of Pearson(recalibrated prediction, observed) on
  `queries`, and the mean Pearson on the queries solved at least once (the all-wrong mass of a weak
  policy inflates the first). References are predicted against themselves to fit the linear
  recalibration, as online."""
  rng = np.random.default_rng([seed, 0xE7A1])
  full, solved = [], []
  for _ in range(_REF_SETS):
    refs = rng.choice(ref_pool, ref_size, replace=False)
    q = queries[~np.isin(queries, refs)]
    pred = predict(np.concatenate([emb[q], emb[refs]]), emb[refs], labels[refs])
    slope, icpt = linear_recalibration(pred[len(q):], labels[refs])
    calibrated = slope * pred[:len(q)] + icpt
    full.append(_pearson(calibrated, labels[q]))
    some = labels[q] > 0
    solved.append(_pearson(calibrated[some], labels[q][some]))
  return float(np.mean(full)), float(np.std(full)), float(np.mean(solved))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  if len(x) < 2 or x.std() == 0 or y.std() == 0:
    return 0.0
  return float(np.corrcoef(x, y)[0, 1])


def evaluate_pool(stage: StageSettings, pool: Pool, model: DifficultyEstimator,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  f, seed = stage.fit, stage.seed
  train_idx = np.flatnonzero(~pool.heldout)
  test_idx = np.flatnonzero(pool.heldout)
  # The raw baseline's only knob, chosen on training questions (never the held-out ones).
  tuning = {t: pearson_with_refs(raw_predict(t), pool.emb, pool.labels, train_idx, train_idx,
                                 f.ref_size, seed)[0] for t in _RAW_TEMPS}
  best_t = max(tuning, key=lambda t: tuning[t])
  raw = pearson_with_refs(raw_predict(best_t), pool.emb, pool.labels, train_idx, test_idx,
                          f.ref_size, seed)
  untrained = pearson_with_refs(
      estimator_predict(init_estimator(stage.estimator_config(pool.emb.shape[1]), seed=seed)),
      pool.emb, pool.labels, train_idx, test_idx, f.ref_size, seed)
  trained = pearson_with_refs(estimator_predict(model), pool.emb, pool.labels, train_idx, test_idx,
                              f.ref_size, seed)
  report = {
      "heldout_questions": int(len(test_idx)), "train_questions": int(len(train_idx)),
      "rollouts_per_question": f.group, "ref_size": f.ref_size, "reference_sets": _REF_SETS,
      "observed_pass_rate_mean": float(pool.labels.mean()),
      "observed_pass_rate_std": float(pool.labels.std()),
      "pearson_trained": trained[0], "pearson_trained_std": trained[1],
      "pearson_trained_solved_only": trained[2],
      "pearson_raw_embedding": raw[0], "pearson_raw_embedding_std": raw[1],
      "pearson_raw_embedding_solved_only": raw[2],
      "raw_embedding_temperature": best_t, "pearson_untrained_adapters": untrained[0],
  }
  log(f"held-out questions {len(test_idx)}, observed pass rate {pool.labels.mean():.3f} "
      f"+- {pool.labels.std():.3f} (from {f.group} rollouts each)")
  log(f"raw-embedding baseline Pearson {raw[0]:.4f} +- {raw[1]:.4f} (temperature {best_t}); "
      f"on questions solved at least once {raw[2]:.4f}")
  log(f"untrained adapters Pearson {untrained[0]:.4f}")
  log(f"trained estimator Pearson {trained[0]:.4f} +- {trained[1]:.4f}; on questions solved at "
      f"least once {trained[2]:.4f}")
  return report
