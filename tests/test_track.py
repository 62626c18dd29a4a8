"""The tracking difficulty model and its selection (dots_track, dots_track_rr, greso_track): what the
posterior does with own and neighbours' labels, how the draw follows it, references that train, and
that it never reads an exact pass rate."""
import numpy as np
import pytest

from dots_jax.difficulty.estimator import EstimatorConfig, init_estimator
from dots_jax.difficulty.tracker import (DifficultyTracker, TrackerSettings, expected_signal,
                                         kmeans, observed_logit)
from dots_jax.rollout.roller import Rollouts
from dots_jax.selection import track
from dots_jax.selection.driver import collect_batch

SETTINGS = TrackerSettings(half_life=8.0, drift=0.02, max_labels=512, clusters=4, shrink=8.0,
                           content_floor=0.1)
G = 8


def families(n_per=50, dim=16, seed=0):
  """Four well separated families of questions: embeddings near one centre each."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(4, dim)) * 4
  fam = np.repeat(np.arange(4), n_per)
  return (centres[fam] + rng.normal(size=(len(fam), dim)) * 0.3).astype(np.float32), fam


def tracker(emb, **kw):
  model = init_estimator(EstimatorConfig(input_dim=emb.shape[1], width=16, layers=1, dropout=0.0),
                         seed=0)
  settings = TrackerSettings(**{**SETTINGS.__dict__, **kw})
  return DifficultyTracker(emb, model, settings, group_size=G, seed=0)


def groups(p, rng):
  return (rng.random((len(p), G)) < np.asarray(p)[:, None]).astype(np.float32)


def test_observation_and_signal_arithmetic():
  z, r = observed_logit(np.array([0, 4, 8]), G)
  assert z[1] == pytest.approx(0.0) and z[0] == pytest.approx(-z[2]) and r[1] < r[0]
  # No uncertainty: the chance of a group with reward variance is 1 - p^G - (1 - p)^G.
  p = np.array([0.1, 0.5, 0.9])
  got = expected_signal(np.log(p / (1 - p)), np.zeros(3), G)
  np.testing.assert_allclose(got, 1 - p ** G - (1 - p) ** G, rtol=1e-6)
  # Uncertainty about a nearly solved question raises its chance of variance.
  assert expected_signal(np.array([3.0]), np.array([4.0]), G)[0] > expected_signal(
      np.array([3.0]), np.array([0.0]), G)[0]


def test_kmeans_finds_the_families():
  emb, fam = families()
  labels = kmeans(emb, 4, seed=0)
  for f in range(4):  # each family is one cluster
    assert len(set(labels[fam == f])) == 1
  assert len(set(labels)) == 4


def test_a_question_follows_its_own_groups_and_the_unseen_follow_their_family():
  emb, fam = families()
  t = tracker(emb)
  rng = np.random.default_rng(1)
  truth = np.where(fam == 0, 0.9, 0.2)
  for step in range(6):  # families 0 and 1 observed, 2 and 3 never
    idx = np.flatnonzero(fam <= 1)[rng.permutation(100)[:40]]
    t.observe(idx, groups(truth[idx], rng), step)
  post = t.posterior(6)
  p = post.pass_rate_N
  # an unobserved member of family 0 is predicted from its family's labels, not its own
  never = np.setdiff1d(np.flatnonzero(fam == 0), t.label_idx)
  assert p[never].mean() > 0.7 and p[np.flatnonzero(fam == 1)].mean() < 0.4
  # A question's own groups move it away from its family's level.
  q = int(np.flatnonzero(fam == 0)[0])
  for step in range(6, 10):
    t.observe(np.array([q]), np.zeros((1, G), np.float32), step)
  assert t.posterior(10).pass_rate_N[q] < 0.5 < t.posterior(10).pass_rate_N[never].min()


def test_a_family_the_draw_stopped_seeing_becomes_uncertain_and_a_stale_estimate_decays():
  emb, fam = families()
  t = tracker(emb)
  rng = np.random.default_rng(2)
  every = np.arange(len(fam))
  first = groups(np.full(len(fam), 0.95), rng)
  t.observe(every, first, 0)
  fresh = t.posterior(1)
  for step in range(1, 60):  # only family 3 observed from now on
    idx = np.flatnonzero(fam == 3)
    t.observe(idx[:10], groups(np.full(10, 0.95), rng), step)
  stale = t.posterior(60)
  f0 = fam == 0
  # Family 0's own estimates went stale: the variance grew (drift), so a question last seen
  # all-correct is no longer written off: its chance of reward variance rose by itself.
  assert stale.var_N[f0].mean() > fresh.var_N[f0].mean()
  solved = f0 & (first.sum(1) == G)
  assert solved.sum() >= 5
  assert np.all(stale.signal_N[solved] > fresh.signal_N[solved])
  # ... and what each one's own old group said fades towards its family's level.
  assert stale.mean_N[f0].std() < fresh.mean_N[f0].std()


def test_state_round_trip_is_exact():
  emb, fam = families()
  a, b = tracker(emb), tracker(emb)
  rng = np.random.default_rng(3)
  for step in range(4):
    idx = rng.choice(len(fam), 30, replace=False)
    a.observe(idx, groups(np.full(30, 0.5), rng), step)
  b.load_state_dict({k: np.array(v) for k, v in a.state_dict().items()})
  pa, pb = a.posterior(5), b.posterior(5)
  np.testing.assert_array_equal(pa.mean_N, pb.mean_N)
  np.testing.assert_array_equal(pa.var_N, pb.var_N)


def test_the_floor_spreads_part_of_the_round_over_every_cluster():
  cluster = np.repeat(np.arange(4), 25)
  logits = np.where(cluster == 0, 50.0, 0.0)  # the rule alone would take cluster 0 only
  rng = np.random.default_rng(0)
  order = track.floored_order(logits, cluster, budget=20, floor=0.4, rng=rng)
  head = order[:20]
  assert sorted(order.tolist()) == list(range(100)) and len(set(head.tolist())) == 20
  counts = np.bincount(cluster[head], minlength=4)
  assert counts[1] == counts[2] == counts[3] == 2 and counts[0] == 14
  assert set(track.floored_order(logits, cluster, 20, 0.0, rng)[:20]) <= set(range(25))


class Pool:
  """Rollouts from fixed pass rates: rewards only."""

  def __init__(self, p, seed=0):
    self.p, self.rng = np.asarray(p), np.random.default_rng(seed)

  def __call__(self, indices, round_):
    return Rollouts.rewards_only(indices, groups(self.p[indices], self.rng))


def test_trainable_references_fill_the_batch_first_and_cost_rollouts_either_way():
  emb, fam = families()
  p = np.where(fam % 2 == 0, 0.5, 1.0)  # half the pool gives groups with reward variance
  src = track.TrackSource(tracker(emb), ref_size=16, ref_mode="stratified", train_refs=True,
                          round_steps=2, draw="variance", tau=0.05, floor=0.0)
  from dots_jax.selection.uniform import UniformStrategy
  strategy = UniformStrategy(src)
  out = collect_batch(strategy, Pool(p), 0, 12, seed=0)
  m = out.metrics
  refs_kept = int(np.sum(np.isin(out.indices, src.tracker.label_idx[:16])))
  assert m["selection/rollouts_reference"] == 16 * G
  # the batch is full: reference groups with variance first, the rest rolled out fresh
  assert len(set(out.indices.tolist())) == 12 and refs_kept >= 1  # no reference drawn twice
  assert m["selection/rollouts"] == (16 + 12 - min(refs_kept, 12)) * G
  # stratified references: 4 from each of the 4 clusters
  counts = np.bincount(src.tracker.cluster_N[src.tracker.label_idx[:16]], minlength=4)
  assert counts.tolist() == [4, 4, 4, 4]


def test_the_tracking_methods_never_read_an_exact_pass_rate(monkeypatch):
  """They run unchanged where the exact-rate scorer is absent (a real pool); with it, it is a
  diagnostic only: the choices are the same."""
  from dots_jax.config_base import base_config
  from dots_jax.run import settings
  from dots_jax.selection import factory
  emb, fam = families()
  p = np.clip(0.1 + 0.2 * fam, 0, 1)

  def run(method, pass_rates):
    c = base_config()
    c.method, c.seed = method, 3
    c.selection.dots.round_steps = 2
    c.selection.track.update(clusters=4, ref_size=8)
    s = settings.read(c)
    model = init_estimator(EstimatorConfig(input_dim=emb.shape[1], width=16, layers=1,
                                           dropout=0.0), seed=0)
    strategy = factory.make_strategy(method, s.selection, len(p), seed=3, group_size=G,
                                     embeddings_NxD=emb, estimator=model)
    env = Pool(p, seed=5)
    return [collect_batch(strategy, env, step, 16, seed=3, pass_rates=pass_rates).indices
            for step in range(4)]

  for method in ("dots_track", "dots_track_rr", "greso_track"):
    with_exact = run(method, lambda idx: p[np.asarray(idx)])
    without = run(method, None)
    for a, b in zip(with_exact, without):
      np.testing.assert_array_equal(a, b)
