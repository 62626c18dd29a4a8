"""Evaluation arithmetic: avg@k, unbiased pass@k, standard errors, per-group accuracy, the DOTS
average, and a report's scalar view for training logs."""

import math
from collections.abc import Mapping, Sequence

import numpy as np

from dots_jax.data.sources import DOTS_AVERAGE_SETS


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
  if n - c < k:
    return 1.0
  # The product form avoids huge binomials.
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_ks(k: int) -> list[int]:
  """The k's reported for k samples: 1, powers of two below k, and k itself."""
  return sorted({1, k} | {2 ** i for i in range(1, max(1, int(math.log2(k)) + 1)) if 2 ** i <= k})


def summarize(scores_QxK: np.ndarray) -> dict:
  """Metrics of one benchmark from 0/1 scores, one row per question, one column per sample."""
  scores_QxK = np.asarray(scores_QxK, np.float64)
  if scores_QxK.ndim != 2 or scores_QxK.size == 0:
    raise ValueError(f"summarize expects a non-empty [questions, samples] array, got {scores_QxK.shape}")
  q, k = scores_QxK.shape
  per_question_Q = scores_QxK.mean(axis=1)
  correct_Q = scores_QxK.sum(axis=1).astype(int)
  out = {
      "num_questions": q,
      "k": k,
      f"avg@{k}": float(per_question_Q.mean()),
      # Standard error of the mean accuracy over questions (samples of one question are not independent).
      "stderr": float(per_question_Q.std(ddof=1) / math.sqrt(q)) if q > 1 else 0.0,
  }
  for kk in pass_ks(k):
    out[f"pass@{kk}"] = float(np.mean([pass_at_k(k, int(c), kk) for c in correct_Q]))
  return out


def summarize_exact(p_Q: np.ndarray, k: int) -> dict:
  """Metrics from each question's exact probability of a correct temperature-1 sample.

  avg@1 is the expected accuracy (the limit of avg@k over infinitely many samples); pass@k = 1 -
  (1 - p)^k is exact for k independent samples. The standard error is over questions only: there is
  no sampling noise left, so two policies evaluated on the same questions differ by exactly their
  difference in expected accuracy.
  """
  p_Q = np.asarray(p_Q, np.float64)
  if p_Q.ndim != 1 or p_Q.size == 0:
    raise ValueError(f"summarize_exact expects a non-empty [questions] array, got {p_Q.shape}")
  q = p_Q.size
  out = {"num_questions": q, "k": 1, "exact": True, "avg@1": float(p_Q.mean()),
         "stderr": float(p_Q.std(ddof=1) / math.sqrt(q)) if q > 1 else 0.0}
  for kk in pass_ks(k):
    out[f"pass@{kk}"] = float(np.mean(1.0 - (1.0 - p_Q) ** kk))
  return out


def group_accuracy(scores_QxK: np.ndarray, groups_Q: Sequence[str]) -> dict[str, dict[str, float]]:
  """Mean accuracy, question count and standard error per group label."""
  per_question_Q = np.asarray(scores_QxK, np.float64).mean(axis=1)
  labels_Q = np.asarray(groups_Q)
  out = {}
  for g in sorted(set(groups_Q)):
    acc = per_question_Q[labels_Q == g]
    out[g] = {"n": int(acc.size), "accuracy": float(acc.mean()),
              "stderr": float(acc.std(ddof=1) / math.sqrt(acc.size)) if acc.size > 1 else 0.0}
  return out


def dots_average(results: Mapping[str, dict]) -> float | None:
  """Mean avg@k over GSM8K, MATH500, Minerva Math and OlympiadBench; None unless all four ran."""
  if not all(name in results for name in DOTS_AVERAGE_SETS):
    return None
  return float(np.mean([results[n][f"avg@{results[n]['k']}"] for n in DOTS_AVERAGE_SETS]))


def flat_metrics(report: dict, prefix: str = "eval/") -> dict[str, float]:
  """Scalar view of a `run` report for training logs."""
  out = {}
  for name, m in report["sets"].items():
    for key in [f"avg@{m['k']}", "stderr"] + [f"pass@{kk}" for kk in pass_ks(m["k"])]:
      out[f"{prefix}{name}/{key}"] = m[key]
    for group, g in m.get("groups", {}).items():
      out[f"{prefix}{name}/group/{group}"] = g["accuracy"]
  if report["dots_average"] is not None:
    out[f"{prefix}dots_average"] = report["dots_average"]
  return out
