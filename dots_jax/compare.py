"""Method comparison at equal seed and budget: time and rollouts to reach uniform GRPO's final accuracy.

  python -m dots_jax.compare --config=configs/tiny.py --methods=grpo,dots,dots_rr,greso,ds \
      --seeds=0,1,2 --workdir=/tmp/compare [--config.total_steps=300]

Each (method, seed) runs `python -m dots_jax.main` in its own process (fresh compilation caches, so
wall-clock is comparable; an interrupted comparison resumes every run from its checkpoints), in
<workdir>/<method>_s<seed>. Then, from every run's metrics.jsonl (held-out accuracy at each
evaluation with the training seconds and rollouts spent so far, evaluation time excluded):
  * curves.png: held-out accuracy vs steps, vs rollouts generated and vs wall-clock seconds;
  * compare.json: per method and seed the final accuracy (with standard error), the steps, seconds
    and rollouts to first reach the target (GRPO's final accuracy for the same seed) and their ratio
    to what GRPO itself needed, the rollout/update split of a step, the zero-variance share of the
    trained batch, the estimator's tracking error and the distinct questions trained on; and the
    "testbed" and "goals" blocks (`dots_jax.tiny.bars`), each bar computed from the runs' metrics and
    per-question pass rates (<run>/pass_rates/<step>.npz, exact evaluation);
  * compare.md: the table (mean over seeds) with the saving in percent, the DOTS paper's headline
    metric, plus, when dynamic sampling ran, GRESO's headline: rollouts to reach dynamic sampling's
    final accuracy (same seed) relative to what dynamic sampling itself needed.
`--analyze_only` skips the runs and re-reads existing workdirs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np

from dots_jax import fs
from dots_jax.run.curves import POOL_SET, plot_curves, read_curve
from dots_jax.tiny import bars

BASELINE = "grpo"
DS = "ds"  # dynamic sampling: GRESO's baseline
HELDOUT_SET = "synthetic_heldout"
MOVED = 0.25  # a held-out question "moved" when its pass rate changed by at least this much


def zero_var_share(curve: dict[str, np.ndarray], part: str) -> float:
  """Mean zero-variance share of the trained groups over the first or last tenth of the logged steps
  (for uniform GRPO: how much of the batch teaches nothing, at the start and as skills saturate)."""
  zv = curve["zero_var"]
  if zv.size == 0:
    return float("nan")
  n = max(1, zv.size // 10)
  return float(zv[:n].mean() if part == "first" else zv[-n:].mean())


def estimator_pearson_min(curve: dict[str, np.ndarray]) -> float:
  """The lowest Pearson r of a source's pool predictions with the exact pass rates at the run's
  evaluation steps (`selection/pred_pearson_exact`); NaN where nothing was predicted."""
  r = curve["pred_pearson_exact"]
  at = np.isin(curve["train_step"], curve["step"]) & np.isfinite(r)
  return float(r[at].min()) if at.any() else float("nan")


def signal_share_ratio(curve: dict[str, np.ndarray]) -> float:
  """The trained batches' expected share of groups with reward variance over a uniform batch's,
  each averaged over the run (both from exact pass rates: `driver.exact_figures`)."""
  return _ratio(_nanmean(curve["signal_share_exact"]), _nanmean(curve["pool_signal_share_exact"]))


def _nanmean(x: np.ndarray) -> float:
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else float("nan")


def _accuracy_at(curve: dict[str, np.ndarray], step: float) -> float:
  """Held-out accuracy at `step`, linearly interpolated between evaluations."""
  return float(np.interp(step, curve["step"], curve["accuracy"]))


def late_gain_share(curve: dict[str, np.ndarray]) -> float:
  """Share of a run's held-out gain made in the last third of its steps (NaN without a gain)."""
  gain = float(curve["accuracy"][-1] - curve["accuracy"][0])
  two_thirds = curve["step"][0] + (curve["step"][-1] - curve["step"][0]) * 2.0 / 3.0
  return (float(curve["accuracy"][-1] - _accuracy_at(curve, two_thirds)) / gain if gain > 0
          else float("nan"))


def first_reach(curve: dict[str, np.ndarray], target: float) -> tuple[float, float, float]:
  """(seconds, rollouts, step) at the first evaluation after training started with accuracy >=
  target; NaN if never. The step-0 evaluation never counts: when RL first lowers accuracy (it can,
  on a weak base) the untrained policy would otherwise "reach" the target in zero seconds."""
  hit = np.flatnonzero((curve["accuracy"] >= target - 1e-12) & (curve["step"] > 0))
  if hit.size == 0:
    return float("nan"), float("nan"), float("nan")
  i = int(hit[0])
  return float(curve["seconds"][i]), float(curve["rollouts"][i]), float(curve["step"][i])


def _ratio(a: float, b: float) -> float:
  return a / b if b > 0 else float("nan")


ORACLE = "oracle"  # DOTS's rule on exact pass rates: the signal share a perfect estimator buys


def seed_se(finals: list[float]) -> float:
  """The seed-to-seed standard error of a final accuracy (0 with one seed: nothing to spread)."""
  return float(np.std(finals, ddof=1) / np.sqrt(len(finals))) if len(finals) > 1 else 0.0


def undrawn_pearson_min(curve: dict[str, np.ndarray]) -> float:
  """The lowest Pearson r, at the run's evaluations, of the predictions with the exact pass rates
  over the questions the draw has not rolled out in the last rounds; NaN where none was taken."""
  if "pred_pearson_undrawn_exact" not in curve:  # a simulated run: no such diagnostic
    return float("nan")
  r = curve["pred_pearson_undrawn_exact"]
  at = np.isin(curve["train_step"], curve["step"]) & np.isfinite(r)
  return float(r[at].min()) if at.any() else float("nan")


def families_at(curve: dict[str, np.ndarray], step: float) -> dict[str, float]:
  """Held-out accuracy per family at `step` (interpolated between evaluations); none where the
  run has no families (a simulated run)."""
  return {f: float(np.interp(step, curve["step"], a))
          for f, a in curve.get("families", {}).items()}


def analyze(curves: dict[str, dict[int, dict[str, np.ndarray]]], group_size: int = 8,
            overlap: float = float("nan"), *, testbed: bool = True,
            seeds_share_a_pool: bool = True) -> dict[str, Any]:
  """curves[method][seed] -> per-run and per-method results against the same seed's GRPO run, and
  the goals block, and with `testbed` the tiny testbed's bars (`group_size` G of the runs;
  `overlap` the number of questions in both the pool and the held-out split, NaN where unknown).

  A method reaches a baseline (GRPO; DS for GRESO's comparison) when its held-out accuracy reaches
  the baseline's final accuracy on the same seed less one seed-to-seed standard error of that final
  (noise between seeds cannot flip it); ratios are against the baseline's own steps, rollouts and
  seconds to that target. Final accuracies are taken at the baseline's last step (equal steps); a
  run extended to spend the baseline's rollouts (`compare`) also reports its end. Without
  `seeds_share_a_pool` (the simulator: each seed is a world of its own) the spread between seeds
  is the worlds', not noise a method could flip, and the target is the baseline's final itself."""
  if BASELINE not in curves:
    raise ValueError(f"the comparison needs the uniform baseline {BASELINE!r} among --methods")
  finals_se = (lambda m: seed_se([float(c["accuracy"][-1]) for c in curves[m].values()])
               if seeds_share_a_pool else 0.0)
  base_se = finals_se(BASELINE)
  ds_se = finals_se(DS) if DS in curves else 0.0
  runs: dict[str, dict[str, Any]] = {}
  for method, by_seed in curves.items():
    runs[method] = {}
    for seed, curve in by_seed.items():
      if seed not in curves[BASELINE]:
        raise ValueError(f"seed {seed} of {method} has no {BASELINE} run to compare with")
      base = curves[BASELINE][seed]
      base_steps = float(base["step"][-1])
      target = float(base["accuracy"][-1]) - base_se
      base_s, base_r, base_step = first_reach(base, target)
      sec, roll, step = first_reach(curve, target)
      ds_cmp = {}
      if DS in curves and seed in curves[DS]:
        ds = curves[DS][seed]
        ds_target = float(ds["accuracy"][-1]) - ds_se
        ds_sec, ds_roll, _ = first_reach(curve, ds_target)
        ds_own_sec, ds_own_roll, _ = first_reach(ds, ds_target)
        ds_cmp = {"ds_target": ds_target, "rollouts_to_ds_target": ds_roll,
                  "rollouts_vs_ds": _ratio(ds_roll, ds_own_roll),
                  "seconds_vs_ds": _ratio(ds_sec, ds_own_sec)}
      oracle_share = (_nanmean(curves[ORACLE][seed]["signal_share_exact"])
                      if ORACLE in curves and seed in curves[ORACLE] else float("nan"))
      fam = families_at(curve, base_steps)
      base_fam = families_at(base, base_steps)
      shortfall = {f: base_fam[f] - fam[f] for f in fam if f in base_fam}
      worst = max(shortfall, key=shortfall.get) if shortfall else ""
      at_base_steps = _accuracy_at(curve, base_steps)
      runs[method][str(seed)] = {**ds_cmp,
          "initial_accuracy": float(curve["accuracy"][0]),
          "final_accuracy": at_base_steps,  # at the baseline's last step: equal steps
          "final_stderr": float(np.interp(base_steps, curve["step"], curve["stderr"])),
          "end_step": float(curve["step"][-1]),
          "end_accuracy": float(curve["accuracy"][-1]),
          "target": target,
          "equal_step_margin": at_base_steps - target,
          "seconds_to_target": sec, "rollouts_to_target": roll, "step_to_target": step,
          "time_ratio": _ratio(sec, base_s), "rollout_ratio": _ratio(roll, base_r),
          "step_ratio": _ratio(step, base_step),
          "rollouts_per_step_ratio": _ratio(float(np.interp(base_steps, curve["step"],
                                                            curve["rollouts"])),
                                            float(base["rollouts"][-1])),
          "rollout_s_per_step": _nanmean(curve["rollout_s"]),
          "update_s_per_step": _nanmean(curve["update_s"]),
          "tracking_error": _nanmean(curve["pred_abs_err"]),
          "tracking_error_exact": _nanmean(curve["pred_abs_err_exact"]),
          "estimator_pearson_min": estimator_pearson_min(curve),
          "undrawn_pearson_min": undrawn_pearson_min(curve),
          "signal_share": _nanmean(curve["signal_share_exact"]),
          "signal_share_vs_oracle": _ratio(_nanmean(curve["signal_share_exact"]), oracle_share),
          "signal_share_ratio": signal_share_ratio(curve),
          "families": fam,
          "worst_family": worst,
          "worst_family_shortfall": float(shortfall[worst]) if worst else float("nan"),
          "distinct_questions": curve["distinct_questions"],
          "total_seconds": float(curve["seconds"][-1]),
          "total_rollouts": float(curve["rollouts"][-1]),
          "zero_var_first": zero_var_share(curve, "first"),
          "zero_var_last": zero_var_share(curve, "last"),
      }
  summary = {}
  for method, by_seed in runs.items():
    vals = list(by_seed.values())
    mean = lambda k: float(np.mean([v[k] for v in vals]))  # NaN if any seed never reached it
    worst = lambda k: float(np.max([v[k] for v in vals]))  # NaN if any seed never reached it
    finals = [v["final_accuracy"] for v in vals]
    summary[method] = {
        "seeds": len(vals),
        "final_accuracy": mean("final_accuracy"),
        "final_accuracy_sd": float(np.std(finals)),
        "final_accuracy_se": seed_se(finals) if len(vals) > 1 else vals[0]["final_stderr"],
        "end_accuracy": mean("end_accuracy"), "end_step": mean("end_step"),
        "reached": int(sum(np.isfinite(v["step_to_target"]) for v in vals)),
        "seconds_to_target": mean("seconds_to_target"),
        "rollouts_to_target": mean("rollouts_to_target"),
        "step_to_target": mean("step_to_target"), "step_ratio": mean("step_ratio"),
        "step_ratio_worst": worst("step_ratio"), "rollout_ratio_worst": worst("rollout_ratio"),
        "time_ratio": mean("time_ratio"), "rollout_ratio": mean("rollout_ratio"),
        "rollouts_per_step_ratio": mean("rollouts_per_step_ratio"),
        "equal_step_margin_worst": float(np.min([v["equal_step_margin"] for v in vals])),
        "rollout_s_per_step": mean("rollout_s_per_step"),
        "update_s_per_step": mean("update_s_per_step"),
        "tracking_error": mean("tracking_error"),
        "tracking_error_exact": mean("tracking_error_exact"),
        "estimator_pearson_min": float(np.min([v["estimator_pearson_min"] for v in vals])),
        "undrawn_pearson_min": float(np.min([v["undrawn_pearson_min"] for v in vals])),
        "signal_share": mean("signal_share"),
        "signal_share_vs_oracle": mean("signal_share_vs_oracle"),
        "signal_share_ratio": mean("signal_share_ratio"),
        "worst_family_shortfall": float(np.max([v["worst_family_shortfall"] for v in vals])),
        "distinct_questions": mean("distinct_questions"),
        "time_saving_pct": 100.0 * (1.0 - mean("time_ratio")),
        "rollout_saving_pct": 100.0 * (1.0 - mean("rollout_ratio")),
        "zero_var_first": mean("zero_var_first"), "zero_var_last": mean("zero_var_last"),
    }
  if DS in curves:
    for method, m in summary.items():
      for key in ("rollouts_vs_ds", "seconds_vs_ds"):
        m[key] = float(np.mean([v[key] for v in runs[method].values() if key in v] or [np.nan]))
      m["rollouts_vs_ds_worst"] = float(np.max(
          [v["rollouts_vs_ds"] for v in runs[method].values() if "rollouts_vs_ds" in v] or [np.nan]))
  result = {"baseline": BASELINE, "baseline_seed_se": base_se, "ds_seed_se": ds_se, "runs": runs,
            "summary": summary}
  if testbed:
    result["testbed"] = testbed_block(curves, result, group_size, overlap)
  result["goals"] = goals_block(result)
  return result


def testbed_block(curves: dict[str, dict[int, dict[str, np.ndarray]]], result: dict[str, Any],
                  group_size: int, overlap: float) -> dict[str, dict[str, Any]]:
  """Every testbed bar (`bars.BASE_BARS` + `bars.RUN_BARS`) from the runs: the base figures from
  the exact pool pass rates at the first evaluation of uniform GRPO, the rest from its curves and
  per-question pass rates and from the DOTS runs' tracking error."""
  grpo = curves[BASELINE]
  values: dict[str, float] = {}
  first_rates = [c["pass_rates"]["first"] for c in grpo.values() if "first" in c["pass_rates"]]
  if first_rates and POOL_SET in first_rates[0]:
    values.update(bars.base_figures(first_rates[0][POOL_SET], group_size, 0))
  values["pool_heldout_overlap"] = overlap
  starts = [float(c["accuracy"][0]) for c in grpo.values()]
  finals = [float(c["accuracy"][-1]) for c in grpo.values()]
  gains = np.asarray(finals) - np.asarray(starts)
  values["grpo_zero_var_end"] = float(np.mean([zero_var_share(c, "last") for c in grpo.values()]))
  values["grpo_gain"] = float(gains.mean())
  # Needs two seeds at least (NaN fails otherwise); identical seeds would give infinity.
  sd = float(np.std(finals, ddof=1)) if len(finals) > 1 else float("nan")
  values["grpo_gain_over_seed_sd"] = (float(gains.mean() / sd) if sd > 0
                                      else float("inf") if sd == 0 else float("nan"))
  values["grpo_late_gain_share"] = float(np.min([late_gain_share(c) for c in grpo.values()]))
  pool_gains = [c["pool_accuracy"][-1] - c["pool_accuracy"][0] for c in grpo.values()]
  values["heldout_vs_pool_gain"] = _ratio(float(gains.mean()), float(np.mean(pool_gains)))
  moved = [float(np.mean(np.abs(c["pass_rates"]["last"][HELDOUT_SET]
                                - c["pass_rates"]["first"][HELDOUT_SET]) >= MOVED))
           for c in grpo.values() if {"first", "last"} <= set(c["pass_rates"])]
  values["moved_heldout_questions"] = float(np.mean(moved)) if moved else float("nan")
  dots_runs = list(result["runs"].get("dots", {}).values())
  if dots_runs:  # worst seed
    values["dots_estimator_pearson"] = float(np.min([v["estimator_pearson_min"] for v in dots_runs]))
    values["dots_signal_share_ratio"] = float(np.min([v["signal_share_ratio"] for v in dots_runs]))
  checked = bars.check_all(bars.BASE_BARS + bars.RUN_BARS, values)
  if dots_runs:
    # Reported, no longer a bar: the mean |predicted - exact| on the trained batch (the oracle's own
    # is 0.10-0.11: the policy moves within a round), and against the observed G-sample rate.
    dots = result["summary"]["dots"]
    checked["dots_estimator_pearson"]["tracking_error_exact"] = dots["tracking_error_exact"]
    checked["dots_estimator_pearson"]["tracking_error_observed"] = dots["tracking_error"]
  checked["grpo_zero_var_end"]["observed_start"] = float(
      np.mean([zero_var_share(c, "first") for c in grpo.values()]))
  return checked


def goals_block(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """The savings goals (`bars.GOALS`) from the per-run results, each on the worst seed; a goal whose
  methods did not run is NaN (fails: not measured)."""
  summary = result["summary"]
  worst = lambda method, key: summary[method][key] if method in summary else float("nan")
  values = {}
  for method in ("dots", "dots_track"):
    values[f"{method}_step_ratio"] = worst(method, "step_ratio_worst")
  for method in ("dots_rr", "dots_track_rr"):
    values[f"{method}_rollout_ratio"] = worst(method, "rollout_ratio_worst")
  for method in ("dots", "dots_rr", "dots_track", "dots_track_rr"):
    values[f"{method}_equal_step_margin"] = worst(method, "equal_step_margin_worst")
  for method in ("dots_track", "dots_track_rr"):
    values[f"{method}_undrawn_pearson"] = worst(method, "undrawn_pearson_min")
  for method in ("greso", "greso_track"):
    values[f"{method}_rollouts_vs_ds"] = (worst(method, "rollouts_vs_ds_worst") if DS in summary
                                          else float("nan"))
  return bars.check_all(bars.GOALS, values)


def markdown_table(result: dict[str, Any]) -> str:
  # ".0f%" prints a percentage of a value already in percent (format's "%" would multiply by 100).
  fmt = lambda x, spec: "never" if not np.isfinite(x) else (
      format(x, spec[:-1]) + "%" if spec.endswith("%") else format(x, spec))
  dash = lambda x, spec: fmt(x, spec) if np.isfinite(x) else "-"
  has_ds = any("rollouts_vs_ds" in m for m in result["summary"].values())
  head = ("| method | acc at GRPO's steps (se) | end acc (step) | reached | steps to target (vs "
          "GRPO, worst) | rollouts to target (vs GRPO, worst) | rollouts per step vs GRPO | "
          "zero-var first/last 10% | Pearson r min: all / undrawn | reward-variance share (vs "
          "oracle) | worst family vs GRPO | distinct questions |"
          + (" rollouts vs DS at DS's target (worst) |" if has_ds else ""))
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for method, m in result["summary"].items():
    row = (f"| {method} | {m['final_accuracy']:.4f} ({m['final_accuracy_se']:.4f}) | "
           f"{m['end_accuracy']:.4f} ({m['end_step']:.0f}) | {m['reached']}/{m['seeds']} | "
           f"{fmt(m['step_to_target'], '.0f')} ({fmt(m['step_ratio'], '.2f')}, "
           f"{fmt(m['step_ratio_worst'], '.2f')}) | {fmt(m['rollouts_to_target'], ',.0f')} "
           f"({fmt(m['rollout_ratio'], '.2f')}, {fmt(m['rollout_ratio_worst'], '.2f')}) | "
           f"{fmt(m['rollouts_per_step_ratio'], '.2f')} | "
           f"{fmt(m['zero_var_first'], '.2f')}/{fmt(m['zero_var_last'], '.2f')} | "
           f"{dash(m['estimator_pearson_min'], '.2f')} / {dash(m['undrawn_pearson_min'], '.2f')} | "
           f"{dash(m['signal_share'], '.2f')} ({dash(m['signal_share_vs_oracle'], '.2f')}) | "
           f"{dash(-m['worst_family_shortfall'], '+.3f')} | "
           f"{fmt(m['distinct_questions'], '.0f')} |")
    if has_ds:
      row += (f" {fmt(m.get('rollouts_vs_ds', float('nan')), '.2f')} "
              f"({fmt(m.get('rollouts_vs_ds_worst', float('nan')), '.2f')}) |")
    lines.append(row)
  for block in ("testbed", "goals"):
    if block in result:
      checked = result[block]
      lines += ["", f"{block}: {sum(c['pass'] for c in checked.values())}/{len(checked)} pass", ""]
      lines += [f"- {line}" for line in bars.report_lines(checked)]
  lines.append("")
  lines.append(
      f"Target: the same seed's uniform-GRPO final held-out accuracy less one seed-to-seed "
      f"standard error ({result['baseline_seed_se']:.4f}); accuracies at GRPO's last step (a "
      "method that spends fewer rollouts a step ran on until it had spent GRPO's: its end); "
      "ratios against GRPO's own steps and rollouts to the target, means over seeds and the worst "
      "seed (a seed that never reached it makes them 'never'). Reward-variance share: the trained "
      "groups' expected share with reward variance (exact pass rates), against the oracle's "
      "(DOTS's rule on exact rates, same seed). Worst family: the held-out family furthest below "
      "GRPO's at GRPO's last step (worst seed)."
      + (f" Rollouts vs DS: rollouts to reach the same seed's dynamic-sampling final accuracy less "
         f"one standard error ({result['ds_seed_se']:.4f}) over what dynamic sampling needed "
         "(GRESO's comparison)." if has_ds else ""))
  return "\n".join(lines)


def _run_setup(run_dir: str) -> tuple[int, float]:
  """(G, pool/held-out overlap) of a run, from the config it recorded (overlap NaN unless the pool
  is the synthetic one)."""
  from dots_jax.data.synthetic import synthetic_rows
  from dots_jax.run.workdir import read_config
  config = read_config(run_dir)
  overlap = float("nan")
  if config.data.train == "synthetic":
    syn = config.data.synthetic
    overlap = float(len({p for p, _, _ in synthetic_rows(syn, "train")}
                        & {p for p, _, _ in synthetic_rows(syn, "heldout")}))
  return int(config.sampling.group_size), overlap


def extend_to_budget(config_arg: str, overrides: list[str], method: str, seed: int, run_dir: str,
                     budget: float, tries: int = 3) -> None:
  """A run that spent fewer rollouts than the baseline's `budget` goes on (resumed with more
  steps) until it has spent it: a cheaper method is not cut short at the baseline's step count."""
  for _ in range(tries):
    curve = read_curve(run_dir)
    spent, steps = float(curve["rollouts"][-1]), float(curve["step"][-1])
    if spent >= budget or spent <= 0:
      return
    more = int(np.ceil((budget - spent) / (spent / steps)))
    run_one(config_arg, overrides + [f"--config.total_steps={int(steps) + more}"], method, seed,
            run_dir)


def run_one(config_arg: str, overrides: list[str], method: str, seed: int, run_dir: str) -> None:
  cmd = [sys.executable, "-m", "dots_jax.main", f"--config={config_arg}", f"--workdir={run_dir}",
         f"--config.method={method}", f"--config.seed={seed}", *overrides]
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)


def compare(config_file: str, methods: list[str], seeds: list[int], workdir: str, *,
            analyze_only: bool = False, overrides: list[str] | None = None) -> dict[str, Any]:
  """Runs (or, with `analyze_only`, re-reads) every (method, seed) of the comparison in `workdir`
  and writes compare.json, compare.md and curves.png there; returns compare.json's content."""
  overrides = list(overrides or [])
  if BASELINE not in methods:
    raise ValueError(f"--methods must include the baseline {BASELINE!r}")
  methods = [BASELINE] + [m for m in methods if m != BASELINE]  # its budget first
  fs.makedirs(workdir)
  curves: dict[str, dict[int, dict[str, np.ndarray]]] = {m: {} for m in methods}
  for seed in seeds:  # seed-major: a partial comparison still has complete pairs with GRPO
    for method in methods:
      run_dir = fs.join(workdir, f"{method}_s{seed}")
      if not analyze_only:
        run_one(config_file, overrides, method, seed, run_dir)
        if method != BASELINE:
          extend_to_budget(config_file, overrides, method, seed, run_dir,
                           float(curves[BASELINE][seed]["rollouts"][-1]))
      curves[method][seed] = read_curve(run_dir)
  group_size, overlap = _run_setup(fs.join(workdir, f"{BASELINE}_s{seeds[0]}"))
  result = analyze(curves, group_size, overlap)
  result.update(config=config_file, overrides=overrides, methods=methods, seeds=seeds)
  fs.write_text(fs.join(workdir, "compare.json"), json.dumps(result, indent=1, allow_nan=True))
  table = markdown_table(result)
  fs.write_text(fs.join(workdir, "compare.md"), table + "\n")
  plot_curves(curves, fs.join(workdir, "curves.png"))
  print(table)
  print(f"wrote {workdir}/compare.json, compare.md, curves.png")
  return result


def main(argv: list[str]) -> None:
  from absl import app, flags
  f = flags.FLAGS
  try:
    compare(f.config, [m for m in f.methods.split(",") if m],
            [int(s) for s in f.seeds.split(",") if s], f.workdir, analyze_only=f.analyze_only,
            overrides=_OVERRIDES)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


_OVERRIDES: list[str] = []  # the --config.* arguments, passed to every run unparsed


def _parse(argv: list[str]) -> list[str]:
  """absl's parsing of this tool's flags; --config.KEY=VALUE overrides go to the runs as they are."""
  from absl import flags
  _OVERRIDES.extend(a for a in argv[1:] if a.startswith("--config."))
  return flags.FLAGS([a for a in argv if not a.startswith("--config.")])


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("config", "configs/tiny.py", "the runs' config file (with :arg); "
                      "--config.KEY=VALUE overrides go to every run")
  flags.DEFINE_string("methods", "grpo,dots,dots_rr,greso,ds", "methods, the baseline grpo among them")
  flags.DEFINE_string("seeds", "0,1,2", "seeds, each a run of every method")
  flags.DEFINE_string("workdir", "/tmp/dots_jax_compare", "where the runs and the report go")
  flags.DEFINE_bool("analyze_only", False, "re-read finished runs; run nothing")
  app.run(main, flags_parser=_parse)
