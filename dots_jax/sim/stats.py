"""The published statistics the simulator is calibrated to, measured on its own output.

From a run's fresh training visits (`run.Visits`: each question's zero-variance flag at each visit,
in step order), pairs of consecutive visits of the same question (GRESO's "epochs": the epoch stream
visits a question once per pass):
  * zero_var_was_zero_var: of the visits with zero variance, the share whose previous visit had
    zero variance too (GRESO: over 90% on real runs);
  * zero_var_revives_next: of the visits with zero variance, the share whose next visit has reward
    variance (GRESO: about 20% of once-zero-variance prompts become informative again);
  * zero_var_revives_ever: of the questions with a zero-variance visit that has a later visit, the
    share with reward variance at some later visit;
  * informative_stays: of the visits with reward variance, the share whose next visit has it too.
"""

from __future__ import annotations

import numpy as np


def visit_pairs(qid: np.ndarray, step: np.ndarray, zero_var: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(question, zero-variance at a visit, at that question's next visit) for every consecutive pair
  of visits of the same question."""
  qid, step, zero_var = (np.asarray(a) for a in (qid, step, zero_var))
  order = np.lexsort((step, qid))
  q, z = qid[order], zero_var[order].astype(bool)
  same = q[1:] == q[:-1]
  return q[1:][same], z[:-1][same], z[1:][same]


def temporal_consistency(qid: np.ndarray, step: np.ndarray, zero_var: np.ndarray
                         ) -> dict[str, float]:
  """The module docstring's four shares (NaN where no pair qualifies)."""
  q, before, after = visit_pairs(qid, step, zero_var)
  share = lambda num, den: float(num.sum() / den.sum()) if den.sum() else float("nan")
  # A question revives "ever" when a pair ending in reward variance comes at or after a pair that
  # starts with zero variance, both the same question's (pairs are in (question, step) order).
  pos = np.arange(len(q))
  last_zero = np.maximum.accumulate(np.where(before, pos, -1)) if len(q) else pos
  revives = ~after & (last_zero >= 0) & (q[np.maximum(last_zero, 0)] == q)
  revived, had_zero = np.unique(q[revives]), np.unique(q[before])
  return {
      "zero_var_was_zero_var": share(before & after, after),
      "zero_var_revives_next": share(before & ~after, before),
      "zero_var_revives_ever": (float(len(revived) / len(had_zero)) if len(had_zero)
                                else float("nan")),
      "informative_stays": share(~before & ~after, ~before),
  }
