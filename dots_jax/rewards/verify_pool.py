"""A pool of spawned processes that run math-verify with a hard per-answer timeout.

math-verify (sympy underneath) can take unbounded time or memory on hostile input (`10^{10^{10}}`, deep
nesting). Its own timeouts use SIGALRM, which neither works off the main thread nor interrupts C code, so
the pool enforces the limit from outside: a worker still busy when its answer's deadline passes is killed
and replaced, and that answer is scored 0 with reason "timeout". Workers are started by a forkserver
(safe next to JAX's threads, like spawn) and announce readiness only after importing math-verify, so
their start-up time never counts against an answer.
"""

import atexit
import contextlib
import functools
import logging
import math
import multiprocessing as mp
import os
import sys
import threading
import time
import types
from multiprocessing.connection import Connection, wait

_READY = "ready"
VERIFIED = "verified"
MISMATCH = "mismatch"
PARSE_FAIL = "parse_fail"
TIMEOUT = "timeout"
WORKER_CRASH = "worker_crash"
ERROR = "error"


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout_s: int | None) -> list:
  # A GRPO group sends one gold with several distinct answers: parse it once per worker.
  from math_verify import parse
  return parse("\\boxed{" + gold + "}", parsing_timeout=timeout_s)


def _verify_one(gold: str, pred: str, timeout_s: int | None = None) -> str:
  from math_verify import parse, verify  # imported at worker start; cached afterwards
  gold_parsed = _parse_gold(gold, timeout_s)
  if not gold_parsed:
    return PARSE_FAIL + "_gold"
  pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=timeout_s)
  if not pred_parsed:
    return PARSE_FAIL
  return VERIFIED if verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s) else MISMATCH


def run_inline(jobs: list[tuple[str, str]], timeout_s: float) -> list[str]:
  """workers=0: verify in this process. Only math-verify's own SIGALRM timeouts apply (main thread
  only, and they cannot interrupt C code), so a hostile answer can stall; use workers >= 1 in training."""
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  limit = max(1, math.ceil(timeout_s)) if threading.current_thread() is threading.main_thread() else None
  results = []
  for gold, pred in jobs:
    try:
      results.append(_verify_one(gold, pred, limit))
    except Exception as e:  # scored 0 and counted, like a worker's exception
      results.append(ERROR + ":" + type(e).__name__)
  return results


def _worker_main(conn: Connection) -> None:
  # The pool enforces timeouts itself; silence math-verify's warning that its own are disabled.
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  import math_verify  # noqa: F401  (pay the sympy import before announcing readiness)
  conn.send(_READY)
  while True:
    try:
      job = conn.recv()
    except EOFError:
      return
    if job is None:
      return
    try:
      result = _verify_one(*job)
    except Exception as e:  # never let one answer kill the worker; the parent counts it
      result = ERROR + ":" + type(e).__name__
    conn.send(result)


@contextlib.contextmanager
def _hide_main_module():
  """Starts workers without re-importing the parent's __main__ in them.

  multiprocessing normally re-imports the main script or module (e.g. `dots_jax.main`, and with it
  JAX) in every child; workers only need this module, so that would add seconds to every start and
  every replacement of a killed worker, and break scripts without an `if __name__ == "__main__"` guard.
  """
  main = sys.modules.get("__main__")
  sys.modules["__main__"] = types.ModuleType("__main__")
  try:
    yield
  finally:
    sys.modules["__main__"] = main


class _Worker:

  def __init__(self, ctx):
    self.conn, child = ctx.Pipe()
    self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
    with _hide_main_module():
      self.proc.start()
    child.close()
    self.ready = False
    self.job_id: int | None = None
    self.deadline = 0.0

  def kill(self) -> None:
    if self.proc.is_alive():
      self.proc.kill()
    self.proc.join(timeout=5)
    self.conn.close()


class VerifyPool:
  """`run(jobs, timeout_s)` maps (gold, pred) pairs to outcome strings; never raises on bad answers."""

  def __init__(self, workers: int):
    if workers < 1:
      raise ValueError(f"reward workers must be >= 1, got {workers} (config.reward.workers)")
    # forkserver: a clean server process (no JAX threads, like spawn) that has imported and warmed up
    # math-verify once (`warm`); each worker is forked from it and is ready in milliseconds, so
    # replacing a killed worker does not leave the pool short for the seconds a sympy import takes.
    self._ctx = mp.get_context("forkserver")
    self._ctx.set_forkserver_preload(["dots_jax.rewards.warm", "dots_jax.rewards.verify_pool"])
    self._workers = [_Worker(self._ctx) for _ in range(workers)]
    self.replaced = 0
    self._startup_failures = 0
    self._lock = threading.Lock()

  def _replace(self, worker: _Worker) -> None:
    if not worker.ready:
      # A worker that dies before importing math-verify is a broken environment, not a hostile answer.
      self._startup_failures += 1
      if self._startup_failures > 3:
        raise RuntimeError("reward workers die during start-up (is math-verify importable in a fresh "
                           "process? try `python -c 'import math_verify'`)")
    worker.kill()
    self._workers[self._workers.index(worker)] = _Worker(self._ctx)
    self.replaced += 1

  def run(self, jobs: list[tuple[str, str]], timeout_s: float) -> list[str]:
    with self._lock:  # one batch at a time: workers hold per-batch state (job ids, deadlines)
      return self._run(jobs, timeout_s)

  def _run(self, jobs: list[tuple[str, str]], timeout_s: float) -> list[str]:
    results: list[str | None] = [None] * len(jobs)
    next_job = 0
    while next_job < len(jobs) or any(w.job_id is not None for w in self._workers):
      now = time.monotonic()
      for w in self._workers:
        if w.ready and w.job_id is None and next_job < len(jobs):
          try:
            w.conn.send(jobs[next_job])
          except (BrokenPipeError, OSError):
            self._replace(w)  # died while idle; the job stays queued for the next worker
            continue
          w.job_id, w.deadline = next_job, now + timeout_s
          next_job += 1
      busy = [w for w in self._workers if w.job_id is not None]
      waits = [w.deadline - now for w in busy]
      # Workers still starting are waited on too; they are not on the clock.
      ready_conns = wait([w.conn for w in self._workers if w.job_id is not None or not w.ready],
                         timeout=max(0.0, min(waits)) if waits else 1.0)
      for w in list(self._workers):
        if w.conn in ready_conns:
          try:
            msg = w.conn.recv()
          except (EOFError, OSError):
            if w.job_id is not None:
              results[w.job_id] = WORKER_CRASH
            self._replace(w)
            continue
          if msg == _READY:
            w.ready = True
            self._startup_failures = 0
          else:
            results[w.job_id] = msg
            w.job_id = None
      now = time.monotonic()
      for w in list(self._workers):
        if w.job_id is not None and now >= w.deadline and w.conn not in ready_conns:
          results[w.job_id] = TIMEOUT
          self._replace(w)
    return results  # type: ignore[return-value]

  def worker_cpu_seconds(self) -> float:
    """CPU time used so far by the current workers (Linux /proc; 0 elsewhere), for benchmarks."""
    total = 0.0
    for w in self._workers:
      try:
        with open(f"/proc/{w.proc.pid}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
      except (OSError, ValueError, IndexError):
        pass
    return total

  def close(self) -> None:
    for w in self._workers:
      try:
        w.conn.send(None)
      except (BrokenPipeError, OSError):
        pass
    for w in self._workers:
      w.proc.join(timeout=1)
      w.kill()
    self._workers = []


_POOLS: dict[int, VerifyPool] = {}


def get_pool(workers: int) -> VerifyPool:
  """A process-wide pool per worker count, started on first use and shut down at exit."""
  if workers not in _POOLS:
    _POOLS[workers] = VerifyPool(workers)
  return _POOLS[workers]


@atexit.register
def shutdown_pools() -> None:
  for pool in _POOLS.values():
    pool.close()
  _POOLS.clear()
