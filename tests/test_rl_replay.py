"""Replay buffer properties (hypothesis) against a tiny OrderedDict model of the rules."""

import collections

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dots_jax.rl.batch import Groups
from dots_jax.rl.checkpoint import Checkpointer
from dots_jax.rl.replay import ReplayBuffer

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


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 6), batches=adds)
def test_fifo_capacity_variance_dedupe(capacity, batches):
  buf = ReplayBuffer(capacity, G, T)
  model = collections.OrderedDict()  # qid -> tag of the add that wrote it, oldest first
  for tag, batch in enumerate(batches, start=1):
    qids, zero = [q for q, _ in batch], [z for _, z in batch]
    admitted = buf.add(groups_for(qids, zero, tag), step=tag)
    assert admitted == sum(not z for z in zero)
    for q, z in batch:
      if z:
        continue
      model.pop(q, None)
      model[q] = tag
      if len(model) > capacity:
        model.popitem(last=False)
    assert len(buf) <= capacity
    assert list(buf.fifo_qids()) == list(model)
  live = buf.seq_Q >= 0
  for slot in np.flatnonzero(live):
    qid = int(buf.qid_Q[slot])
    assert buf.tokens_QxGxT[slot, 0, 1] == model[qid]  # newest copy kept
    assert buf.step_Q[slot] == model[qid]
    assert buf.rewards_QxG[slot].std() > 0


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 8), batch=st.integers(1, 8), sigma=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
       seed=st.integers(0, 2**16))
def test_mix_proportions_and_fallback(size, batch, sigma, seed):
  buf = ReplayBuffer(8, G, T)
  buf.add(groups_for(list(range(100, 100 + size)), [False] * size, 1), step=0)
  n_fresh, n_replay = buf.plan(batch, sigma)
  want_replay = batch - int(round(sigma * batch))
  assert n_replay == min(want_replay, size) and n_fresh + n_replay == batch
  fresh = groups_for(list(range(batch)), [False] * batch, 7)
  mixed, is_rep = buf.mix(fresh, batch, sigma, np.random.default_rng(seed))
  assert mixed.num_groups == batch and is_rep.sum() == n_replay
  assert list(mixed.qid_Q[~is_rep]) == list(range(n_fresh))
  rep_q = mixed.qid_Q[is_rep]
  assert len(set(rep_q)) == len(rep_q) and all(q >= 100 for q in rep_q)  # without replacement


def test_mix_uniform_over_buffer():
  buf = ReplayBuffer(6, G, T)
  buf.add(groups_for(list(range(6)), [False] * 6, 1), step=0)
  rng = np.random.default_rng(0)
  counts = np.zeros(6)
  for _ in range(3000):
    mixed, is_rep = buf.mix(groups_for([50, 51], [False] * 2, 2), 4, 0.5, rng)
    counts[mixed.qid_Q[is_rep]] += 1
  np.testing.assert_allclose(counts / counts.sum(), 1 / 6, atol=0.015)


def test_mix_needs_enough_fresh_and_checks_shapes():
  buf = ReplayBuffer(4, G, T)
  with pytest.raises(ValueError, match="fresh groups"):
    buf.mix(groups_for([1], [False], 1), 4, 0.5, np.random.default_rng(0))
  with pytest.raises(ValueError, match="fresh_fraction"):
    buf.plan(4, 1.5)
  bad = Groups(np.zeros((1, G, T + 1), np.int32), np.zeros((1, G, T + 1), np.int32),
               np.zeros((1, G, T + 1), np.int32), np.zeros((1, G, T + 1), np.float32),
               np.array([[1.0, 0, 0]], np.float32), np.array([3]))
  with pytest.raises(ValueError, match="T=4"):
    buf.add(bad, step=0)


@settings(max_examples=5, deadline=None)
@given(batches=adds)
def test_state_round_trips_through_checkpoint(tmp_path_factory, batches):
  buf = ReplayBuffer(4, G, T)
  for tag, batch in enumerate(batches, start=1):
    buf.add(groups_for([q for q, _ in batch], [z for _, z in batch], tag), step=tag)
  ckpt = Checkpointer(str(tmp_path_factory.mktemp("ck")), keep=1)
  ckpt.save(1, {"x": np.zeros(2, np.float32)}, {"replay": buf.state_dict()})
  _, host = ckpt.restore({"x": np.zeros(2, np.float32)})
  ckpt.close()
  again = ReplayBuffer(4, G, T)
  again.load_state_dict(host["replay"])
  for k, v in buf.state_dict().items():
    np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=k)
    assert again.state_dict()[k].dtype == v.dtype
  # Behaviour after restore is identical too (same next insertion order and same sampling).
  nxt = groups_for([7, 8], [False, False], 99)
  buf.add(nxt, step=99)
  again.add(nxt, step=99)
  assert list(buf.fifo_qids()) == list(again.fifo_qids())
  a = buf.mix(nxt, 4, 0.5, np.random.default_rng(3))[0]
  b = again.mix(nxt, 4, 0.5, np.random.default_rng(3))[0]
  np.testing.assert_array_equal(a.tokens_QxGxT, b.tokens_QxGxT)
