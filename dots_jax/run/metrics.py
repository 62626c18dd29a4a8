"""Run metrics: JSON lines (<workdir>/metrics.jsonl) + TensorBoard events (tensorboardX), process 0 only;
the run's whole-run counters (`Progress`) and its console lines.

The writer keeps the history of everything written; the history goes into checkpoints
(`state_dict`) and `load_state_dict` rewrites metrics.jsonl from it, so after a resume the file holds
exactly the steps of the restored run (records written after the checkpoint, by the killed process, are
dropped). TensorBoard event files are append-only: after a resume they may show those steps twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from typing import Any, Iterator

import jax
import numpy as np

from dots_jax import fs
from dots_jax.rl.batch import group_stats


def log_line(text: str) -> None:
  """Progress output of the lead process (stdout, flushed: runs are watched live)."""
  if jax.process_index() == 0:
    print(text, flush=True)


def banner(text: str) -> None:
  log_line(f"== {text}")


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


@dataclasses.dataclass
class Progress:
  """Whole-run counters kept in checkpoints (wall-clock excludes time before a restart's restore)."""

  rollouts: int = 0  # completions generated (training + reference; evaluation excluded)
  seconds: float = 0.0  # training wall-clock (rollout + selection + update), evaluation excluded
  last_reward: float = float("nan")
  last_eval: float = float("nan")
  optimizer_updates: int = 0  # taken so far (mini-batches without loss tokens are skipped)
  # Pool indices of every question trained on so far (fresh groups; replayed ones were fresh once),
  # sorted: how much of the pool a method's selection ever uses.
  trained_questions: list[int] = dataclasses.field(default_factory=list)
  # Mean token entropy of the first step's update: the divergence guard's reference point.
  first_entropy: float = float("nan")

  def add_step(self, seconds: float, record: dict[str, Any], questions: np.ndarray) -> None:
    """Counts a finished step: its training seconds, what its metrics record says it did and the
    pool indices of its fresh groups. Diagnostics the step ran (`selection/diagnostic_s`: scoring
    predictions against exact pass rates) are not the method's time and are left out."""
    self.seconds += seconds - float(record.get("selection/diagnostic_s", 0.0))
    self.rollouts += int(record["selection/rollouts"])
    self.optimizer_updates += int(record["train/optimizer_updates"])
    self.last_reward = float(record["reward_mean"])
    if self.first_entropy != self.first_entropy and "train/entropy" in record:
      self.first_entropy = float(record["train/entropy"])
    self.trained_questions = sorted(set(self.trained_questions).union(
        int(i) for i in np.asarray(questions).ravel()))

  def state_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def metrics(self) -> dict[str, float]:
    return {"progress/rollouts": float(self.rollouts), "progress/seconds": self.seconds,
            "progress/optimizer_updates": float(self.optimizer_updates),
            "progress/distinct_questions": float(len(self.trained_questions))}


def _scalar(v: Any) -> float | int | bool:
  v = np.asarray(v)
  if v.shape != ():
    raise ValueError(f"metric value of shape {v.shape} is not a scalar")
  return v.item()


def batch_stats(rewards_QxG: np.ndarray, lengths_N: np.ndarray, pass_threshold: float = 1.0
                ) -> dict[str, float]:
  """Rollout statistics: reward mean, pass rate (reward >= threshold), zero-variance groups, lengths."""
  r = np.asarray(rewards_QxG, np.float64)
  lengths = np.asarray(lengths_N, np.float64)
  if r.size == 0:  # a step whose rounds found nothing trainable
    return dict.fromkeys(("reward_mean", "pass_rate", "zero_var_frac", "response_len_mean",
                          "response_len_p50", "response_len_p90", "response_len_max"), float("nan"))
  return {
      "response_len_p50": float(np.percentile(lengths, 50)),
      "response_len_p90": float(np.percentile(lengths, 90)),
      "reward_mean": float(r.mean()),
      "pass_rate": float(np.mean(r >= pass_threshold)),
      "zero_var_frac": float(np.mean(group_stats(r).zero_var_Q)),
      "response_len_mean": float(lengths.mean()),
      "response_len_max": float(lengths.max()),
  }


class StepTimer:
  """Wall-clock split of one RL step into named phases (rollout / selection / update ...)."""

  def __init__(self):
    self.times: dict[str, float] = {}

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

  def metrics(self, tokens: int | None = None) -> dict[str, float]:
    """time/<phase>_s, time/step_s and, given the step's token count, tokens_per_s over the step."""
    out = {f"time/{k}_s": v for k, v in self.times.items()}
    total = sum(self.times.values())
    out["time/step_s"] = total
    if tokens is not None and total > 0:
      out["tokens_per_s"] = tokens / total
    self.times = {}
    return out


class MetricsWriter:
  """Appends {"step": s, **metrics} records; no-op on processes other than 0."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, wandb_project: str = "",
               run_config: dict[str, Any] | None = None):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.path = fs.join(workdir, "metrics.jsonl")
    self.history: list[dict[str, Any]] = []
    self._log = self._samples = None
    self._tb_local = ""
    self._tb = None
    # Weights & Biases (optional extra): started at the first write, after a resume has restored
    # the run id, so a resumed job continues the same W&B run.
    self.wandb_project, self.wandb_id, self._wandb = wandb_project, "", None
    self.run_config = run_config or {}
    if self.active:
      fs.makedirs(workdir)
      self._log = fs.AppendLog(self.path)
      self._samples = fs.AppendLog(fs.join(workdir, "samples.jsonl"))
      if tensorboard:
        self._open_tb(purge_step=None)

  def _open_tb(self, purge_step: int | None) -> None:
    from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it
    if self._tb is not None:
      self._tb.close()
    # purge_step: events at or after it (written after the checkpoint a resume starts from) are
    # dropped, so TensorBoard does not show those steps twice. A remote workdir's events are written
    # to a local staging directory and uploaded by `flush`.
    tb_dir = fs.join(self.workdir, "tb")
    self._tb_local = fs.staging_path(tb_dir) if fs.is_remote(tb_dir) else ""
    self._tb = SummaryWriter(self._tb_local or tb_dir, purge_step=purge_step)

  def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """Records scalar metrics for `step` (jax/numpy scalars are converted); returns the record."""
    record = {"step": int(step)}
    record.update({k: _scalar(v) for k, v in metrics.items()})
    self.history.append(record)
    if self.active and self.wandb_project:
      self._wandb_run().log({k: v for k, v in record.items() if k != "step"}, step=int(step))
    if self.active:
      self._log.append([json.dumps(record, allow_nan=True)])
      if self._tb is not None:
        for k, v in record.items():
          if k != "step" and isinstance(v, (int, float, bool)) and math.isfinite(float(v)):
            self._tb.add_scalar(k, float(v), int(step))
    return record

  def flush(self) -> None:
    """Makes everything written so far durable where it lives (a remote workdir gets its logs
    uploaded: the loop flushes at every checkpoint and at the end)."""
    if self._tb is not None:
      self._tb.flush()
      self._upload_tb()
    for log in (self._log, self._samples):
      if log is not None:
        log.sync()

  def _upload_tb(self) -> None:
    if self._tb_local:  # a remote workdir: the staged event files go up whole
      fs.upload_dir(self._tb_local, fs.join(self.workdir, "tb"))

  def write_samples(self, step: int, groups: Any, tokenizer: Any, count: int) -> None:
    """Appends the first `count` of the step's fresh completions (prompt, completion, reward) to
    <workdir>/samples.jsonl (process 0): what the policy writes, next to the numbers."""
    if not self.active or count <= 0:
      return
    g = groups.tokens_QxGxT.shape[1]
    rows = []
    for n in range(min(count, groups.num_groups * g)):
      q, k = divmod(n, g)
      tokens, mask = groups.tokens_QxGxT[q, k], groups.mask_QxGxT[q, k]
      completion = groups.loss_mask_QxGxT[q, k] > 0
      rows.append(json.dumps({
          "step": int(step), "question": int(groups.qid_Q[q]), "sample": k,
          "prompt": tokenizer.decode(tokens[(mask > 0) & ~completion].tolist()),
          "completion": tokenizer.decode(tokens[completion].tolist()),
          "reward": float(groups.rewards_QxG[q, k])}))
    self._samples.append(rows)

  def _wandb_run(self) -> Any:
    if self._wandb is None:
      try:
        import wandb
      except ImportError:
        raise RuntimeError("config.log.wandb_project is set but wandb is not installed: "
                           "pip install -e \".[wandb]\"") from None
      self.wandb_id = self.wandb_id or wandb.util.generate_id()
      self._wandb = wandb.init(project=self.wandb_project, id=self.wandb_id, resume="allow",
                               dir=self.workdir, config=self.run_config)
    return self._wandb

  def state_dict(self) -> dict[str, Any]:
    return {"history": [dict(r) for r in self.history], "wandb_id": self.wandb_id}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    self.history = [dict(r) for r in state["history"]]
    self.wandb_id = state.get("wandb_id", "")
    if self.active:
      self._log.rewrite([json.dumps(r, allow_nan=True) for r in self.history])
      if self._tb is not None and self.history:
        self._open_tb(purge_step=int(self.history[-1]["step"]) + 1)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()  # writes what it still holds
      self._upload_tb()
      self._tb = None
    self.flush()
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None
