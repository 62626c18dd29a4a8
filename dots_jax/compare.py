"""Method comparison at equal seed and budget: time and rollouts to reach uniform GRPO's final accuracy.

  python -m dots_jax.compare --config=configs/tiny.py --methods=grpo,dots,dots_rr,greso,ds \
      --seeds=0,1,2 --workdir=/tmp/compare [--config.total_steps=300]

Each (method, seed) runs `python -m dots_jax.main` in its own process (fresh compilation caches, so
wall-clock is comparable; an interrupted comparison resumes every run from its checkpoints), in
<workdir>/<method>_s<seed>. Then, from every run's metrics.jsonl (held-out accuracy at each
evaluation with the training seconds and rollouts spent so far, evaluation time excluded):
  * curves.png: held-out accuracy vs wall-clock seconds and vs rollouts generated;
  * compare.json: per method and seed the final accuracy (with standard error), the seconds and
    rollouts to first reach the target (GRPO's final accuracy for the same seed) and their ratio to
    what GRPO itself needed;
  * compare.md: the table (mean over seeds) with the saving in percent, the DOTS paper's headline
    metric, plus, when dynamic sampling ran, GRESO's headline: rollouts to reach dynamic sampling's
    final accuracy (same seed) relative to what dynamic sampling itself needed.
`--analyze_only` skips the runs and re-reads existing workdirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

BASELINE = "grpo"
DS = "ds"  # dynamic sampling: GRESO's baseline


def read_curve(run_dir: str) -> dict[str, np.ndarray]:
  """Evaluation points of one run: step, accuracy, stderr, training seconds and rollouts so far."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: run the comparison without --analyze_only")
  rows, zero_var = [], []
  with open(path) as f:
    for line_no, line in enumerate(f, start=1):
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from None
      if "selection/effective_frac" in rec:  # share of the trained batch's groups with no signal
        zero_var.append(1.0 - rec["selection/effective_frac"])
      if "eval/accuracy" in rec:
        rows.append((rec["step"], rec["eval/accuracy"], rec["eval/stderr"],
                     rec["progress/seconds"], rec["progress/rollouts"]))
  if not rows:
    raise ValueError(f"{path}: no evaluation records (config.eval.every must be > 0)")
  a = np.asarray(rows, np.float64)
  return {"step": a[:, 0], "accuracy": a[:, 1], "stderr": a[:, 2], "seconds": a[:, 3],
          "rollouts": a[:, 4], "zero_var": np.asarray(zero_var, np.float64)}


def _zero_var_share(curve: dict[str, np.ndarray], part: str) -> float:
  """Mean zero-variance share of the trained groups over the first or last tenth of the logged steps
  (for uniform GRPO: how much of the batch teaches nothing, at the start and as skills saturate)."""
  zv = curve["zero_var"]
  if zv.size == 0:
    return float("nan")
  n = max(1, zv.size // 10)
  return float(zv[:n].mean() if part == "first" else zv[-n:].mean())


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


def analyze(curves: dict[str, dict[int, dict[str, np.ndarray]]]) -> dict[str, Any]:
  """curves[method][seed] -> per-run and per-method results against the same seed's GRPO run."""
  if BASELINE not in curves:
    raise ValueError(f"the comparison needs the uniform baseline {BASELINE!r} among --methods")
  runs: dict[str, dict[str, Any]] = {}
  for method, by_seed in curves.items():
    runs[method] = {}
    for seed, curve in by_seed.items():
      if seed not in curves[BASELINE]:
        raise ValueError(f"seed {seed} of {method} has no {BASELINE} run to compare with")
      base = curves[BASELINE][seed]
      target = float(base["accuracy"][-1])
      base_s, base_r, _ = first_reach(base, target)
      sec, roll, step = first_reach(curve, target)
      ds_cmp = {}
      if DS in curves and seed in curves[DS]:
        ds = curves[DS][seed]
        ds_target = float(ds["accuracy"][-1])
        ds_roll = first_reach(curve, ds_target)[1]
        ds_cmp = {"ds_target": ds_target, "rollouts_to_ds_target": ds_roll,
                  "rollouts_vs_ds": _ratio(ds_roll, first_reach(ds, ds_target)[1])}
      runs[method][str(seed)] = {**ds_cmp,
          "final_accuracy": float(curve["accuracy"][-1]),
          "final_stderr": float(curve["stderr"][-1]),
          "target": target,
          "seconds_to_target": sec, "rollouts_to_target": roll, "step_to_target": step,
          "time_ratio": _ratio(sec, base_s), "rollout_ratio": _ratio(roll, base_r),
          "total_seconds": float(curve["seconds"][-1]),
          "total_rollouts": float(curve["rollouts"][-1]),
          "zero_var_first": _zero_var_share(curve, "first"),
          "zero_var_last": _zero_var_share(curve, "last"),
      }
  summary = {}
  for method, by_seed in runs.items():
    vals = list(by_seed.values())
    mean = lambda k: float(np.mean([v[k] for v in vals]))  # NaN if any seed never reached it
    summary[method] = {
        "seeds": len(vals),
        "final_accuracy": mean("final_accuracy"),
        "final_accuracy_sd": float(np.std([v["final_accuracy"] for v in vals])),
        "reached": int(sum(np.isfinite(v["seconds_to_target"]) for v in vals)),
        "seconds_to_target": mean("seconds_to_target"),
        "rollouts_to_target": mean("rollouts_to_target"),
        "time_ratio": mean("time_ratio"), "rollout_ratio": mean("rollout_ratio"),
        "time_saving_pct": 100.0 * (1.0 - mean("time_ratio")),
        "rollout_saving_pct": 100.0 * (1.0 - mean("rollout_ratio")),
        "zero_var_first": mean("zero_var_first"), "zero_var_last": mean("zero_var_last"),
    }
  if DS in curves:
    for method, m in summary.items():
      m["rollouts_vs_ds"] = float(np.mean([v["rollouts_vs_ds"] for v in runs[method].values()
                                           if "rollouts_vs_ds" in v] or [np.nan]))
  return {"baseline": BASELINE, "runs": runs, "summary": summary}


def markdown_table(result: dict[str, Any]) -> str:
  # ".0f%" prints a percentage of a value already in percent (format's "%" would multiply by 100).
  fmt = lambda x, spec: "never" if not np.isfinite(x) else (
      format(x, spec[:-1]) + "%" if spec.endswith("%") else format(x, spec))
  has_ds = any("rollouts_vs_ds" in m for m in result["summary"].values())
  head = ("| method | final acc (sd) | reached | seconds to target | rollouts to target | "
          "time vs GRPO | time saving | rollout saving | zero-var first/last 10% |"
          + (" rollouts vs DS at DS's final acc |" if has_ds else ""))
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for method, m in result["summary"].items():
    row = (f"| {method} | {m['final_accuracy']:.4f} ({m['final_accuracy_sd']:.4f}) | "
           f"{m['reached']}/{m['seeds']} | {fmt(m['seconds_to_target'], '.0f')} | "
           f"{fmt(m['rollouts_to_target'], ',.0f')} | {fmt(m['time_ratio'], '.2f')} | "
           f"{fmt(m['time_saving_pct'], '.0f%')} | {fmt(m['rollout_saving_pct'], '.0f%')} | "
           f"{fmt(m['zero_var_first'], '.2f')}/{fmt(m['zero_var_last'], '.2f')} |")
    if has_ds:
      row += f" {fmt(m.get('rollouts_vs_ds', float('nan')), '.2f')} |"
    lines.append(row)
  lines.append("")
  lines.append("Target: the same seed's uniform-GRPO final held-out accuracy; seconds are training "
               "wall-clock (evaluation excluded); means over seeds (a seed that never reached the "
               "target makes the mean 'never')."
               + (" Rollouts vs DS: rollouts to reach the same seed's dynamic-sampling final "
                  "accuracy over what dynamic sampling needed (GRESO's comparison)." if has_ds else ""))
  return "\n".join(lines)


def plot_curves(curves: dict[str, dict[int, dict[str, np.ndarray]]], out_png: str) -> None:
  try:
    import matplotlib  # optional: pip install -e ".[plots]"
  except ImportError:
    raise SystemExit("plotting needs matplotlib: pip install -e \".[plots]\" (compare.json and "
                     "the table do not)") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for color, (method, by_seed) in zip(plt.cm.tab10.colors, curves.items()):
    for k, (seed, c) in enumerate(sorted(by_seed.items())):
      label = method if k == 0 else None
      for ax, x in zip(axes, ("seconds", "rollouts")):
        ax.plot(c[x], c["accuracy"], color=color, alpha=0.8, lw=1.2, label=label)
  for ax, x in zip(axes, ("training wall-clock (s)", "rollouts generated")):
    ax.set_xlabel(x)
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out_png, dpi=120)
  plt.close(fig)


def run_one(config_arg: str, overrides: list[str], method: str, seed: int, run_dir: str) -> None:
  cmd = [sys.executable, "-m", "dots_jax.main", f"--config={config_arg}", f"--workdir={run_dir}",
         f"--config.method={method}", f"--config.seed={seed}", *overrides]
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  import argparse
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", default="configs/tiny.py")
  p.add_argument("--methods", default="grpo,dots,dots_rr,greso,ds")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--workdir", default="/tmp/dots_jax_compare")
  p.add_argument("--analyze_only", action="store_true")
  args, overrides = p.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    p.error(f"unknown arguments {bad} (only --config.* overrides are passed to the runs)")
  methods = [m for m in args.methods.split(",") if m]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  if BASELINE not in methods:
    p.error(f"--methods must include the baseline {BASELINE!r}")
  os.makedirs(args.workdir, exist_ok=True)
  curves: dict[str, dict[int, dict[str, np.ndarray]]] = {m: {} for m in methods}
  for seed in seeds:  # seed-major: a partial comparison still has complete pairs with GRPO
    for method in methods:
      run_dir = os.path.join(args.workdir, f"{method}_s{seed}")
      if not args.analyze_only:
        run_one(args.config, overrides, method, seed, run_dir)
      curves[method][seed] = read_curve(run_dir)
  result = analyze(curves)
  result.update(config=args.config, overrides=overrides, methods=methods, seeds=seeds)
  with open(os.path.join(args.workdir, "compare.json"), "w") as f:
    json.dump(result, f, indent=1, allow_nan=True)
  table = markdown_table(result)
  with open(os.path.join(args.workdir, "compare.md"), "w") as f:
    f.write(table + "\n")
  plot_curves(curves, os.path.join(args.workdir, "curves.png"))
  print(table)
  print(f"wrote {args.workdir}/compare.json, compare.md, curves.png")
  return result


if __name__ == "__main__":
  main()
