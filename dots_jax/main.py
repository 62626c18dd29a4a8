"""Entry point: `python -m dots_jax.main --config=configs/tiny.py --workdir=/tmp/run`.

Config overrides are absl flags (`--config.rl.lr=3e-5`, `--config.method=dots_rr`) or config-file
arguments (`--config=configs/qwen7b.py:method=dots_rr`). An existing workdir resumes. Multi-host runs
(TPU pod slices, SLURM) call `jax.distributed.initialize()` first; see launch/.

`--list_config` prints every key of the --config (default configs/tiny.py) with its value, and the
methods `--config.method` takes, then exits.
"""

import importlib.util
import os
import sys

# transformers (tokenizers only here) warns at first use that PyTorch is absent: true, and no concern
# of a JAX job.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "config file, e.g. configs/tiny.py (with :arg, e.g. configs/tiny.py:micro); "
    "override any key as --config.KEY=VALUE; --list_config prints the keys and the methods",
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
_DEBUG = flags.DEFINE_bool(
    "debug", False, "show the traceback of an error a user can fix (it is one line otherwise)")
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
  if _CPU_COLLECTIVES.value:
    jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and _cluster_detected()):
    jax.distributed.initialize()  # TPU pod slices, SLURM, ... describe themselves
  # Imported only now: nothing may start a JAX backend before jax.distributed.initialize().
  from dots_jax import train
  try:
    summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value or "")
  except Exception as e:  # noqa: BLE001 - one line for what a user can fix; bugs keep their trace
    message = error_line(e, _WORKDIR.value or "")
    if message is None or _DEBUG.value:
      raise
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
  if jax.process_index() == 0 and summary.get("workdir") and not summary["preempted"]:
    for line in next_commands(summary, config_flags.get_config_filename(flags.FLAGS["config"])):
      print(line, flush=True)


def error_line(e: BaseException, workdir: str) -> str | None:
  """The one line for an error the user can fix (a setting, a file, a diverged run, a full disk),
  or None for anything else (a bug: its traceback is shown)."""
  from dots_jax.config_common import UserError
  from dots_jax.rl.update import DivergenceError, NonFiniteError
  full = _disk_full(e)
  if full is not None:
    from dots_jax.run.workdir import checkpoint_steps
    steps = checkpoint_steps(workdir) if workdir else []
    resume = f"step {max(steps)}" if steps else "its start (no checkpoint was saved)"
    return f"no space left writing {full or workdir}; free space and rerun: the run resumes from {resume}"
  if isinstance(e, (UserError, DivergenceError, NonFiniteError)):
    return " ".join(str(e).split())  # one line, whatever the message's layout
  return None


def _disk_full(e: BaseException) -> str | None:
  """The path a full disk refused (or "" when unnamed), if ENOSPC is anywhere in `e`'s chain."""
  import errno
  import re
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return e.filename or ""
    if "No space left on device" in str(e):
      found = re.search(r"(/[^\s'\"]+)", str(e))
      return found.group(1) if found else ""
    e = e.__cause__ or e.__context__
  return None


def next_commands(summary: dict, config_file: str) -> list[str]:
  """What to run next on a finished run: export, evaluate, compare (console lines)."""
  w = summary["workdir"].rstrip("/")
  other = "dots_rr" if summary["method"] == "grpo" else summary["method"]
  return ["   next:",
          f"     python -m dots_jax.tools.export --workdir={w} --out={w}_hf   # the policy as a "
          "Hugging Face directory",
          f"     python -m dots_jax.evaluate --workdir={w}   # evaluate a checkpoint again "
          "(--step=S)",
          f"     python -m dots_jax.compare --config={config_file} --methods=grpo,{other} "
          f"--seeds={summary['seed']} --workdir={w}_compare   # methods side by side"]


def _unknown_override(argv: list[str]) -> str | None:
  """'--config.x.y: no key ...; did you mean ...' for the first override the config file lacks."""
  from dots_jax.config_common import all_keys, unknown_key_message
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  config = _load_config_file(spec)
  keys = set(all_keys(config))
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      key = a[len("--config."):].split("=", 1)[0]
      if key not in keys and not any(k.startswith(key + ".") for k in keys):
        return f"--config.{key}: {unknown_key_message(config, key)}"
  return None


def _fatal(message: str) -> None:
  print(f"FATAL: {message}", file=sys.stderr)
  sys.exit(2)


def _list_config(argv: list[str]) -> None:
  """Prints every key of the --config (default configs/tiny.py) with its value, and the methods."""
  from dots_jax.config_common import all_keys
  from dots_jax.methods import METHODS
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "configs/tiny.py")
  config = _load_config_file(spec)
  for key in all_keys(config):
    node = config
    for part in key.split("."):
      node = node[part]
    print(f"--config.{key}={node!r}")
  print("methods (--config.method): " + ", ".join(
      f"{name} ({m.source} source, {m.filter} filter{', replay' if m.replay else ''})"
      for name, m in sorted(METHODS.items())))


def _load_config_file(spec: str):
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    _fatal(f"--config={spec}: no such file {path!r} (the configs are in configs/: "
           f"{', '.join(sorted(f for f in os.listdir('configs') if f.endswith('.py'))) if os.path.isdir('configs') else 'none here'})")
  module_spec = importlib.util.spec_from_file_location("_dots_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad config file, a mistyped config override or a value that does not
  parse is one line naming it; --help exits 0 and says how to list the config keys."""
  if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
    print(__doc__.strip() + "\n\n" + flags.FLAGS.module_help(sys.modules[__name__]))
    sys.exit(0)
  if "--list_config" in argv[1:]:
    _list_config(argv)
    sys.exit(0)
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is not None and not os.path.isfile(spec.partition(":")[0]):
    _load_config_file(spec)  # the one-line error naming the file
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    message = _unknown_override(argv)
    if message is None:
      if isinstance(e, flags.Error):
        _fatal(str(e).splitlines()[0])
      raise
    _fatal(message)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=_parse_flags)
