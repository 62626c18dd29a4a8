"""Checkpoints: the (sharded) train state and all host state of a run in one orbax step directory.

Layout: <workdir>/checkpoints/<step>/{state, host_arrays, host_json}. Orbax writes each step into a
temporary directory and renames it when complete, so a crash mid-save never leaves a step that `latest_step`
would pick; the last `keep` steps are kept.

Host state is any nested dict/list of JSON values and NumPy arrays (selector state, replay buffer, numpy
RNG state, data iterator position, metric history). Arrays go to a tensorstore item, the rest to JSON with
placeholders, and `restore` rebuilds the same structure (lists stay lists; int dict keys are not
supported by JSON and are rejected at save time). Empty and string arrays, which orbax's array store
refuses, are written into the JSON with their dtype and shape and come back as equal arrays.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dots_jax import fs

_ARRAY_TAG = "__ndarray__"
_INLINE_TAG = "__inline_ndarray__"  # [dtype str, shape, values]


def _split_host(tree: Any, arrays: dict[str, np.ndarray], path: str = "host") -> Any:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      if not isinstance(k, str):
        raise TypeError(f"host state key {k!r} at {path} is not a string (JSON cannot keep it)")
      out[k] = _split_host(v, arrays, f"{path}/{k}")
    return out
  if isinstance(tree, (list, tuple)):
    return [_split_host(v, arrays, f"{path}/{i}") for i, v in enumerate(tree)]
  if isinstance(tree, (np.ndarray, jax.Array)):
    a = np.asarray(tree)
    if a.size == 0 or a.dtype.kind in "US":
      return {_INLINE_TAG: [a.dtype.str, list(a.shape), a.tolist()]}
    key = f"a{len(arrays):05d}"
    arrays[key] = a
    return {_ARRAY_TAG: key}
  if isinstance(tree, np.generic):
    return tree.item()
  if tree is None or isinstance(tree, (bool, int, float, str)):
    return tree
  raise TypeError(f"host state leaf at {path} has unsupported type {type(tree).__name__}")


def _join_host(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
  if isinstance(tree, dict):
    if set(tree) == {_ARRAY_TAG}:
      return np.asarray(arrays[tree[_ARRAY_TAG]])
    if set(tree) == {_INLINE_TAG}:
      dtype, shape, values = tree[_INLINE_TAG]
      return np.asarray(values, np.dtype(dtype)).reshape(shape)
    return {k: _join_host(v, arrays) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_join_host(v, arrays) for v in tree]
  return tree


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with each array's sharding) to restore a state shaped and placed like `tree`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class Checkpointer:
  """Saves/restores (train_state, host_state) per step under <workdir>/checkpoints."""

  def __init__(self, workdir: str, keep: int, *, async_save: bool = False):
    if keep < 1:
      raise ValueError(f"config.ckpt.keep must be >= 1, got {keep}")
    self.async_save = async_save
    self.directory = fs.join(fs.absolute(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, train_state: Any, host_state: dict[str, Any]) -> None:
    """Writes step `step` (blocks until durable unless async_save; `wait()` then)."""
    arrays: dict[str, np.ndarray] = {"count": np.asarray(0)}
    host_json = _split_host(host_state, arrays)
    arrays["count"] = np.asarray(len(arrays) - 1)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state),
        host_arrays=ocp.args.StandardSave(arrays),
        host_json=ocp.args.JsonSave(host_json)), force=True)
    if not self.async_save:
      self.manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(train_state, host_state) of `step` (default: latest). `abstract_state` gives shapes/shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        host_arrays=ocp.args.StandardRestore(),
        host_json=ocp.args.JsonRestore()))
    arrays = {k: np.asarray(v) for k, v in out.host_arrays.items()}
    return out.state, _join_host(out.host_json, arrays)

  def restore_or_init(self, init_state: Any) -> tuple[Any, dict[str, Any] | None, int | None]:
    """Automatic resume: (latest state, host state, step) if a checkpoint exists, else
    (init_state, None, None). Restored arrays take `init_state`'s shardings."""
    step = self.latest_step()
    if step is None:
      return init_state, None, None
    state, host = self.restore(abstract_like(init_state), step)
    return state, host, step

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


class PreemptionWatch:
  """Tells the loop when to checkpoint and stop before the machine goes away: on SIGTERM (the notice
  Cloud TPU, GKE and SLURM send before preempting) or at orbax's multi-host preemption sync point,
  which makes every process stop at the same step. With several processes only the sync point
  counts: a signal seen by one process alone must not make it save a step the others do not."""

  def __init__(self, ckpt: Checkpointer):
    self.ckpt = ckpt
    self.signalled = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum: int, frame: Any) -> None:
    del signum, frame
    self.signalled = True

  def reached(self, step: int) -> bool:
    synced = bool(self.ckpt.manager.reached_preemption(step))
    return synced or (self.signalled and jax.process_count() == 1)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
