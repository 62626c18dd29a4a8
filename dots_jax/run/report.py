"""What a finished run showed, said at its end: held-out accuracy first -> last with standard errors,
steps, rollouts, wall-clock, where the metrics and checkpoints are, and (with matplotlib) the
learning curve as <workdir>/curve.png. `dots_jax.main` adds the next commands (export, evaluate,
compare)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from dots_jax import fs
from dots_jax.run import curves

CURVE_FILE = "curve.png"


@dataclasses.dataclass(frozen=True)
class EvalPoint:
  step: int
  accuracy: float
  stderr: float  # over questions


@dataclasses.dataclass(frozen=True)
class RunReport:
  method: str
  steps: int
  total_steps: int
  rollouts: int
  train_seconds: float  # rollout + selection + update, evaluation excluded (summed over restarts)
  wall_seconds: float  # this process, start to end
  eval_set: str  # the headline set (the first of data.eval_sets)
  first: EvalPoint | None
  last: EvalPoint | None
  # Standard error of last - first over the same questions (paired: per-question pass rates of
  # exact evaluation); NaN where only each end's own standard error is known.
  gain_stderr: float
  workdir: str
  checkpoint_step: int | None
  curve_png: str  # "" where no curve was drawn

  @property
  def gain(self) -> float:
    return (self.last.accuracy - self.first.accuracy) if self.first and self.last else math.nan

  def lines(self) -> list[str]:
    """The report as console lines."""
    out = [f"{self.method}: {self.steps}/{self.total_steps} steps, {self.rollouts:,} rollouts, "
           f"{_clock(self.wall_seconds)} wall-clock ({_clock(self.train_seconds)} training, "
           "evaluation excluded)"]
    if self.first and self.last and self.last.step > self.first.step:
      se = (f" +- {self.gain_stderr:.4f} (paired over questions)"
            if math.isfinite(self.gain_stderr) else "")
      out.append(f"held-out accuracy ({self.eval_set}): {self.first.accuracy:.4f} +- "
                 f"{self.first.stderr:.4f} at step {self.first.step} -> {self.last.accuracy:.4f} +- "
                 f"{self.last.stderr:.4f} at step {self.last.step}: {self.gain:+.4f}{se}")
    elif self.last:
      out.append(f"held-out accuracy ({self.eval_set}): {self.last.accuracy:.4f} +- "
                 f"{self.last.stderr:.4f} at step {self.last.step}")
    else:
      out.append("held-out accuracy: not evaluated (config.eval.every=0)")
    out.append(f"metrics: {fs.join(self.workdir, 'metrics.jsonl')} (TensorBoard: "
               f"{fs.join(self.workdir, 'tb')}), summary: {fs.join(self.workdir, 'summary.json')}")
    ckpt = fs.join(self.workdir, "checkpoints")
    out.append(f"checkpoints: {ckpt}" + (f" (newest: step {self.checkpoint_step})"
                                         if self.checkpoint_step is not None else " (none)"))
    if self.curve_png:
      out.append(f"learning curve: {self.curve_png}")
    return out


def eval_points(history: Sequence[dict[str, Any]]) -> list[EvalPoint]:
  """Every evaluation record of a run's metric history, in step order."""
  return [EvalPoint(int(r["step"]), float(r["eval/accuracy"]), float(r.get("eval/stderr", math.nan)))
          for r in history if "eval/accuracy" in r]


def paired_stderr(workdir: str, first: int, last: int, eval_set: str) -> float:
  """Standard error of the mean per-question change between two exact evaluations of `eval_set`
  (<workdir>/pass_rates/<step>.npz); NaN where either is missing."""
  paths = [fs.join(workdir, "pass_rates", f"{s}.npz") for s in (first, last)]
  if not all(fs.isfile(p) for p in paths):
    return math.nan
  a, b = (fs.load_npz(p).get(eval_set) for p in paths)
  if a is None or b is None or a.shape != b.shape or a.size < 2:
    return math.nan
  d = b.astype(np.float64) - a.astype(np.float64)
  return float(d.std(ddof=1) / math.sqrt(d.size))


def draw_curve(workdir: str, method: str) -> str:
  """<workdir>/curve.png (held-out accuracy against steps, rollouts and training seconds) where
  matplotlib is installed (the plots extra) and the run evaluated; "" otherwise."""
  try:
    import matplotlib  # noqa: F401  (optional: pip install -e ".[plots]")
  except ImportError:
    return ""
  try:
    curve = curves.read_curve(workdir)
  except (FileNotFoundError, ValueError):
    return ""
  out = fs.join(workdir, CURVE_FILE)
  curves.plot_curves({method: {0: curve}}, out)
  return out


def _clock(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"
