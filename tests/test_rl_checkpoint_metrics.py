"""Checkpointer host-state round trip / retention, metrics writer, step timer, batch packing."""

import json
import os
import types

import numpy as np
import pytest

from dots_jax.rl.batch import groups_from_samples, make_batch
from dots_jax.run.checkpoint import Checkpointer
from dots_jax.run.metrics import MetricsWriter, StepTimer, batch_stats


def test_host_state_round_trip_and_keep(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2)
  host = {"selector": {"scores": np.arange(6, dtype=np.float32).reshape(2, 3), "round": 4,
                       "names": ["a", "b"], "none": None},
          "rng": np.random.default_rng(7).bit_generator.state,
          "hist": [{"step": 1, "x": 0.5}, {"step": 2, "x": np.float32(0.25)}]}
  state = {"w": np.ones((2, 2), np.float32)}
  for step in (1, 2, 3):
    ckpt.save(step, state, host)
  assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
  restored_state, back = ckpt.restore(state)
  np.testing.assert_array_equal(back["selector"]["scores"], host["selector"]["scores"])
  assert back["selector"]["scores"].dtype == np.float32
  assert back["selector"]["names"] == ["a", "b"] and back["selector"]["none"] is None
  assert back["rng"] == host["rng"] and back["hist"][1]["x"] == 0.25
  np.testing.assert_array_equal(restored_state["w"], state["w"])
  with pytest.raises(TypeError, match="host/bad"):
    ckpt.save(4, state, {"bad": {1: 2}})
  with pytest.raises(TypeError, match="host/obj"):
    ckpt.save(4, state, {"obj": object()})
  ckpt.close()
  again = Checkpointer(str(tmp_path), keep=2)  # automatic resume finds the latest step
  _, host2, step = again.restore_or_init(state)
  assert step == 3 and host2["selector"]["round"] == 4
  again.close()
  fresh_state, none_host, none_step = Checkpointer(str(tmp_path / "new"), keep=1).restore_or_init(state)
  assert none_host is None and none_step is None and fresh_state is state


def test_empty_and_string_arrays_round_trip(tmp_path):
  """Orbax's array store refuses these; the checkpointer keeps them (dtype, shape, values) exactly."""
  ckpt = Checkpointer(str(tmp_path), keep=1)
  host = {"name": np.asarray("greso"), "labels": np.asarray([["ab", "c"]]),
          "empty_i": np.zeros((0,), np.int64), "empty_f": np.zeros((3, 0), np.float32),
          "full": np.arange(4, dtype=np.int32)}
  ckpt.save(1, {"w": np.ones((2,), np.float32)}, host)
  _, back = ckpt.restore({"w": np.ones((2,), np.float32)})
  for k, v in host.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    np.testing.assert_array_equal(back[k], v)
  assert str(back["name"]) == "greso"
  ckpt.close()


def test_metrics_writer_jsonl_tensorboard_and_resume(tmp_path):
  w = MetricsWriter(str(tmp_path), tensorboard=True)
  w.write(1, {"loss": np.float32(0.5), "nonfinite": np.bool_(False)})
  snapshot = w.state_dict()
  w.write(2, {"loss": 0.25})
  w.flush()
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line) for line in f] == [{"step": 1, "loss": 0.5, "nonfinite": False},
                                                {"step": 2, "loss": 0.25}]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))
  w.load_state_dict(snapshot)  # resume from a checkpoint taken after step 1
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [1]
  with pytest.raises(ValueError, match="scalar"):
    w.write(3, {"vec": np.zeros(2)})
  w.close()


def test_step_timer_and_batch_stats():
  timer = StepTimer()
  with timer.phase("rollout"):
    sum(range(10000))
  with timer.phase("update"):
    pass
  m = timer.metrics(tokens=1000)
  assert set(m) == {"time/rollout_s", "time/update_s", "time/step_s", "tokens_per_s"}
  assert m["time/step_s"] == pytest.approx(m["time/rollout_s"] + m["time/update_s"])
  assert timer.metrics() == {"time/step_s": 0.0}
  s = batch_stats(np.array([[1, 0], [1, 1], [0, 0]], np.float32), np.array([2, 4, 6, 8, 10, 12]))
  assert s["reward_mean"] == pytest.approx(0.5) and s["zero_var_frac"] == pytest.approx(2 / 3)
  assert s["pass_rate"] == pytest.approx(0.5) and s["response_len_max"] == 12


def test_groups_from_samples_layout():
  sample = types.SimpleNamespace(
      prompt_tokens_NxP=np.array([[0, 5, 6]] * 2 + [[7, 8, 9]] * 2, np.int32),
      prompt_mask_NxP=np.array([[0, 1, 1]] * 2 + [[1, 1, 1]] * 2, np.int32),
      tokens_NxR=np.array([[3, 1, 0], [4, 4, 1], [2, 0, 0], [3, 3, 3]], np.int32),
      mask_NxR=np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], np.int32),
      logp_NxR=np.array([[-1, -2, 0], [-3, -4, -5], [-6, 0, 0], [-7, -8, -9]], np.float32))
  g = groups_from_samples(sample, np.array([1, 0, 0, 0], np.float32), np.array([11, 12]), 2, 7, 0)
  assert g.tokens_QxGxT.shape == (2, 2, 7)
  np.testing.assert_array_equal(g.tokens_QxGxT[0, 0], [0, 0, 5, 6, 3, 1, 0])
  np.testing.assert_array_equal(g.mask_QxGxT[0, 0], [0, 0, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(g.loss_mask_QxGxT[0, 0], [0, 0, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(g.logp_QxGxT[0, 1], [0, 0, 0, 0, -3, -4, -5])
  b = make_batch(g, np.array([False, True]), "drgrpo")
  np.testing.assert_allclose(b.adv_N, [0.5, -0.5, 0, 0])
  np.testing.assert_array_equal(b.is_replay_N, [False, False, True, True])
  with pytest.raises(ValueError, match="total_len=5"):
    groups_from_samples(sample, np.zeros(4), np.array([1, 2]), 2, 5, 0)
