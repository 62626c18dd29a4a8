"""The selection methods at a config's scale, on the pass-rate simulator (CPU, minutes).

  python -m dots_jax.sim --config=configs/qwen1p5b_math.py --methods=grpo,dots,dots_rr \
      --seeds=0,1,2 --out=/tmp/sim_dots
  python -m dots_jax.sim --config=configs/qwen1p5b_greso.py --methods=grpo,ds,greso \
      --seeds=0,1,2 --out=/tmp/sim_greso
  python -m dots_jax.sim --config=configs/qwen1p5b_math.py --methods=grpo,dots_rr \
      --sweep=selection.dots.tau=0.001+0.05+0.2 --out=/tmp/sim_tau   # a sensitivity table

Every (method, seed) runs the config's own strategy, replay buffer and DOTS estimator over the
simulated pass rates of the simulator's own settings (`dots_jax.sim.settings`, --sim.KEY=VALUE;
sim.questions 0 = the config's training set's size), at the config's batch sizes and step count;
any --config.* override applies (e.g. --config.total_steps=30). Written to --out:
  * compare.json / compare.md / curves.png: `dots_jax.compare`'s report (steps, rollouts and
    modelled time to reach uniform GRPO's final held-out accuracy, GRESO vs dynamic sampling,
    zero-variance share, the estimator's error, distinct questions); time is in rollout-equivalents
    (`sim.train_cost`), not seconds;
  * calibration: each statistic the model is calibrated to, its source and the measured value.
With --sweep=KEY=V1+V2+...: the report for each value, then one table of the methods' ratios by value
(sweep.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the estimator's few programs need no accelerator

import copy
import json
import sys
import time
from typing import Any, Callable

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dots_jax import compare, fs
from dots_jax.config_common import apply_config_arg
from dots_jax.methods import METHODS, get_method
from dots_jax.sim.run import Fitted, fit_dots_estimator, make_world, simulate
from dots_jax.sim.settings import sim_config, training_set_size
from dots_jax.sim.stats import temporal_consistency
from dots_jax.tiny import bars


# Each calibration statistic: (name in the report, published value, source).
PUBLISHED = (
    ("heldout_pearson_observed", "about 0.7",
     "DOTS (arXiv 2506.05316): the estimator's Pearson on held-out questions"),
    ("zero_var_was_zero_var", "> 0.9",
     "GRESO (arXiv 2506.02177): zero-variance prompts that were zero-variance the epoch before"),
    ("zero_var_revives_next", "about 0.2",
     "GRESO: once-zero-variance prompts that become informative again"),
    ("zero_var_first", "rises over training",
     "both papers: the share of zero-variance groups in uniform GRPO's batches, first 10% of steps"),
    ("zero_var_last", "rises over training", "the same, last 10% of steps"),
)


def calibration(results: dict[str, dict[int, Any]], seeds: list[int],
                fitted: Callable[[int], Fitted]) -> dict[str, dict[str, Any]]:
  """Each statistic of `PUBLISHED` (and the rest of `stats.temporal_consistency`), mean over seeds:
  the visit statistics on dynamic sampling's runs where they ran (GRESO measured its statistics
  on such training), else uniform GRPO's; the zero-variance share of uniform GRPO's batches; the
  offline estimator fit's held-out Pearson."""
  visited = compare.DS if compare.DS in results else compare.BASELINE
  measured: dict[str, list[float]] = {}
  for seed in seeds:
    v = results[visited][seed].visits
    for k, x in temporal_consistency(v.qid, v.step, v.zero_var).items():
      measured.setdefault(k, []).append(x)
    for part in ("first", "last"):
      measured.setdefault(f"zero_var_{part}", []).append(
          compare.zero_var_share(results[compare.BASELINE][seed].curve, part))
    fit = fitted(seed)[1]  # the DOTS runs' own fit; made here when no DOTS method ran
    for k in ("heldout_pearson_observed", "heldout_pearson_exact"):
      measured.setdefault(k, []).append(fit[k])
  source = {name: (value, src) for name, value, src in PUBLISHED}
  return {k: {"measured": float(np.nanmean(v)), "published": source.get(k, ("-", "-"))[0],
              "source": source.get(k, ("-", "not published: reported for the reader"))[1],
              "runs": visited if k in _VISIT_STATS else compare.BASELINE}
          for k, v in measured.items()}


_VISIT_STATS = ("zero_var_was_zero_var", "zero_var_revives_next", "zero_var_revives_ever",
                "informative_stays")


def calibration_table(cal: dict[str, dict[str, Any]]) -> str:
  lines = ["| statistic | published | source | simulator | measured on |", "|---|---|---|---|---|"]
  lines += [f"| {k} | {c['published']} | {c['source']} | {c['measured']:.3f} | "
            f"{c['runs'] if not k.startswith('heldout_pearson') else 'offline fit'} |"
            for k, c in cal.items()]
  return "\n".join(lines)


def report(config: Any, sim: Any, methods: list[str], seeds: list[int], out: str) -> dict[str, Any]:
  """Runs every (method, seed), writes the report into `out`; returns compare.json's content."""
  results: dict[str, dict[int, Any]] = {m: {} for m in methods}
  seconds: dict[str, float] = {}
  fits: dict[int, Fitted] = {}

  def fitted(seed: int) -> Fitted:
    """The offline estimator fit on seed's world, once for every method of the report."""
    if seed not in fits:
      c = copy.deepcopy(config)
      c.seed = seed
      fits[seed] = fit_dots_estimator(c, make_world(sim, seed), seed)
    return fits[seed]

  for method in methods:
    t0 = time.perf_counter()
    for seed in seeds:
      c = copy.deepcopy(config)
      c.method, c.seed = method, seed
      results[method][seed] = simulate(
          c, sim, fitted=fitted(seed) if get_method(method).needs_estimator else None)
    seconds[method] = time.perf_counter() - t0
    print(f"{method}: {len(seeds)} seeds in {seconds[method]:.1f} s", flush=True)
  curves = {m: {s: r.curve for s, r in by_seed.items()} for m, by_seed in results.items()}
  result = compare.analyze(curves, config.sampling.group_size, testbed=False,
                           seeds_share_a_pool=False)
  result["goals"] = sim_goals(result)
  cal = calibration(results, seeds, fitted)
  result.update(calibration=cal, seconds=seconds, methods=methods, seeds=seeds,
                estimator={m: {str(s): r.estimator for s, r in by.items()}
                           for m, by in results.items() if get_method(m).needs_estimator})
  fs.makedirs(out)
  fs.write_text(fs.join(out, "compare.json"), json.dumps(result, indent=1, allow_nan=True))
  table = (compare.markdown_table(result).replace("seconds to target", "time to target")
           .replace("rollout / update s per step", "rollout / update time per step")
           .replace("rollouts (seconds) vs DS", "rollouts (time) vs DS")
           + "\nTime: modelled, in rollout-equivalents (a trained sequence costs "
           f"sim.train_cost = {sim.train_cost}); held-out accuracy is the exact mean "
           "pass rate of the simulated held-out questions.\n\nCalibration (means over the "
           "seeds):\n\n" + calibration_table(cal))
  fs.write_text(fs.join(out, "compare.md"), table + "\n")
  compare.plot_curves(curves, fs.join(out, "curves.png"))
  print(table)
  print(f"wrote {out}/compare.json, compare.md, curves.png")
  return result


def sim_goals(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """`bars.SIM_GOALS` from a simulated comparison, each on the worst seed; only the goals whose
  methods ran (a DOTS-only comparison has no GRESO goal to fail)."""
  runs = result["runs"]
  worst = lambda method, key: (float(np.max([r.get(key, np.nan) for r in runs[method].values()]))
                               if method in runs else float("nan"))
  values = {"dots_track_rr_time_ratio": worst("dots_track_rr", "time_ratio"),
            "greso_track_rollouts_vs_ds": worst("greso_track", "rollouts_vs_ds")}
  goals = bars.check_all(bars.SIM_GOALS, values)
  return {k: g for k, g in goals.items() if np.isfinite(g["value"])}


def sweep_table(key: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
  """One row per (value, method): final accuracy and the ratios against GRPO (and DS, where it
  ran); columns no method has are left out."""
  cols = [c for c in ("final_accuracy", "step_ratio", "rollout_ratio", "time_ratio",
                      "rollouts_vs_ds", "seconds_vs_ds")
          if any(np.isfinite(m.get(c, np.nan)) for _, r in rows for m in r["summary"].values())]
  lines = [f"| {key} | method | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
  for value, result in rows:
    for method, m in result["summary"].items():
      cells = [f"{m.get(c, float('nan')):.3f}" for c in cols]
      lines.append(f"| {value} | {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _check(sim: Any, methods: list[str], sweep: str) -> None:
  """Flags and the simulator's settings checked before anything runs: one line naming what is
  wrong."""
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"--methods: unknown {unknown}; known: {sorted(METHODS)}")
  if compare.BASELINE not in methods:
    raise ValueError(f"--methods must include the baseline {compare.BASELINE!r}")
  if sweep and "=" not in sweep:
    raise ValueError(f"--sweep={sweep!r}: expected KEY=V1+V2+..., e.g. selection.dots.tau=0.001+0.05")
  make_world(sim, 0)  # the simulator's values


def main(argv: list[str]) -> None:
  del argv
  config, sim = _CONFIG.value, _SIM.value
  methods = [m for m in _METHODS.value.split(",") if m]
  seeds = [int(s) for s in _SEEDS.value.split(",") if s]
  try:
    if not sim.questions:
      sim.questions = training_set_size(config.data.train, config.data.synthetic.train_size)
      if not sim.questions:
        raise ValueError(f"--sim.questions: the size of data.train={config.data.train!r} is not "
                         "known without reading it; pass its row count")
    _check(sim, methods, _SWEEP.value)
    if _SWEEP.value:
      key, values = _SWEEP.value.split("=", 1)
      # A sim.* key sweeps the simulator's own settings, any other the training config.
      settings = [(v, _swept(config, sim, key, v)) for v in filter(None, values.split("+"))]
  except ValueError as e:  # ConfigError included
    sys.exit(f"dots_jax.sim: {e}")
  if not _SWEEP.value:
    report(config, sim, methods, seeds, _OUT.value)
    return
  rows = []
  for value, (c, w) in settings:
    print(f"== {key}={value}", flush=True)
    rows.append((value, report(c, w, methods, seeds, fs.join(_OUT.value, f"{key}={value}"))))
  table = sweep_table(key, rows)
  fs.write_text(fs.join(_OUT.value, "sweep.md"), table + "\n")
  print(table)
  print(f"wrote {_OUT.value}/sweep.md")


def _swept(config: Any, sim: Any, key: str, value: str) -> tuple[Any, Any]:
  """(config, sim) with `key` set to `value`: a sim.* key in the simulator's settings."""
  if key.startswith("sim."):
    return config, apply_config_arg(copy.deepcopy(sim), f"{key[len('sim.'):]}={value}")
  return apply_config_arg(copy.deepcopy(config), f"{key}={value}"), sim


if __name__ == "__main__":  # flags only when run: tests import this module beside dots_jax.main
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/qwen1p5b_math.py")
  _SIM = config_flags.DEFINE_config_dict("sim", sim_config(), "the simulator's own settings "
                                         "(dots_jax.sim.settings), e.g. --sim.drift_sd=0.3")
  _METHODS = flags.DEFINE_string("methods", "grpo,dots,dots_rr", "methods to simulate (grpo first)")
  _SEEDS = flags.DEFINE_string("seeds", "0,1,2", "seeds: each its own world and rollout draws")
  _OUT = flags.DEFINE_string("out", "/tmp/dots_jax_sim", "output directory")
  _SWEEP = flags.DEFINE_string("sweep", "", "KEY=V1+V2+...: the report for each value of a config key")
  app.run(main)
