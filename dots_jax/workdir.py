"""What a run directory holds beyond checkpoints: the config it was started with (`config.json`),
checked on every resume, and the trained policy read back from a checkpoint (export, evaluation).

  * `record_config(config, workdir)`: writes `config.json`; on a resume, refuses a config that
    differs from the saved one in anything but the keys of `RESUMABLE_CHANGES` (naming every
    differing key, old -> new), unless `config.allow_config_change` is set.
  * `read_config(workdir)`: the saved config as a ConfigDict over today's defaults.
  * `checkpoint_steps(workdir, config)`: the steps the run holds checkpoints of.
  * `load_trained(workdir, step)`: (config, policy architecture, params at that checkpoint,
    tokenizer directory), what `dots_jax.tools.export` and `dots_jax.evaluate --workdir` need.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
from flax import nnx

from dots_jax import fs
from dots_jax.config_base import base_config
from dots_jax.config_common import ConfigError, all_keys, policy_runtime
from dots_jax.model import hf_io, qwen2
from dots_jax.rl import checkpoint, update
from dots_jax.policy import policy_path

CONFIG_FILE = "config.json"
# Changing these does not change what the run computes up to the resume point: a longer run, other
# logging, checkpoint or evaluation cadence, another place for the compiled programs.
RESUMABLE_CHANGES = ("total_steps", "log.", "ckpt.", "eval.", "allow_config_change", "dry_run",
                     "compilation_cache")


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
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      changes.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
  return changes


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config `workdir` was started with, over today's defaults (tuples restored)."""
  path = fs.join(workdir, CONFIG_FILE)
  if not fs.isfile(path):
    raise ConfigError(f"{path} does not exist: --workdir must be a run directory of "
                      "`python -m dots_jax.main` (it writes config.json at start-up)")
  saved = json.loads(fs.read_text(path))
  c = base_config()

  def merge(node: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
    for k, v in values.items():
      if k in node and isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, dict):
        merge(node[k], v)
      elif k in node and isinstance(node[k], tuple):
        node[k] = tuple(v)
      else:  # also keys this code no longer has: kept, so they stay visible
        node[k] = v

  merge(c, saved)
  return c


def record_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Checks a resumed run's config against the saved one, then (process 0) writes `config.json`."""
  path = fs.join(workdir, CONFIG_FILE)
  if fs.isfile(path):
    changes = config_changes(read_config(workdir), config)
    if changes and not config.allow_config_change:
      raise ConfigError(
          f"--workdir={workdir} was started with another config ({'; '.join(changes)}); resume "
          "with the same settings, use a new workdir, or pass --config.allow_config_change=True")
  if jax.process_index() == 0:
    fs.write_text(path, config.to_json(indent=2, sort_keys=True))


@dataclasses.dataclass
class TrainedPolicy:
  config: ml_collections.ConfigDict
  qcfg: qwen2.Qwen2Config
  graphdef: nnx.GraphDef
  params: nnx.State
  tokenizer_dir: str  # the initial policy's directory: its tokenizer files
  step: int


def checkpoint_steps(workdir: str, config: ml_collections.ConfigDict) -> list[int]:
  """The steps `workdir` holds a checkpoint of, in order ([] without creating anything when the run
  has none)."""
  if not fs.exists(fs.join(workdir, "checkpoints")):
    return []
  ckpt = checkpoint.Checkpointer(workdir, keep=max(1, config.ckpt.keep))
  steps = sorted(ckpt.all_steps())
  ckpt.close()
  return steps


def load_trained(workdir: str, step: int | None = None, mesh: Any = None) -> TrainedPolicy:
  """The policy of `workdir`'s checkpoint `step` (default: the latest)."""
  config = read_config(workdir)
  steps = checkpoint_steps(workdir, config)
  if not steps:
    raise ConfigError(f"--workdir={workdir} has no checkpoint yet (config.ckpt.every="
                      f"{config.ckpt.every})")
  step = max(steps) if step is None else step
  if step not in steps:
    raise ConfigError(f"--step={step}: {workdir} holds checkpoints {steps}")
  path = policy_path(config)
  qcfg, model = hf_io.load_policy(path, mesh=mesh, **policy_runtime(config))
  graphdef, params = nnx.split(model)
  ucfg = update.UpdateConfig.from_config(config)
  optimizer = update.make_optimizer(config.rl, config.total_steps, ucfg.updates_per_step)
  shapes = jax.eval_shape(lambda p: update.init_train_state(p, optimizer, config.seed), params)
  if mesh is not None:
    shardings = update.train_state_shardings(optimizer, params, mesh)
  else:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: one, shapes)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          shapes, shardings)
  ckpt = checkpoint.Checkpointer(workdir, keep=max(1, config.ckpt.keep))
  state, _ = ckpt.restore(abstract, step)
  ckpt.close()
  return TrainedPolicy(config, qcfg, graphdef, state.params, path, step)
