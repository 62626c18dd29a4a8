"""gs:// end to end on a local bucket server (gcp-storage-emulator, from the test extra): a micro run
reads its initial policy from the bucket and writes config, metrics, samples, pass rates, summary and
orbax checkpoints there; a resume from the bucket continues exactly as an uninterrupted run; the
comparison reads bucket runs; an exported policy round-trips through the bucket."""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("gcsfs", reason="gs:// needs gcsfs: pip install -e '.[gcs]'")
pytest.importorskip("gcp_storage_emulator", reason="the gs:// tests need gcp-storage-emulator "
                    "(test extra)")

from dots_jax.run.settings import data_settings
from dots_jax import compare, fs, train  # noqa: E402
from dots_jax.model import hf_io  # noqa: E402
from dots_jax.policy.tiny_base import ensure_tiny_base  # noqa: E402
from dots_jax.run import settings  # noqa: E402
from test_main import micro  # noqa: E402

BUCKET = "dots-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  port = _free_port()
  log = open(tmp_path_factory.mktemp("emulator") / "log.txt", "w")
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bucket_server.py")
  proc = subprocess.Popen([sys.executable, script, str(port), BUCKET], stdout=log, stderr=log)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      if time.time() > deadline or proc.poll() is not None:
        proc.kill()
        pytest.fail(f"the bucket server did not start (log: {log.name})")
      time.sleep(0.2)
  url = f"http://127.0.0.1:{port}"
  saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
  os.environ["STORAGE_EMULATOR_HOST"] = url  # gcsfs (etils.epath)
  os.environ["TENSORSTORE_GCS_HTTP_URL"] = url  # orbax's array writes
  yield f"gs://{BUCKET}"
  proc.terminate()
  proc.wait(timeout=30)
  log.close()
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def _micro(cache, **overrides):
  """test_main's micro run, with samples and TensorBoard on (both go to the bucket too); the base and
  the compiled programs are shared (conftest's micro_cache)."""
  return micro(cache, **{"compilation_cache": "", "log.samples_every": 1, "log.tensorboard": True,
                            **overrides})


def _records(workdir):
  return [json.loads(line) for line in fs.read_text(fs.join(workdir, "metrics.jsonl")).splitlines()]


def test_a_run_on_a_bucket_resumes_exactly_and_reads_its_policy_from_it(bucket, micro_cache,
                                                                        tmp_path):
  base = ensure_tiny_base(settings.read(_micro(micro_cache)).tiny, log=lambda s: None)
  fs.upload_dir(base, f"{bucket}/base")
  remote = {"model.path": f"{bucket}/base"}
  workdir = f"{bucket}/runs/grpo"
  first = train.train_and_evaluate(_micro(micro_cache, **remote), workdir)
  for name in ("config.json", "metrics.jsonl", "samples.jsonl", "summary.json",
               "pass_rates/0.npz", "checkpoints/2", "tb"):
    assert fs.exists(fs.join(workdir, name)), name
  assert first["workdir"] == workdir
  assert [r["step"] for r in _records(workdir)] == [0, 1, 2]
  # Resume from the bucket's checkpoint, against an uninterrupted local run of 4 steps.
  resumed = train.train_and_evaluate(_micro(micro_cache, total_steps=4, **remote), workdir)
  local = train.train_and_evaluate(_micro(micro_cache, total_steps=4, **remote),
                                   str(tmp_path / "local"))
  assert resumed["rollouts"] == local["rollouts"]
  records = _records(workdir)
  assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
  with open(tmp_path / "local" / "metrics.jsonl") as f:
    expected = [json.loads(line) for line in f]
  for got, want in zip(records[3:], expected[3:]):
    assert got["train/loss"] == pytest.approx(want["train/loss"], abs=1e-6)
    assert got["eval/accuracy" if "eval/accuracy" in want else "reward_mean"] == pytest.approx(
        want["eval/accuracy" if "eval/accuracy" in want else "reward_mean"], abs=1e-6)
  # The comparison reads runs in a bucket as it reads local ones.
  curve = compare.read_curve(workdir)
  assert list(curve["step"]) == [0, 2, 4] and "first" in curve["pass_rates"]


def test_an_exported_policy_round_trips_through_a_bucket(bucket, micro_cache, tmp_path):
  base = ensure_tiny_base(settings.read(_micro(micro_cache)).tiny, log=lambda s: None)
  qcfg, model = hf_io.load_policy(base)
  out = hf_io.export_policy(qcfg, model, f"{bucket}/export", tokenizer_dir=base)
  assert out == f"{bucket}/export" and fs.isfile(f"{bucket}/export/config.json")
  local = fs.localize(out, cache_dir=str(tmp_path / "cache"))
  assert fs.localize(out, cache_dir=str(tmp_path / "cache")) == local  # copied once
  _, again = hf_io.load_policy(local)
  want = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
  got = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(again, nnx.Param)))
  assert len(want) == len(got) > 0
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)


def test_a_training_file_in_a_bucket_is_read(bucket, tmp_path, monkeypatch):
  from dots_jax.config_base import base_config
  from dots_jax.data.dataset import load_dataset
  rows = [json.dumps({"q": f"What is {i}+1?", "a": str(i + 1)}) for i in range(5)]
  fs.write_text(f"{bucket}/data/mine.jsonl", "".join(r + "\n" for r in rows))
  c = base_config().data
  c.update(train=f"{bucket}/data/mine.jsonl", problem_field="q", answer_field="a",
           prepared_dir=str(tmp_path / "prepared"), shared_dir=str(tmp_path / "none"))
  monkeypatch.setenv("DOTS_JAX_CACHE", str(tmp_path / "cache"))  # where the copy goes
  qs = load_dataset(data_settings(c), "train")
  assert len(qs) == 5 and qs[2].problem == "What is 2+1?" and qs[2].answer == "3"


def test_one_writer_per_bucket_workdir_and_an_expired_lease_is_taken_over(bucket):
  from dots_jax.config_common import ConfigError
  from dots_jax.run.workdir import WorkdirLock
  work = f"{bucket}/locked_run"
  first = WorkdirLock(work, lease_s=30).acquire()
  with pytest.raises(ConfigError, match=r"locked_run is in use by pid \d+ on .* \(lease until"):
    WorkdirLock(work, lease_s=30).acquire()
  first.release()
  assert not fs.exists(f"{work}/.writer.lock")
  # A crashed holder: its lease is not renewed and runs out; the next run takes over, saying so.
  crashed = WorkdirLock(work, lease_s=1.5).acquire()
  crashed._stop.set()
  time.sleep(2.0)
  lines = []
  successor = WorkdirLock(work, lease_s=30, log=lines.append).acquire()
  assert len(lines) == 1 and "expired; taking the workdir over" in lines[0]
  with pytest.raises(ConfigError, match="is in use by"):
    WorkdirLock(work, lease_s=30).acquire()
  successor.release()
