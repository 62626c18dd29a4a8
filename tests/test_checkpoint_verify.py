"""Verified checkpoints: a damaged step is detected on restore, moved aside (nothing deleted), and the
run resumes from the newest step that verifies; one line says which and why."""

import json
import os

import numpy as np
import pytest

from dots_jax.run.checkpoint import CheckpointError, Checkpointer


def _state(v: float) -> dict:
  return {"w": np.full((64, 64), v, np.float32), "b": np.arange(8, dtype=np.int32) + int(v),
          "h": np.full((16,), v, np.float16)}


def _host(step: int) -> dict:
  return {"step": step, "replay": {"ids": np.arange(5, dtype=np.int64) * step,
                                   "logp": np.linspace(0, 1, 7).astype(np.float32)},
          "name": np.asarray("dots"), "empty": np.zeros((0, 3), np.float32)}


def _run(tmp_path, steps=(1, 2, 3), keep=3) -> str:
  work = str(tmp_path / "run")
  ckpt = Checkpointer(work, keep=keep)
  for s in steps:
    ckpt.save(s, _state(float(s)), _host(s))
  ckpt.close()
  return work


def _largest_file(root: str) -> str:
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


def _resume(work: str) -> tuple:
  lines: list[str] = []
  state, host, step = Checkpointer(work, keep=3).restore_or_init(_state(0.0), log=lines.append)
  return state, host, step, lines


def test_a_good_run_restores_its_latest_step_verified(tmp_path):
  work = _run(tmp_path)
  assert sorted(os.listdir(os.path.join(work, "checkpoints_verified"))) == ["1.json", "2.json",
                                                                         "3.json"]
  state, host, step, lines = _resume(work)
  assert step == 3 and lines == []
  np.testing.assert_array_equal(state["w"], _state(3.0)["w"])
  np.testing.assert_array_equal(host["replay"]["ids"], _host(3)["replay"]["ids"])


def test_random_bytes_in_the_latest_step_fall_back_to_the_one_before(tmp_path):
  work = _run(tmp_path)
  victim = _largest_file(os.path.join(work, "checkpoints", "3", "state"))
  size = os.path.getsize(victim)
  with open(victim, "r+b") as f:
    f.seek(size // 3)
    f.write(np.random.default_rng(0).integers(0, 256, max(size // 4, 8), np.uint8).tobytes())
  state, _, step, lines = _resume(work)
  assert step == 2 and len(lines) == 1 and "checkpoint step 3" in lines[0], lines
  np.testing.assert_array_equal(state["w"], _state(2.0)["w"])
  # Nothing deleted: the damaged step is kept aside with its digest.
  assert os.path.isdir(os.path.join(work, "checkpoints_corrupt", "3"))
  assert os.path.isfile(os.path.join(work, "checkpoints_corrupt", "3.json"))
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["1", "2"]


def test_a_truncated_file_falls_back_in_one_line(tmp_path):
  work = _run(tmp_path)
  victim = _largest_file(os.path.join(work, "checkpoints", "3"))
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  _, _, step, lines = _resume(work)
  assert step == 2 and len(lines) == 1 and "\n" not in lines[0], lines


def test_contents_that_differ_from_the_digest_are_refused(tmp_path):
  """Values changed on disk without breaking the format: only the digest can tell."""
  work = _run(tmp_path)
  path = os.path.join(work, "checkpoints_verified", "3.json")
  with open(path) as f:
    digest = json.load(f)
  digest["state"][0] = digest["state"][0][:-1] + ("0" if digest["state"][0][-1] != "0" else "1")
  with open(path, "w") as f:
    json.dump(digest, f)
  _, _, step, lines = _resume(work)
  assert step == 2 and "does not match the digest" in lines[0], lines


def test_no_step_restores_is_one_error_and_a_step_without_digest_is_used_last(tmp_path):
  work = _run(tmp_path, steps=(1, 2))
  for s in ("1", "2"):
    victim = _largest_file(os.path.join(work, "checkpoints", s, "state"))
    with open(victim, "wb") as f:
      f.write(b"")
  with pytest.raises(CheckpointError, match="no checkpoint under .* restores"):
    _resume(work)
  # A run saved before digests existed: its steps restore, each with a line saying so.
  legacy = _run(tmp_path / "legacy", steps=(1,))
  os.remove(os.path.join(legacy, "checkpoints_verified", "1.json"))
  _, _, step, lines = _resume(legacy)
  assert step == 1 and "no recorded digest" in lines[0]


def test_rotation_keeps_the_newest_verified_step(tmp_path, monkeypatch):
  """keep=1: each save replaces the previous step only once its own digest is recorded; a newer
  step without one (cut off before it was marked) never pushes out the last verified step, and a
  resume prefers the verified one."""
  work = _run(tmp_path, steps=(1, 2, 3), keep=1)
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["3"]
  assert os.listdir(os.path.join(work, "checkpoints_verified")) == ["3.json"]
  from dots_jax.run import checkpoint
  real_write = checkpoint.fs.write_text
  monkeypatch.setattr(checkpoint.fs, "write_text",
                      lambda path, text: None if path.endswith("4.json") else real_write(path, text))
  ckpt = Checkpointer(work, keep=1)
  ckpt.save(4, _state(4.0), _host(4))
  ckpt.close()
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["3", "4"]
  monkeypatch.undo()
  _, _, step, lines = _resume(work)
  assert step == 3 and len(lines) == 1 and "step 4 has no recorded digest" in lines[0]
  ckpt = Checkpointer(work, keep=1)  # the run goes on: step 4 again, over nothing
  ckpt.save(4, _state(4.5), _host(4))
  ckpt.close()
  assert os.listdir(os.path.join(work, "checkpoints")) == ["4"]
  assert os.path.isdir(os.path.join(work, "checkpoints_corrupt", "4"))  # the old one kept aside
