"""Checkpoints: the (sharded) train state and all host state of a run in one orbax step directory.

Layout: <workdir>/checkpoints/<step>/{state, host_arrays, host_json}. Orbax writes each step into a
temporary directory and renames it when complete, so a crash mid-save never leaves a step that `latest_step`
would pick; the last `keep` steps are kept.

Verified: once a step is durable, <workdir>/checkpoints_verified/<step>.json records a digest of its
train state (two 32-bit position-weighted sums of every leaf's bits, computed where the arrays live)
and of its host state (sha256). `restore_or_init` restores the newest step whose contents match its
digest; a step that fails to restore or does not match is moved to <workdir>/checkpoints_corrupt/
(nothing is deleted) with one line saying why, and the next older one is tried. A step with no
digest (written before digests existed, or cut off between the save and its digest) is used only
when no verified step restores, with a line saying so; one newer than the step resumed from is moved
aside too (it would block the run's next saves).

Host state is any nested dict/list of JSON values and NumPy arrays (selector state, replay buffer, numpy
RNG state, data iterator position, metric history). Arrays go to a tensorstore item, the rest to JSON with
placeholders, and `restore` rebuilds the same structure (lists stay lists; int dict keys are not
supported by JSON and are rejected at save time). Empty and string arrays, which orbax's array store
refuses, are written into the JSON with their dtype and shape and come back as equal arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dots_jax import fs
from dots_jax.config_common import UserError

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


class CheckpointError(UserError, RuntimeError):
  """No checkpoint of the run restores and verifies; the message says which and why, in one line."""


@jax.jit
def _leaf_digest(x: jax.Array) -> jax.Array:
  """uint32[2]: two position-weighted sums of the leaf's bits (mod 2**32); any changed element
  changes them but with probability ~2**-64."""
  flat = x.reshape(-1)
  if flat.dtype == jnp.bool_:
    bits = flat.astype(jnp.uint32)
  elif flat.dtype.itemsize == 8:
    bits = jax.lax.bitcast_convert_type(flat, jnp.uint32).reshape(-1)
  elif flat.dtype.itemsize == 4:
    bits = jax.lax.bitcast_convert_type(flat, jnp.uint32)
  elif flat.dtype.itemsize == 2:
    bits = jax.lax.bitcast_convert_type(flat, jnp.uint16).astype(jnp.uint32)
  else:
    bits = jax.lax.bitcast_convert_type(flat, jnp.uint8).astype(jnp.uint32)
  i = jnp.arange(bits.shape[0], dtype=jnp.uint32)
  rotated = (bits << 7) | (bits >> 25)
  h1 = jnp.sum(bits * (i * jnp.uint32(2654435761) + jnp.uint32(1)), dtype=jnp.uint32)
  h2 = jnp.sum(rotated * (i * jnp.uint32(2246822519) + jnp.uint32(3266489917)), dtype=jnp.uint32)
  return jnp.stack([h1, h2])


def state_digest(tree: Any) -> list[str]:
  """The train state's digest: one hex string per leaf (its path, dtype, shape and `_leaf_digest`)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  sums = jax.device_get([_leaf_digest(jnp.asarray(x)) if np.size(x) else jnp.zeros(2, jnp.uint32)
                         for _, x in leaves])
  return [f"{jax.tree_util.keystr(path)}:{np.dtype(x.dtype).str}:{tuple(np.shape(x))}:"
          f"{int(h[0]):08x}{int(h[1]):08x}" for (path, x), h in zip(leaves, sums)]


def host_digest(host_json: Any, arrays: dict[str, np.ndarray]) -> str:
  """sha256 of the host state as saved: its JSON and every array's name, dtype, shape and bytes."""
  h = hashlib.sha256(json.dumps(host_json, sort_keys=True).encode())
  for name in sorted(arrays):
    a = np.ascontiguousarray(np.asarray(arrays[name]))
    h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with each array's sharding) to restore a state shaped and placed like `tree`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class Checkpointer:
  """Saves/restores (train_state, host_state) per step under <workdir>/checkpoints; keeps the newest
  `keep` steps (and the newest verified one, should the newer ones lack digests).

  `read_only`: a reader of a run another process may be writing (evaluation, export). It never
  saves, rotates, deletes or moves anything, restores verified steps only, and when the step it
  reads is rotated away under it, moves on to the newest verified one (`restore_verified`)."""

  def __init__(self, workdir: str, keep: int, *, async_save: bool = False, read_only: bool = False):
    if keep < 1:
      raise ValueError(f"config.ckpt.keep must be >= 1, got {keep}")
    self.async_save = async_save
    self.read_only = read_only
    workdir = fs.absolute(workdir)
    self.directory = fs.join(workdir, "checkpoints")
    self.verified_dir = fs.join(workdir, "checkpoints_verified")
    self.corrupt_dir = fs.join(workdir, "checkpoints_corrupt")
    self.keep = keep
    # Rotation is ours (`_mark_verified`): old steps go only once a newer one is marked verified.
    self._options = ocp.CheckpointManagerOptions(max_to_keep=None, create=not read_only,
                                                 enable_async_checkpointing=async_save,
                                                 read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)
    self._pending: list[tuple[int, dict[str, Any]]] = []  # digests of saves still being written

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def verified_steps(self) -> list[int]:
    """Steps with a recorded digest (durable, complete), oldest first, as the directory lists them
    now (another process may be saving and rotating)."""
    names = fs.listdir(self.verified_dir)
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

  def save(self, step: int, train_state: Any, host_state: dict[str, Any]) -> None:
    """Writes step `step` (blocks until durable unless async_save; `wait()` then)."""
    self._writable("save")
    arrays: dict[str, np.ndarray] = {"count": np.asarray(0)}
    host_json = _split_host(host_state, arrays)
    arrays["count"] = np.asarray(len(arrays) - 1)
    if self._pending:  # the previous async save: durable before this one starts (orbax waits too)
      self.wait()
    # The digest is taken now, from what is being saved (the caller donates the state next step).
    digest = {"step": int(step), "state": state_digest(train_state),
              "host": host_digest(host_json, arrays)}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state),
        host_arrays=ocp.args.StandardSave(arrays),
        host_json=ocp.args.JsonSave(host_json)), force=True)
    self._pending.append((int(step), digest))
    if not self.async_save:
      self.wait()

  def _mark_verified(self) -> None:
    """Records the digests of the saves that are now durable, then rotates: keeps the newest `keep`
    steps, and never the newest verified one among those it removes (with its digest)."""
    if jax.process_index() == 0:
      for step, digest in self._pending:
        fs.write_text(fs.join(self.verified_dir, f"{step}.json"), json.dumps(digest))
    self._pending = []
    steps = sorted(self.all_steps())
    verified = [s for s in steps if self._recorded_digest(s) is not None]
    keep = set(steps[-self.keep:]) | set(verified[-1:])
    for step in steps:
      if step not in keep:
        try:
          self.manager.delete(step)
        except Exception:  # noqa: BLE001 - a step already gone is deleted; anything else is not
          if fs.exists(fs.join(self.directory, str(step))):
            raise
    if jax.process_index() == 0:
      for name in fs.listdir(self.verified_dir):
        if name.endswith(".json") and int(name[:-5]) not in keep:
          fs.remove(fs.join(self.verified_dir, name))

  def _recorded_digest(self, step: int) -> dict[str, Any] | None:
    path = fs.join(self.verified_dir, f"{step}.json")
    try:
      return json.loads(fs.read_text(path))
    except FileNotFoundError:  # never recorded, or rotated away meanwhile
      return None

  def _writable(self, what: str) -> None:
    if self.read_only:
      raise RuntimeError(f"a read-only Checkpointer does not {what} ({self.directory})")

  def restore(self, abstract_state: Any, step: int | None = None, *, verify: bool = True
              ) -> tuple[Any, dict[str, Any]]:
    """(train_state, host_state) of `step` (default: latest). `abstract_state` gives shapes/shardings.
    With `verify`, a step whose contents do not match its recorded digest raises CheckpointError."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        host_arrays=ocp.args.StandardRestore(),
        host_json=ocp.args.JsonRestore()))
    arrays = {k: np.asarray(v) for k, v in out.host_arrays.items()}
    recorded = self._recorded_digest(step) if verify else None
    if recorded is not None:
      bad = [name for name, ok in (
          ("train state", state_digest(out.state) == recorded["state"]),
          ("host state", host_digest(out.host_json, arrays) == recorded["host"])) if not ok]
      if bad:
        raise CheckpointError(f"checkpoint step {step}: its {' and '.join(bad)} does not match the "
                              f"digest recorded when it was saved (changed on disk)")
    return out.state, _join_host(out.host_json, arrays)

  def restore_verified(self, abstract_state: Any, step: int | None = None,
                       log: Callable[[str], None] = print) -> tuple[Any, dict[str, Any], int]:
    """(train_state, host_state, step) of verified step `step`, or of the newest verified step. The
    reader's way in: when the step is rotated away while it is read (a trainer saving meanwhile),
    the newest verified step is read instead (a step asked for by number: a CheckpointError naming
    the steps there are now). A step whose contents do not match their digest is a CheckpointError."""
    tried: set[int] = set()
    while True:
      verified = self.verified_steps()
      target = step if step is not None else max((v for v in verified if v not in tried),
                                                 default=None)
      if target is None or target not in verified:
        asked = f"step {step}" if step is not None else "a verified step"
        raise CheckpointError(f"{self.directory} holds no verified {asked} (verified now: "
                              f"{verified or 'none'})")
      try:
        with _quiet_orbax():
          self._reload()  # the listing as it is now
          state, host = self.restore(abstract_state, target)
        return state, host, target
      except CheckpointError:
        raise
      except Exception as e:  # noqa: BLE001 - a step rotated away mid-read fails in many ways
        if fs.exists(fs.join(self.verified_dir, f"{target}.json")) and fs.exists(
            fs.join(self.directory, str(target))):
          raise
        tried.add(target)
        if step is not None:
          raise CheckpointError(f"checkpoint step {step} of {self.directory} was removed while it "
                                f"was read (the run rotated it away); verified now: "
                                f"{self.verified_steps() or 'none'}") from None
        log(f"checkpoint step {target} was rotated away while it was read "
            f"({type(e).__name__}); reading the newest verified step instead")

  def _reload(self) -> None:
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def restore_or_init(self, init_state: Any, log: Callable[[str], None] = print
                      ) -> tuple[Any, dict[str, Any] | None, int | None]:
    """Automatic resume from the newest step that restores and verifies (module docstring), else
    (init_state, None, None) when the run has no checkpoint. Restored arrays take `init_state`'s
    shardings. Raises CheckpointError when steps exist but none restores."""
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return init_state, None, None
    abstract = abstract_like(init_state)
    unverified = [s for s in steps if self._recorded_digest(s) is None]
    failures = []
    for step in [s for s in steps if s not in unverified] + unverified:
      if step in unverified:
        log(f"checkpoint step {step} has no recorded digest (saved before digests existed, or cut "
            f"off before it was marked complete): restoring it unverified")
      try:
        with _quiet_orbax():
          state, host = self.restore(abstract, step)
      except CheckpointError as e:
        reason = str(e)
      except Exception as e:  # noqa: BLE001 - any failure to read a step is a broken step
        reason = (f"checkpoint step {step} does not restore ({type(e).__name__}: "
                  f"{_first_line(e)})")
      else:
        # Newer steps not taken (they have no digest) would block this run's next saves.
        for newer in [s for s in steps if s > step and s in self.all_steps()]:
          log(f"checkpoint step {newer} has no recorded digest and the run goes on from verified "
              f"step {step}: moved to {self._quarantine(newer)}")
        return state, host, step
      failures.append(reason)
      log(f"{reason}; moved to {self._quarantine(step)}, trying the step before it")
    raise CheckpointError(f"no checkpoint under {self.directory} restores: "
                          + "; ".join(failures))

  def _quarantine(self, step: int) -> str:
    """Moves a broken step (and its digest) out of the manager's directory, keeping its files."""
    self._writable("move steps aside")
    name, n = str(step), 1
    while fs.exists(fs.join(self.corrupt_dir, name)):  # an earlier one of the same step stays
      n += 1
      name = f"{step}-{n}"
    dst = fs.join(self.corrupt_dir, name)
    if jax.process_index() == 0:
      fs.move(fs.join(self.directory, str(step)), dst)
      digest = fs.join(self.verified_dir, f"{step}.json")
      if fs.exists(digest):
        fs.move(digest, fs.join(self.corrupt_dir, f"{name}.json"))
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)
    return dst

  def wait(self) -> None:
    if self.read_only:
      return
    self.manager.wait_until_finished()
    self._mark_verified()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0][:300] if text else ""


class _quiet_orbax:
  """Keeps orbax's and absl's logging of a failed restore (tracebacks, event-loop noise) off the
  console while a step is tried; the failure itself is reported in one line."""

  def __enter__(self):
    self._levels = {}
    for name in ("absl", "orbax", "orbax.checkpoint", "asyncio", "tensorstore"):
      logger = logging.getLogger(name)
      self._levels[name] = logger.level
      logger.setLevel(logging.CRITICAL)
    return self

  def __exit__(self, *exc):
    for name, level in self._levels.items():
      logging.getLogger(name).setLevel(level)
    return False


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
