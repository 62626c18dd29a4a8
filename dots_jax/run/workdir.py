"""What a run directory holds beyond checkpoints: the config it was started with (`config.json`),
checked on every resume, and the trained policy read back from a checkpoint (export, evaluation).

  * `check_config(config, workdir)`: on a resume, refuses a config that differs from the committed
    one in anything but the keys of `RESUMABLE_CHANGES` (naming every differing key, old -> new),
    unless `config.allow_config_change` is set (then it logs them); `commit_config` writes
    `config.json`, which the loop does only once a checkpoint made with that config exists.
  * `read_config(workdir)`: the saved config as a ConfigDict over today's defaults.
  * `checkpoint_steps(workdir)`: the verified steps the run holds (read only).
  * `load_trained(workdir, step)`: (config, policy architecture, params at that verified
    checkpoint, tokenizer directory), what `dots_jax.tools.export` and `dots_jax.evaluate
    --workdir` need; read only (a trainer may be writing the run).
  * `WorkdirLock(workdir)`: one writer per run directory (a file lock locally; a leased object
    created under a generation precondition on gs://).
  * `holds_run(directory)`: whether a directory is a run directory (export refuses to write there).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from dots_jax import fs
from dots_jax.config_base import base_config
from dots_jax.config_common import ConfigError, all_keys
from dots_jax.model import hf_io, qwen2
from dots_jax.rl import update
from dots_jax.run import checkpoint, settings
from dots_jax.policy import policy_path

CONFIG_FILE = "config.json"
# Changing these does not change what the run computes up to the resume point: a longer run, other
# logging, checkpoint or evaluation cadence, another place for the compiled programs.
RESUMABLE_CHANGES = ("total_steps", "log.", "ckpt.", "eval.", "allow_config_change",
                     "compilation_cache")
# Keys a run's config carried before they moved to their tools (the planner's flags, the
# simulator's own config) or to the one config that uses them (the tiny base's recipe): a saved
# config.json that has them resumes under a config that does not.
RETIRED_KEYS = ("dry_run", "plan_", "sim.", "tiny.")


def _flat(c: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}
  for key in all_keys(c):
    value = c
    for part in key.split("."):
      value = value[part]
    out[key] = list(value) if isinstance(value, tuple) else value
  return out


def config_changes(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict
                   ) -> list[str]:
  """'key: old -> new' for every leaf that differs, except RESUMABLE_CHANGES."""
  a, b = _flat(saved), _flat(current)
  changes = []
  for key in sorted(set(a) | set(b)):
    if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_CHANGES):
      continue
    if key not in b and any(key.startswith(r) for r in RETIRED_KEYS):
      continue
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      changes.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
  return changes


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config `workdir` was started with, over today's defaults (tuples restored)."""
  path = fs.join(workdir, CONFIG_FILE)
  if not fs.isfile(path):
    raise ConfigError(f"{path} does not exist: --workdir must be a run directory of "
                      "`python -m dots_jax.main` (it writes config.json at start-up)")
  try:
    saved = json.loads(fs.read_text(path))
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                      "restore the file the run wrote, or start a new workdir") from None
  if not isinstance(saved, dict):
    raise ConfigError(f"{path}: expected a JSON object of config sections, got "
                      f"{type(saved).__name__}")
  c = base_config()

  def merge(node: ml_collections.ConfigDict, values: dict[str, Any], prefix: str) -> None:
    for k, v in values.items():
      key = f"{prefix}{k}"
      if k in node and isinstance(node[k], ml_collections.ConfigDict):
        if not isinstance(v, dict):
          raise ConfigError(f"{path}: {key} is {v!r}, the config wants a section (an object)")
        merge(node[k], v, key + ".")
        continue
      try:
        if k in node and isinstance(node[k], tuple):
          if not isinstance(v, (list, tuple)):
            raise TypeError("a list")
          node[k] = tuple(v)
        else:  # also keys this code no longer has: kept, so they stay visible
          node[k] = v
      except (TypeError, ValueError) as e:
        want = type(node[k]).__name__ if k in node else "another type"
        raise ConfigError(f"{path}: {key} is {v!r}, the config wants a {want} "
                          f"({_first_line(e)})") from None

  merge(c, saved, "")
  return c


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


LOCK_FILE = ".writer.lock"


class WorkdirLock:
  """One writer per run directory, held by process 0 for the run.

  Local: an advisory lock (`fcntl.flock`) on <workdir>/.writer.lock, dropped by the OS when the
  process ends (kill -9 included). gs://: the object <workdir>/.writer.lock, created only if absent
  (a generation precondition), holding the holder's description and a lease that a thread renews
  every lease/3; a successor takes over a lease that has expired (a crashed run's) by deleting the
  object and creating its own, then checks after a moment that the object is still its own. A
  second run is refused at once, naming the holder."""

  def __init__(self, workdir: str, lease_s: float = 300.0, log: Callable[[str], None] = print):
    self.workdir = fs.absolute(workdir)
    self.path = fs.join(self.workdir, LOCK_FILE)
    self.lease_s = float(lease_s)
    self.log = log
    self.holder = (f"pid {os.getpid()} on {socket.gethostname()} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)[:300]})")
    self._file = None
    self._stop: threading.Event | None = None
    self._thread: threading.Thread | None = None

  def acquire(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    if fs.is_remote(self.workdir):
      self._acquire_remote()
    else:
      self._acquire_local()
    return self

  def _refuse(self, holder: str) -> None:
    raise ConfigError(f"--workdir={self.workdir} is in use by {holder}; wait for it to finish, "
                      "stop it, or use another workdir")

  def _acquire_local(self) -> None:
    os.makedirs(self.workdir, exist_ok=True)
    f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      self._refuse(holder)
    f.seek(0)
    f.truncate()
    f.write(self.holder)
    f.flush()
    self._file = f

  # gs://: the lease object.
  def _lease(self) -> bytes:
    return json.dumps({"holder": self.holder, "expires": time.time() + self.lease_s}).encode()

  def _read_lease(self) -> dict[str, Any] | None:
    try:
      return json.loads(fs.read_text(self.path))
    except FileNotFoundError:
      return None

  def _acquire_remote(self) -> None:
    import fsspec  # gcsfs's file system: its "create" mode is the generation precondition
    gcs = fsspec.filesystem(self.path.split("://", 1)[0])
    try:
      gcs.pipe_file(self.path, self._lease(), mode="create")
    except FileExistsError:
      held = self._read_lease()
      if held is not None and held["expires"] > time.time():
        self._refuse(f"{held['holder']} (lease until "
                     f"{time.strftime('%H:%M:%S', time.localtime(held['expires']))})")
      if held is not None:
        self.log(f"workdir lock: the lease of {held['holder']} expired; taking the workdir over")
      gcs.rm_file(self.path)
      try:
        gcs.pipe_file(self.path, self._lease(), mode="create")
      except FileExistsError:
        self._refuse((self._read_lease() or {}).get("holder", "another run"))
      time.sleep(min(1.0, self.lease_s / 10))
      mine = self._read_lease()
      if mine is None or mine["holder"] != self.holder:  # another successor raced us
        self._refuse((mine or {}).get("holder", "another run"))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._renew, args=(gcs,), daemon=True)
    self._thread.start()

  def _renew(self, gcs: Any) -> None:
    while not self._stop.wait(self.lease_s / 3):
      held = self._read_lease()
      if held is None or held["holder"] != self.holder:
        self.log(f"workdir lock: lost the lease on {self.workdir} (now {held}); another run may "
                 "write there")
        return
      gcs.pipe_file(self.path, self._lease())

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
      held = self._read_lease()
      if held is not None and held["holder"] == self.holder:
        fs.remove(self.path)


def holds_run(directory: str) -> bool:
  """Whether `directory` is a run directory of dots_jax.main (its config, checkpoints or metrics)."""
  return any(fs.exists(fs.join(directory, name))
             for name in (CONFIG_FILE, "checkpoints", "metrics.jsonl", LOCK_FILE))


def check_config(config: ml_collections.ConfigDict, workdir: str,
                 log: Callable[[str], None] = print) -> list[str]:
  """A resumed run's config against the committed one: refuses differences (naming every key,
  old -> new) unless `config.allow_config_change`, which logs them; returns them."""
  path = fs.join(workdir, CONFIG_FILE)
  if not fs.isfile(path):
    return []
  changes = config_changes(read_config(workdir), config)
  if changes and not config.allow_config_change:
    raise ConfigError(
        f"--workdir={workdir} was started with another config ({'; '.join(changes)}); resume "
        "with the same settings, use a new workdir, or pass --config.allow_config_change=True")
  if changes:
    log(f"allow_config_change: resuming with {len(changes)} change(s): {'; '.join(changes)}")
  return changes


def has_config(workdir: str) -> bool:
  return fs.isfile(fs.join(workdir, CONFIG_FILE))


def check_data(saved: dict[str, Any] | None, current: dict[str, Any], train_set: str,
               allow_change: bool, log: Callable[[str], None] = print) -> None:
  """A resume's training data against the fingerprint its checkpoint recorded (rows and a digest
  of the prepared questions, in order: selection state and replay refer to them by index).
  Checkpoints from before fingerprints have none and are not checked."""
  if not saved or (int(saved["rows"]), saved["sha256"]) == (current["rows"], current["sha256"]):
    return
  change = (f"config.data.train={train_set!r} now gives {current['rows']} questions "
            f"(sha256 {current['sha256'][:12]}), the checkpoint was made on {int(saved['rows'])} "
            f"(sha256 {str(saved['sha256'])[:12]})")
  if not allow_change:
    raise ConfigError(f"the training data changed since this run started: {change}; resume with "
                      "the same data, use a new workdir, or pass --config.allow_config_change=True")
  log(f"allow_config_change: resuming on other training data: {change}")


def commit_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """(Process 0) writes `config.json`: the loop calls it once a checkpoint made with this config
  exists, so a start that fails before its first checkpoint leaves the run's config as it was."""
  if jax.process_index() == 0:
    fs.write_text(fs.join(workdir, CONFIG_FILE), config.to_json(indent=2, sort_keys=True))


@dataclasses.dataclass
class TrainedPolicy:
  config: ml_collections.ConfigDict
  qcfg: qwen2.Qwen2Config
  graphdef: nnx.GraphDef
  params: nnx.State
  tokenizer_dir: str  # the initial policy's directory: its tokenizer files
  step: int


def checkpoint_steps(workdir: str) -> list[int]:
  """The verified checkpoint steps `workdir` holds now, in order (read only: nothing is created or
  changed, a trainer may be writing the run)."""
  return checkpoint.Checkpointer(workdir, keep=1, read_only=True).verified_steps() if fs.exists(
      fs.join(workdir, "checkpoints")) else []


def load_trained(workdir: str, step: int | None = None, mesh: Any = None,
                 log: Callable[[str], None] = print) -> TrainedPolicy:
  """The policy of `workdir`'s verified checkpoint `step` (default: the newest). Read only: a
  trainer may be saving and rotating the run meanwhile (`Checkpointer.restore_verified`)."""
  config = read_config(workdir)
  s = settings.read(config)
  if not checkpoint_steps(workdir):
    raise ConfigError(f"--workdir={workdir} has no verified checkpoint yet (config.ckpt.every="
                      f"{config.ckpt.every})")
  path = policy_path(s.model.path, s.tiny)
  qcfg, model = hf_io.load_policy(path, mesh=mesh, **s.model.runtime)
  graphdef, params = nnx.split(model)
  optimizer = update.make_optimizer(s.optimizer, s.total_steps, s.update.updates_per_step)
  shapes = jax.eval_shape(lambda p: update.init_train_state(p, optimizer, s.seed), params)
  if mesh is not None:
    shardings = update.train_state_shardings(optimizer, params, mesh)
  else:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: one, shapes)
  abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                          shapes, shardings)
  ckpt = checkpoint.Checkpointer(workdir, keep=1, read_only=True)
  try:
    state, _, step = ckpt.restore_verified(abstract, step, log)
  except checkpoint.CheckpointError as e:
    raise ConfigError(f"--workdir={workdir}: {e}") from None
  finally:
    ckpt.close()
  return TrainedPolicy(config, qcfg, graphdef, state.params, path, step)
