"""Rewards: `score_batch(responses, golds, RewardSettings) -> (scores, RewardStats)` and `score`.

kind "math": last `\\boxed{}`/`\\fbox{}` answer (or a GSM8K `#### n` line) checked against the gold with
presentation-only and numeric fast paths, then math-verify in a spawned worker pool with a per-answer
timeout. kind "reversed_digits": the synthetic task (see `reversed_digits.format_reversed`).
"""

from dots_jax.rewards.grader import KINDS, RewardSettings, RewardStats, score, score_batch
from dots_jax.rewards.reversed_digits import format_reversed, parse_reversed

__all__ = ["KINDS", "RewardSettings", "RewardStats", "score", "score_batch", "format_reversed", "parse_reversed"]
