"""Batch reward scoring: extraction and fast paths in the caller, math-verify in a timed worker pool.

Every response gets exactly one reason in `RewardStats.counts`.
Scoring 1: "exact" (equal after presentation-only normalisation), "numeric" (equal numbers or simple
fractions: "2,125" vs "2125", "\\frac{1}{2}" vs "0.5"), "verified" (math-verify says equal).
Scoring 0: "no_box", "unbalanced_box", "too_long" (extracted answer longer than max_answer_chars),
"empty_answer", "mismatch" (math-verify, or the fast path for unequal integers/fractions),
"parse_fail" (math-verify cannot read the answer), "parse_fail_gold" (nor the gold), "timeout",
"worker_crash", "error" (an exception inside math-verify), "bad_input" (a non-string response or gold).
Scoring never raises on any response text.
"""

import collections
import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from dots_jax.rewards import extract, normalize, reversed_digits, verify_pool

KINDS = ("math", "reversed_digits")
CORRECT_REASONS = ("exact", "numeric", "verified")
# No answer in the asked-for format: these score 0 even with a format score.
NO_ANSWER_REASONS = ("no_box", "unbalanced_box", "bad_input")


@dataclasses.dataclass
class RewardStats:
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  seconds: float = 0.0
  verify_calls: int = 0  # distinct (gold, answer) pairs sent to math-verify
  workers_replaced: int = 0

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def merge(self, other: "RewardStats") -> "RewardStats":
    return RewardStats(self.counts + other.counts, self.seconds + other.seconds,
                       self.verify_calls + other.verify_calls, self.workers_replaced + other.workers_replaced)

  def as_dict(self, prefix: str = "reward/") -> dict[str, float]:
    out = {f"{prefix}{k}": float(v) for k, v in sorted(self.counts.items())}
    out[f"{prefix}seconds"] = self.seconds
    out[f"{prefix}verify_calls"] = float(self.verify_calls)
    out[f"{prefix}workers_replaced"] = float(self.workers_replaced)
    return out


@dataclasses.dataclass(frozen=True)
class RewardSettings:
  """`config.reward`: the answer format (`kind`: "math" | "reversed_digits"), the bound on one
  math-verify call, its worker processes (0 = in this process, without a hard timeout: see
  `verify_pool.run_inline`), the longest answer parsed, and the score of a wrong answer in the
  asked-for format."""

  kind: str
  timeout_s: float
  workers: int
  max_answer_chars: int
  format_score: float

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown reward kind {self.kind!r} (config.reward.kind); expected one of "
                       f"{KINDS}")
    if not 0.0 <= self.format_score < 1.0:
      raise ValueError(f"config.reward.format_score must be in [0, 1), got {self.format_score}")


def _score_reversed(response: str, gold: str) -> str:
  if not reversed_digits.is_canonical_int(gold.strip()):
    return "bad_input"
  stated = reversed_digits.parse_reversed(response)
  if stated is None:
    return "parse_fail"
  return "exact" if stated == gold.strip() else "mismatch"


def _triage_math(response: str, gold: str, max_answer_chars: int) -> tuple[str, str | None]:
  """(reason, answer): a final reason, or ("", answer) when math-verify must decide."""
  answer, reason = extract.final_answer(response)
  if answer is None:
    return reason, None
  if len(answer) > max_answer_chars:
    return "too_long", None
  normalized = normalize.normalize(answer)
  if not normalized:
    return "empty_answer", None
  if normalized == normalize.normalize(gold):
    return "exact", None
  gold_value, answer_value = normalize.as_rational(gold), normalize.as_rational(answer)
  if gold_value is not None and answer_value is not None:
    if gold_value[0] == answer_value[0]:
      return "numeric", None
    if not (gold_value[1] or answer_value[1]):
      return "mismatch", None
    # Unequal decimals go to math-verify, which compares them after rounding (0.333333 vs 1/3).
  return "", answer


def score_batch(responses: Sequence[str], golds: Sequence[str], settings: RewardSettings
                ) -> tuple[np.ndarray, RewardStats]:
  """Scores responses against gold answers: (float32 scores, RewardStats).

  A correct answer scores 1, a response without an answer in the asked-for format 0 (the reasons
  in NO_ANSWER_REASONS, and "parse_fail" for reversed_digits), any other wrong answer
  `settings.format_score` (GRESO's reward uses 0.1).
  """
  if len(responses) != len(golds):
    raise ValueError(f"score_batch got {len(responses)} responses but {len(golds)} golds")
  kind, format_score = settings.kind, settings.format_score
  t0 = time.perf_counter()
  stats = RewardStats()
  reasons = [""] * len(responses)
  pending: dict[tuple[str, str], list[int]] = {}  # identical (gold, answer) pairs are verified once
  for i, (response, gold) in enumerate(zip(responses, golds)):
    if not isinstance(response, str) or not isinstance(gold, str):
      reasons[i] = "bad_input"
    elif kind == "reversed_digits":
      reasons[i] = _score_reversed(response, gold)
    else:
      reasons[i], answer = _triage_math(response, gold, settings.max_answer_chars)
      if answer is not None:
        pending.setdefault((gold, answer), []).append(i)
  if pending:
    jobs = list(pending)
    if settings.workers == 0:
      outcomes = verify_pool.run_inline(jobs, settings.timeout_s)
    else:
      workers_pool = verify_pool.get_pool(settings.workers)
      replaced_before = workers_pool.replaced
      outcomes = workers_pool.run(jobs, settings.timeout_s)
      stats.workers_replaced = workers_pool.replaced - replaced_before
    for job, outcome in zip(jobs, outcomes):
      for i in pending[job]:
        reasons[i] = outcome.split(":")[0]
    stats.verify_calls = len(jobs)
  stats.counts.update(reasons)
  no_answer = NO_ANSWER_REASONS + (("parse_fail",) if kind == "reversed_digits" else ())
  scores = np.array([1.0 if r in CORRECT_REASONS else 0.0 if r in no_answer else format_score
                     for r in reasons], np.float32)
  stats.seconds = time.perf_counter() - t0
  return scores, stats


def score(response: str, gold: str, settings: RewardSettings) -> float:
  """1.0 if the answer of `response` equals `gold` under `settings`, else 0.0 (or the format score)."""
  scores, _ = score_batch([response], [gold], settings)
  return float(scores[0])
