"""A run's learning curve from its metrics.jsonl (`read_curve`: held-out accuracy at each evaluation
with the training seconds and rollouts spent so far, and per-step selection figures) and its plot
(`plot_curves`: accuracy against steps, rollouts and seconds, one colour per method)."""

from __future__ import annotations

import io
import json

import numpy as np

from dots_jax import fs

POOL_SET = "synthetic"  # the training pool, when it is also an evaluation set (configs/tiny.py)
HELDOUT_SET = "synthetic_heldout"


def read_curve(run_dir: str) -> dict[str, np.ndarray]:
  """Evaluation points of one run: step, accuracy, stderr, training seconds and rollouts so far."""
  path = fs.join(run_dir, "metrics.jsonl")
  if not fs.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: run the comparison without --analyze_only")
  rows, per_step = [], {k: [] for k in _STEP_KEYS}
  families: dict[str, list[float]] = {}  # held-out accuracy per family, at each evaluation
  distinct = float("nan")
  for line_no, line in enumerate(fs.read_text(path).splitlines(), start=1):
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from None
    if "selection/effective_frac" in rec:  # a training step's record
      for name, key in _STEP_KEYS.items():
        per_step[name].append(float(rec.get(key, float("nan"))))
    if "progress/distinct_questions" in rec:
      distinct = float(rec["progress/distinct_questions"])
    if "eval/accuracy" in rec:
      pool = next((v for k, v in rec.items() if k.startswith(f"eval/{POOL_SET}/avg@")),
                  float("nan"))
      rows.append((rec["step"], rec["eval/accuracy"], rec["eval/stderr"],
                   rec["progress/seconds"], rec["progress/rollouts"], pool))
      group = f"eval/{HELDOUT_SET}/group/"
      for k, v in rec.items():
        if k.startswith(group):
          families.setdefault(k[len(group):], []).append(float(v))
  if not rows:
    raise ValueError(f"{path}: no evaluation records (config.eval.every must be > 0)")
  a = np.asarray(rows, np.float64)
  curve = {"step": a[:, 0], "accuracy": a[:, 1], "stderr": a[:, 2], "seconds": a[:, 3],
           "rollouts": a[:, 4], "pool_accuracy": a[:, 5], "distinct_questions": distinct}
  curve.update({k: np.asarray(v, np.float64) for k, v in per_step.items()})
  curve["zero_var"] = 1.0 - curve.pop("effective_frac")  # share of the trained groups with no signal
  curve["families"] = {f: np.asarray(v, np.float64) for f, v in families.items()
                       if len(v) == len(rows)}
  curve["pass_rates"] = _read_pass_rates(run_dir, a[0, 0], a[-1, 0])
  return curve


# Per training step: name in the curve -> key in metrics.jsonl.
_STEP_KEYS = {"effective_frac": "selection/effective_frac",
              "all_correct": "selection/all_correct_frac", "all_wrong": "selection/all_wrong_frac",
              "pred_abs_err": "selection/pred_abs_err",
              "pred_abs_err_exact": "selection/pred_abs_err_exact", "rollout_s": "time/rollout_s",
              "update_s": "time/update_s", "step_s": "time/step_s", "train_step": "step",
              "pred_pearson_exact": "selection/pred_pearson_exact",
              "pred_pearson_undrawn_exact": "selection/pred_pearson_undrawn_exact",
              "signal_share_exact": "selection/signal_share_exact",
              "pool_signal_share_exact": "selection/pool_signal_share_exact"}


def _read_pass_rates(run_dir: str, first: float, last: float) -> dict[str, dict[str, np.ndarray]]:
  """{"first"|"last": {set: per-question pass rates}} from exact evaluation; {} where absent."""
  out = {}
  for which, step in (("first", first), ("last", last)):
    path = fs.join(run_dir, "pass_rates", f"{int(step)}.npz")
    if fs.isfile(path):
      out[which] = {k: v.astype(np.float64) for k, v in fs.load_npz(path).items()}
  return out


def plot_curves(curves: dict[str, dict[int, dict[str, np.ndarray]]], out_png: str) -> None:
  try:
    import matplotlib  # optional: pip install -e ".[plots]"
  except ImportError:
    raise SystemExit("plotting needs matplotlib: pip install -e \".[plots]\" (compare.json and "
                     "the table do not)") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for color, (method, by_seed) in zip(plt.cm.tab10.colors, curves.items()):
    for k, (seed, c) in enumerate(sorted(by_seed.items())):
      label = method if k == 0 else None
      for ax, x in zip(axes, ("step", "rollouts", "seconds")):
        ax.plot(c[x], c["accuracy"], color=color, alpha=0.8, lw=1.2, label=label)
  for ax, x in zip(axes, ("RL step", "rollouts generated", "training wall-clock (s)")):
    ax.set_xlabel(x)
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  fs.write_bytes(out_png, buf.getvalue())
  plt.close(fig)
