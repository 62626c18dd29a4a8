"""Replay buffer properties (hypothesis) against a tiny OrderedDict model of the official DOTS
trainer's rules (`select_buffer`): keep the newest capacity - sigma*B, then append the fresh groups."""

import collections

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dots_jax.rl.batch import Groups
from dots_jax.run.checkpoint import Checkpointer
from dots_jax.rl.replay import ReplayBuffer, admit

G, T = 3, 4


def groups_for(qids, zero_var, tag):
  q = len(qids)
  rewards = np.tile(np.array([1.0, 0.0, 0.0], np.float32), (q, 1))
  rewards[np.asarray(zero_var, bool)] = 0.5
  tokens = np.zeros((q, G, T), np.int32) + tag  # tag identifies which add() wrote the group
  tokens[:, :, 0] = np.asarray(qids)[:, None]
  return Groups(tokens, np.ones((q, G, T), np.int32), np.ones((q, G, T), np.int32),
                np.full((q, G, T), -float(tag), np.float32), rewards, np.asarray(qids, np.int64))


adds = st.lists(st.lists(st.tuples(st.integers(0, 9), st.booleans()), min_size=1, max_size=6),
                min_size=1, max_size=8)


def buffer(capacity, batch=6, sigma=0.5, warmup=0):
  return ReplayBuffer(capacity, G, T, batch_groups=batch, fresh_fraction=sigma, warmup_steps=warmup)


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(3, 9), batches=adds)
def test_capacity_variance_dedupe(capacity, batches):
  buf = buffer(capacity)
  retain = capacity - 3  # int(0.5 * 6) fresh groups a step
  model = collections.OrderedDict()  # qid -> tag of the add that wrote it, oldest first
  for tag, batch in enumerate(batches, start=1):
    qids, zero = [q for q, _ in batch], [z for _, z in batch]
    while len(model) > retain:
      model.popitem(last=False)
    admitted = buf.add(groups_for(qids, zero, tag), step=tag)
    assert admitted == sum(not z for z in zero)
    for q, z in batch:
      if z:
        continue
      model.pop(q, None)
      model[q] = tag
    assert len(buf) <= retain + 6
    assert list(buf.fifo_qids()) == list(model)
  live = buf.seq_Q >= 0
  for slot in np.flatnonzero(live):
    qid = int(buf.qid_Q[slot])
    assert buf.tokens_QxGxT[slot, 0, 1] == model[qid]  # newest copy kept
    assert buf.step_Q[slot] == model[qid]
    assert buf.rewards_QxG[slot].std() > 0


def test_dots_script_sizes():
  """B = 512, sigma = 0.5, buffer_size = 512: 256 older groups survive each step, then the fresh
  batch joins, so a step samples its 256 replayed groups from up to 256 + 256 groups."""
  buf = ReplayBuffer(512, 1, 1, batch_groups=512, fresh_fraction=0.5, warmup_steps=2)
  assert buf.retain == 256 and buf.tokens_QxGxT.shape[0] == 768
  assert buf.plan(0) == (512, 0) and buf.plan(1) == (512, 0)  # the first round: fresh only


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 8), batch=st.integers(1, 8), sigma=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
       seed=st.integers(0, 2**16), warmup=st.integers(0, 2), step=st.integers(0, 3))
def test_mix_plan_warmup_and_short_batches(size, batch, sigma, seed, warmup, step):
  buf = ReplayBuffer(16, G, T, batch_groups=batch, fresh_fraction=sigma, warmup_steps=warmup)
  fill = min(size, batch)
  buf.add(groups_for(list(range(100, 100 + fill)), [False] * fill, 1), step=0)
  n_fresh, n_replay = buf.plan(step)
  if step < warmup:  # the official first round trains on fresh groups only
    assert (n_fresh, n_replay) == (batch, 0)
  else:
    assert n_fresh == int(sigma * batch)
    assert n_replay == min(batch - n_fresh, fill)  # fewer buffered groups: a shorter batch
  fresh = groups_for(list(range(n_fresh)), [False] * n_fresh, 7)
  mixed, is_rep = buf.mix(fresh, step, np.random.default_rng(seed))
  assert mixed.num_groups == n_fresh + n_replay and is_rep.sum() == n_replay
  assert list(mixed.qid_Q[~is_rep]) == list(range(n_fresh))
  assert not is_rep[:n_fresh].any()  # fresh groups first
  rep_q = mixed.qid_Q[is_rep]
  assert len(set(rep_q)) == len(rep_q) and all(q >= 100 for q in rep_q)  # without replacement


def test_mix_uniform_over_buffer():
  buf = buffer(9)
  buf.add(groups_for(list(range(6)), [False] * 6, 1), step=0)
  rng = np.random.default_rng(0)
  counts = np.zeros(6)
  for _ in range(3000):
    mixed, is_rep = buf.mix(groups_for([50, 51], [False] * 2, 2), 1, rng)
    counts[mixed.qid_Q[is_rep]] += 1
  np.testing.assert_allclose(counts / counts.sum(), 1 / 6, atol=0.015)


def test_mix_refuses_too_many_fresh_and_checks_shapes():
  buf = buffer(4, batch=4)
  with pytest.raises(ValueError, match="fresh groups"):
    buf.mix(groups_for([1, 2, 3], [False] * 3, 1), 0, np.random.default_rng(0))
  with pytest.raises(ValueError, match="fresh_fraction"):
    buffer(4, sigma=1.5)
  with pytest.raises(ValueError, match="capacity"):
    buffer(2, batch=6)
  bad = Groups(np.zeros((1, G, T + 1), np.int32), np.zeros((1, G, T + 1), np.int32),
               np.zeros((1, G, T + 1), np.int32), np.zeros((1, G, T + 1), np.float32),
               np.array([[1.0, 0, 0]], np.float32), np.array([3]))
  with pytest.raises(ValueError, match="T=4"):
    buf.add(bad, step=0)


def test_admit_stores_the_trainers_old_logp_as_mu():
  buf = buffer(6, batch=2)
  fresh = groups_for([4, 5], [False, False], 3)
  old = np.arange(2 * G * T, dtype=np.float32).reshape(2 * G, T) + 0.5
  old = np.concatenate([old, np.full((2 * G, T), 99.0, np.float32)])  # replayed rows after
  assert admit(buf, fresh, old, step=1) == 2
  slots = np.argsort(buf.qid_Q)[-2:]
  np.testing.assert_array_equal(buf.logp_QxGxT[slots].reshape(2 * G, T), old[:2 * G])


@settings(max_examples=5, deadline=None)
@given(batches=adds)
def test_state_round_trips_through_checkpoint(tmp_path_factory, batches):
  buf = buffer(8)
  for tag, batch in enumerate(batches, start=1):
    buf.add(groups_for([q for q, _ in batch], [z for _, z in batch], tag), step=tag)
  ckpt = Checkpointer(str(tmp_path_factory.mktemp("ck")), keep=1)
  ckpt.save(1, {"x": np.zeros(2, np.float32)}, {"replay": buf.state_dict()})
  _, host = ckpt.restore({"x": np.zeros(2, np.float32)})
  ckpt.close()
  again = buffer(8)
  again.load_state_dict(host["replay"])
  for k, v in buf.state_dict().items():
    np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=k)
    assert again.state_dict()[k].dtype == v.dtype
  # Behaviour after restore is identical too (same next insertion order and same sampling).
  nxt = groups_for([7, 8], [False, False], 99)
  buf.add(nxt, step=99)
  again.add(nxt, step=99)
  assert list(buf.fifo_qids()) == list(again.fifo_qids())
  a = buf.mix(nxt, 5, np.random.default_rng(3))[0]
  b = again.mix(nxt, 5, np.random.default_rng(3))[0]
  np.testing.assert_array_equal(a.tokens_QxGxT, b.tokens_QxGxT)
