"""Go / no-go for a testbed base, from one uniform-GRPO run on it (issue 34's bars).

  python -m dots_jax.tiny.probe --workdir=/tmp/probe/default_grpo_s0

Reads the run's exact per-question pool pass rates at every evaluation (<workdir>/pass_rates/, set
"synthetic") and its held-out curve (metrics.jsonl), and measures what lets prediction and history
find informative questions before they are learned:
  * structure R^2: the share of pass-rate variance explained by each question's structure
    (operation, digit counts, carries: `synthetic.problem_structure`) -- difficulty a property of
    the question (bar: >= 0.5 at every evaluation);
  * mid-band share: questions with pass rate in (0.3, 0.7) (bar: >= 0.15 at every evaluation);
  * consecutive-evaluation persistence, from the expected zero-variance probability of a G-sample
    group z = p^G + (1 - p)^G: of the questions zero-variance at one evaluation, the share still so
    at the next, sum z_t z_t+1 / sum z_t (bar: >= 0.8 for every pair; GRESO measured > 0.9 on real
    runs); of those with reward variance, the share that still has it (bar: >= 0.5);
  * the held-out gain and the share of it made in the last third of the run (bars: >= 0.15 and
    >= 0.15).
Prints one row per evaluation and a verdict line; writes <workdir>/probe.json.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from dots_jax import compare, fs
from dots_jax.data.dataset import load_dataset
from dots_jax.data.synthetic import problem_structure
from dots_jax.rl.batch import signal_share
from dots_jax.tiny.bars import PROBE_BARS, check_all, report_lines
from dots_jax.tiny.tracking import POOL_SET, group_r2, pass_rate_steps, pool_pass_rates
from dots_jax.run.settings import data_settings
from dots_jax.run.workdir import read_config

MID_BAND = (0.3, 0.7)

@dataclasses.dataclass
class EvalFigures:
  step: int
  mean_pass_rate: float
  structure_r2: float
  mid_band: float
  zero_var_persists: float  # to the next evaluation; NaN at the last
  informative_persists: float


def mid_band_share(p_N: np.ndarray) -> float:
  p = np.asarray(p_N, np.float64)
  return float(np.mean((p > MID_BAND[0]) & (p < MID_BAND[1])))


def persistence(p_now: np.ndarray, p_next: np.ndarray, group_size: int) -> tuple[float, float]:
  """(zero-variance -> zero-variance, reward variance -> reward variance) expected shares between
  two evaluations of the same questions, each group's draws independent given its pass rate."""
  z0 = 1.0 - signal_share(p_now, group_size)
  z1 = 1.0 - signal_share(p_next, group_size)
  zz = float((z0 * z1).sum() / z0.sum()) if z0.sum() > 0 else float("nan")
  ii = float(((1 - z0) * (1 - z1)).sum() / (1 - z0).sum()) if (1 - z0).sum() > 0 else float("nan")
  return zz, ii


def eval_figures(rates: dict[int, np.ndarray], structure: list[str], group_size: int
                 ) -> list[EvalFigures]:
  steps = sorted(rates)
  out = []
  for i, step in enumerate(steps):
    p = rates[step]
    zz, ii = (persistence(p, rates[steps[i + 1]], group_size) if i + 1 < len(steps)
              else (float("nan"), float("nan")))
    out.append(EvalFigures(step, float(p.mean()), group_r2(p, structure), mid_band_share(p), zz,
                           ii))
  return out


def verdict(figures: list[EvalFigures], curve: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
  """Every bar of `bars.PROBE_BARS` checked on a run's figures and held-out curve."""
  pairs = [f for f in figures if np.isfinite(f.zero_var_persists)]
  gain = float(curve["accuracy"][-1] - curve["accuracy"][0])
  values = {
      "structure_r2_min": min(f.structure_r2 for f in figures),
      "mid_band_min": min(f.mid_band for f in figures),
      "zero_var_persists_min": min((f.zero_var_persists for f in pairs), default=float("nan")),
      "informative_persists_min": min((f.informative_persists for f in pairs), default=float("nan")),
      "heldout_gain": gain,
      "late_gain_share": compare.late_gain_share(curve),
  }
  return check_all(PROBE_BARS, values)


def analyze(workdir: str) -> dict[str, Any]:
  config = read_config(workdir)
  evaluated = load_dataset(data_settings(config.data), POOL_SET)
  n = min(len(evaluated), config.eval.max_questions or len(evaluated))
  structure = [problem_structure(evaluated[i].problem) for i in range(n)]
  rates = {step: pool_pass_rates(workdir, step, n) for step in pass_rate_steps(workdir)}
  figures = eval_figures(rates, structure, int(config.sampling.group_size))
  checked = verdict(figures, compare.read_curve(workdir))
  return {"evaluations": [dataclasses.asdict(f) for f in figures], "bars": checked}


def main(argv: list[str]) -> None:
  from absl import flags
  del argv
  workdir = flags.FLAGS.workdir
  result = analyze(workdir)
  print("step | mean p | structure R^2 | in (0.3, 0.7) | zero-var -> zero-var | informative -> "
        "informative")
  for f in result["evaluations"]:
    print(f"{f['step']} | {f['mean_pass_rate']:.3f} | {f['structure_r2']:.2f} | {f['mid_band']:.2f} | "
          f"{f['zero_var_persists']:.2f} | {f['informative_persists']:.2f}")
  for line in report_lines(result["bars"]):
    print(line)
  passed = sum(c["pass"] for c in result["bars"].values())
  print(f"{'GO' if passed == len(result['bars']) else 'NO-GO'}: {passed}/{len(result['bars'])} "
        "probe bars pass")
  fs.write_text(fs.join(workdir, "probe.json"), json.dumps(result, indent=1, allow_nan=True))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "a uniform-GRPO run with exact evaluation", required=True)
  app.run(main)
