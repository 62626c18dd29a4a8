"""Hostile responses never make the reward raise, and each batch stays within its timeout budget."""

import time

import pytest
from conftest import reward_settings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dots_jax.rewards import score_batch

TIMEOUT_S = 0.5
WORKERS = 2

_PIECES = st.sampled_from(["{", "}", "\\boxed{", "\\fbox{", "\\frac{", "^{", "10", "9", "\\left(",
                           "\\right)", "$", "\\", "\\sqrt{", "\\text{", "x", ",", "\\infty", "=", "\\\\"])
HOSTILE = st.one_of(
    st.text(max_size=200),
    st.lists(_PIECES, max_size=60).map("".join),
    st.integers(1, 3000).map(lambda d: "\\boxed{" + "{" * d + "1" + "}" * d + "}"),  # deep nesting
    st.integers(2, 6).map(lambda d: "\\boxed{" + "10^{" * d + "10" + "}" * d + "}"),  # huge exponents
    st.integers(1, 2000).map(lambda d: "\\boxed{" + "\\left(" * d + "}"),  # unbalanced LaTeX
)


@pytest.fixture(autouse=True, scope="module")
def warm_pool():
  """Start the pool outside the timed calls (its one-off start imports sympy: seconds)."""
  scores, _ = score_batch(["\\boxed{x+1}"], ["1+x"], reward_settings(timeout_s=30, workers=WORKERS))
  assert scores.tolist() == [1.0]


def _bounded(responses, golds):
  t0 = time.perf_counter()
  scores, stats = score_batch(responses, golds, reward_settings(timeout_s=TIMEOUT_S, workers=WORKERS))
  elapsed = time.perf_counter() - t0
  assert scores.shape == (len(responses),) and set(scores.tolist()) <= {0.0, 1.0}
  assert stats.total == len(responses)
  # Worst case: every distinct answer times out (WORKERS at a time; bounded here as if one at a time),
  # plus slack for killing and forking replacements, and for linear scans of megabyte strings, on a
  # shared 2-core machine (a quadratic scan of a megabyte would take hours, not seconds).
  assert elapsed <= stats.verify_calls * TIMEOUT_S + 5.0, (elapsed, stats)
  return scores, stats


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(HOSTILE, min_size=1, max_size=4), st.sampled_from(["1", "\\frac{1}{2}", "(1,2)", "x^2"]))
def test_hostile_responses_never_raise(responses, gold):
  _bounded(responses, [gold] * len(responses))


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(HOSTILE)
def test_hostile_golds_never_raise(gold):
  _bounded(["\\boxed{1}", "\\boxed{" + gold + "}"], [gold, gold])


def test_megabyte_inputs():
  mb = 1 << 20
  responses = ["x" * mb + "\\boxed{7}",  # long reasoning, short answer
               "{" * mb,  # a megabyte of open braces, no box
               "\\boxed{" + "{" * mb,  # unbalanced megabyte box
               "\\boxed{" + "1+" * (mb // 2) + "1}"]  # megabyte answer
  scores, stats = _bounded(responses, ["7"] * 4)
  assert scores.tolist() == [1.0, 0.0, 0.0, 0.0]
  assert stats.counts == {"exact": 1, "no_box": 1, "unbalanced_box": 1, "too_long": 1}
