"""launch/local_cpu_2proc.sh: two CPU processes (jax.distributed + gloo) reproduce a one-process run.

Both runs see 2 devices in a data=2 mesh over the same global batch (one process with 2 devices vs two
processes with 1 each), so rollouts, rewards and selection must match exactly and losses to float noise.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config=configs/tiny.py:micro", "--config.total_steps=2"]
TIMEOUT_S = 180
# Wall-clock measurements differ between any two runs; everything else is a function of the inputs.
TIMING_KEYS = ("time/", "progress/seconds", "eval/seconds", "selection/overhead_s",
               "selection/diagnostic_s", "rollout/tokens_per_s", "train/tokens_per_s")
# Reductions over a differently split batch may round differently; these are compared to ~1e-5
# (the training step's, and the exact pass rates' forward passes).
FLOAT_NOISE_PREFIX = ("train/", "selection/exact_pass_rate", "selection/signal_share_exact",
                      "selection/pool_signal_share_exact", "selection/pred_pearson_exact",
                      "selection/pred_abs_err_exact")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(cmd: list[str], env: dict[str, str], log_path: str) -> None:
  """Runs `cmd` in its own process group; kills the whole group (both trainers) on timeout or error."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=TIMEOUT_S)
    except BaseException:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      raise
  if rc != 0:
    with open(log_path) as f:
      tail = f.read()[-4000:]
    raise AssertionError(f"{' '.join(cmd)} exited with {rc}; log {log_path}:\n{tail}")


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def same(a, b, rel: float) -> bool:
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  if rel == 0.0 or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
    return a == b
  return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


def test_two_processes_match_one(tmp_path, shared_tiny):
  env = dict(os.environ, DOTS_JAX_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
             JAX_PLATFORMS="cpu", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  # The session's micro base and prepared data (conftest), built here if no test made them yet.
  flags = [*FLAGS, f"--config.tiny.cache_dir={shared_tiny / 'tiny'}",
           f"--config.data.prepared_dir={shared_tiny / 'prepared'}"]
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  run([sys.executable, "-m", "dots_jax.main", f"--workdir={one}", *flags],
      dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2"), str(tmp_path / "one.log"))
  run(["bash", os.path.join(REPO, "launch", "local_cpu_2proc.sh"), two, *flags],
      dict(env, PORT=str(free_port()), DEVICES_PER_PROCESS="1"), str(tmp_path / "two.log"))

  with open(two + ".proc0.log") as f:
    assert "process 0/2" in f.read()  # really two processes (process 0 prints the banners)
  ref, got = read_metrics(one), read_metrics(two)
  assert [r["step"] for r in got] == [r["step"] for r in ref] == [0, 1, 2]
  for r, g in zip(ref, got):
    assert set(r) == set(g), (r["step"], set(r) ^ set(g))
    for key in r:
      if key.startswith(TIMING_KEYS):
        continue
      rel = 1e-5 if key.startswith(FLOAT_NOISE_PREFIX) else 0.0
      assert same(r[key], g[key], rel), (r["step"], key, r[key], g[key])
  assert ref[-1]["progress/rollouts"] == 2 * 8 * 4
