"""Entry point: `python -m dots_jax.main --config=configs/tiny.py --workdir=/tmp/run`.

Config overrides are absl flags (`--config.rl.lr=3e-5`, `--config.method=dots_rr`) or config-file
arguments (`--config=configs/qwen7b.py:method=dots_rr`). An existing workdir resumes. Multi-host runs
(TPU pod slices, SLURM) call `jax.distributed.initialize()` first; see launch/.
"""

import importlib.util
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, summary)")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): 'auto' = when a cluster environment (TPU pod, SLURM, "
    "JAX_COORDINATOR_ADDRESS) is detected")
_CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", "", "jax_cpu_collectives_implementation for multi-process CPU runs (gloo)")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "host:port of process 0 (else auto-detected)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the job (with --coordinator)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's id (with --coordinator)")
_LIBRARY_LOGS = flags.DEFINE_bool(
    "library_logs", False, "show INFO logs of libraries (orbax logs every checkpoint file operation); "
    "progress lines are printed either way")


def _cluster_detected() -> bool:
  return any(os.environ.get(k) for k in (
      "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _LIBRARY_LOGS.value:
    # Orbax and JAX log through absl at INFO; at that level they drown the progress lines.
    from absl import logging
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if config.dry_run and config.plan_compile and not os.environ.get("JAX_PLATFORMS"):
    # Compile for the configured mesh on this machine's CPU: as many host devices as it names.
    n = 1
    for axis in ("data", "fsdp", "tensor"):
      n *= max(1, config.mesh[axis])
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")
  if _CPU_COLLECTIVES.value:
    jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and _cluster_detected()):
    jax.distributed.initialize()  # TPU pod slices, SLURM, ... describe themselves
  # Imported only now: nothing may start a JAX backend before jax.distributed.initialize().
  from dots_jax import train
  from dots_jax.config_common import ConfigError
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value or "")
  except ConfigError as e:
    raise app.UsageError(str(e)) from None


def _unknown_override(argv: list[str]) -> str | None:
  """'--config.x.y: no key ...; did you mean ...' for the first override the config file lacks."""
  from dots_jax.config_common import all_keys, unknown_key_message
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_dots_jax_config", path)
  if module_spec is None or module_spec.loader is None:
    return None
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  keys = set(all_keys(config))
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      key = a[len("--config."):].split("=", 1)[0]
      if key not in keys and not any(k.startswith(key + ".") for k in keys):
        return f"--config.{key}: {unknown_key_message(config, key)}"
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a mistyped config override is one line naming the closest keys."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, flags.Error):
    message = _unknown_override(argv)
    if message is None:
      raise
    print(f"FATAL: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=_parse_flags)
