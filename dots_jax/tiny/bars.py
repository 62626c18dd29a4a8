"""What the embedded testbed must show, as named bars: the base policy's, the runs' and the goals.

A faithful miniature of LLM RL on math needs the papers' condition (many zero-variance groups, both
all-correct and all-wrong, that grows as questions saturate), RL headroom, learning that generalises
from pool to held-out, difficulty that moves, and an estimator that keeps up. `python -m
dots_jax.tiny.spread` checks the base bars; `python -m dots_jax.compare` computes every bar and goal
from the runs it made and writes them to compare.json's "testbed" and "goals" blocks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Bar:
  """`value >= bar` (at_least) or `value <= bar`; a NaN value (not measured) fails."""

  name: str
  bar: float
  at_least: bool
  what: str

  def check(self, value: float) -> dict[str, Any]:
    value = float(value)
    ok = math.isfinite(value) and (value >= self.bar if self.at_least else value <= self.bar)
    return {"value": value, "bar": self.bar, "pass": bool(ok),
            "op": ">=" if self.at_least else "<=", "what": self.what}


BASE_BARS = (
    Bar("zero_var_start", 0.30, True, "expected zero-variance share of G-sample groups, base policy"),
    Bar("all_correct_start", 0.10, True, "expected all-correct share of groups, base policy"),
    Bar("all_wrong_start", 0.10, True, "expected all-wrong share of groups, base policy"),
    Bar("mid_pass_share", 0.25, True, "share of pool questions with pass rate in (0.1, 0.9)"),
    Bar("pool_heldout_overlap", 0.0, False, "questions in both the pool and the held-out split"),
)

RUN_BARS = (
    Bar("grpo_zero_var_end", 0.60, True,
        "uniform GRPO: zero-variance share of the batch over the last tenth of the steps"),
    Bar("grpo_gain", 0.15, True, "uniform GRPO: held-out accuracy gain over the run (mean of seeds)"),
    Bar("grpo_gain_over_seed_sd", 10.0, True,
        "uniform GRPO: gain / seed-to-seed standard deviation of the final accuracy"),
    Bar("grpo_late_gain_share", 0.15, True,
        "uniform GRPO: share of the gain made in the last third of the run (worst seed)"),
    Bar("heldout_vs_pool_gain", 0.8, True,
        "uniform GRPO: held-out gain / pool gain (no memorisation of the pool)"),
    Bar("moved_heldout_questions", 0.25, True,
        "uniform GRPO: share of held-out questions whose pass rate moved by >= 0.25"),
    Bar("dots_estimator_pearson", 0.6, True,
        "DOTS: Pearson r of the estimator's pool predictions with the exact pass rates, lowest "
        "over the evaluations (worst seed; the paper's held-out r is about 0.7)"),
    Bar("dots_signal_share_ratio", 1.3, True,
        "DOTS: expected share of reward-variance groups in its trained batches over a uniform "
        "batch's, over the run (worst seed)"),
)

# Go / no-go for a candidate base, from one uniform-GRPO run with exact evaluation
# (`python -m dots_jax.tiny.probe`).
PROBE_BARS = (
    Bar("structure_r2_min", 0.5, True, "share of pool pass-rate variance the questions' structure "
        "explains, lowest over the evaluations"),
    Bar("mid_band_min", 0.15, True, "share of pool questions with pass rate in (0.3, 0.7), lowest "
        "over the evaluations"),
    Bar("zero_var_persists_min", 0.8, True, "of the zero-variance questions at one evaluation, the "
        "expected share still zero-variance at the next (lowest pair)"),
    Bar("informative_persists_min", 0.5, True, "of the questions with reward variance at one "
        "evaluation, the expected share that still has it at the next (lowest pair)"),
    Bar("heldout_gain", 0.15, True, "uniform GRPO's held-out gain, first to last evaluation"),
    Bar("late_gain_share", 0.15, True, "share of that gain made in the last third of the run"),
)

# "Reaches" a baseline: its final accuracy on the same seed less one seed-to-seed standard error
# (`compare.analyze`); every goal on the worst seed.
GOALS = (
    Bar("dots_step_ratio", 0.70, False, "DOTS steps to reach GRPO's final accuracy / GRPO's"),
    Bar("dots_rr_rollout_ratio", 0.50, False,
        "DOTS+RR rollouts to reach GRPO's final accuracy / GRPO's"),
    Bar("dots_equal_step_margin", 0.0, True,
        "DOTS accuracy at GRPO's last step - (GRPO's final - one standard error)"),
    Bar("dots_rr_equal_step_margin", 0.0, True,
        "DOTS+RR accuracy at GRPO's last step - (GRPO's final - one standard error)"),
    Bar("dots_track_step_ratio", 0.75, False,
        "dots_track steps to reach GRPO's final accuracy / GRPO's"),
    Bar("dots_track_rr_rollout_ratio", 0.50, False,
        "dots_track_rr rollouts to reach GRPO's final accuracy / GRPO's"),
    Bar("dots_track_equal_step_margin", 0.0, True,
        "dots_track accuracy at GRPO's last step - (GRPO's final - one standard error)"),
    Bar("dots_track_rr_equal_step_margin", 0.0, True,
        "dots_track_rr accuracy at GRPO's last step - (GRPO's final - one standard error)"),
    Bar("dots_track_undrawn_pearson", 0.6, True,
        "dots_track: Pearson r with the exact pass rates over the questions not drawn in the last "
        "5 rounds, lowest over the evaluations"),
    Bar("dots_track_rr_undrawn_pearson", 0.6, True,
        "dots_track_rr: the same Pearson r over undrawn questions"),
    Bar("greso_rollouts_vs_ds", 0.50, False, "GRESO rollouts to reach DS's final accuracy / DS's"),
    Bar("greso_track_rollouts_vs_ds", 0.65, False,
        "greso_track rollouts to reach DS's final accuracy / DS's"),
)


# The same methods in the selection simulator at the papers' scale (`python -m dots_jax.sim`; time
# is modelled there, in rollout-equivalents), each on the worst seed.
SIM_GOALS = (
    Bar("dots_track_rr_time_ratio", 0.55, False,
        "dots_track_rr modelled time to reach GRPO's final accuracy / GRPO's (DOTS scale)"),
    Bar("greso_track_rollouts_vs_ds", 0.35, False,
        "greso_track rollouts to reach DS's final accuracy / DS's (GRESO scale)"),
)


def base_figures(pool_p_N: np.ndarray, group_size: int, overlap: int) -> dict[str, float]:
  """The base bars' values from the exact pass rates of the pool questions: a group of G samples of
  a question with pass rate p is all-correct with probability p^G and all-wrong with (1 - p)^G."""
  p = np.asarray(pool_p_N, np.float64)
  all_correct, all_wrong = p ** group_size, (1.0 - p) ** group_size
  return {"zero_var_start": float(np.mean(all_correct + all_wrong)),
          "all_correct_start": float(np.mean(all_correct)),
          "all_wrong_start": float(np.mean(all_wrong)),
          "mid_pass_share": float(np.mean((p > 0.1) & (p < 0.9))),
          "pool_heldout_overlap": float(overlap)}


def check_all(bars: tuple[Bar, ...], values: dict[str, float]) -> dict[str, dict[str, Any]]:
  """{name: {value, bar, pass, ...}} for every bar (a value not in `values` is NaN: fails)."""
  return {b.name: b.check(values.get(b.name, float("nan"))) for b in bars}


def report_lines(checked: dict[str, dict[str, Any]]) -> list[str]:
  """One line per bar, `name: value (op bar) PASS|FAIL  what`, then `N/M ... pass` is the caller's."""
  return [f"{name}: {c['value']:.4g} ({c['op']} {c['bar']:g}) {'PASS' if c['pass'] else 'FAIL'}"
          f"  {c['what']}" for name, c in checked.items()]
