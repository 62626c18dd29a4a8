"""Selection strategies against hand-computed cases, exact batch filling, determinism and resume."""

import numpy as np
import pytest

from dots_jax.config_base import base_config
from dots_jax.difficulty.estimator import EstimatorConfig, init_estimator
from dots_jax.difficulty.fit import fit_estimator
from dots_jax.selection.base import (EpochStream, Proposal, RolloutRounds, StepContext, group_stats,
                                     step_rng)
from dots_jax.rollout.roller import Rollouts
from dots_jax.selection import driver
from dots_jax.selection.driver import collect_batch
from dots_jax.methods import METHODS
from dots_jax.run import settings
from dots_jax.selection import factory
from dots_jax.selection.greso import GresoStrategy
from dots_jax.selection.mopps import MoppsStrategy
from dots_jax.selection.uniform import DynamicSamplingStrategy

G = 8


class Env:
  """Questions with known true pass rates; rollouts are Bernoulli draws from a counter-seeded rng."""

  def __init__(self, pass_rates, seed=0):
    self.p = np.asarray(pass_rates, np.float64)
    self.seed, self.calls = seed, 0

  def __call__(self, indices, round):
    rng = np.random.default_rng([self.seed, self.calls])
    self.calls += 1
    rewards = (rng.random((len(indices), G)) < self.p[indices][:, None]).astype(np.float32)
    return Rollouts.rewards_only(indices, rewards)



def _rounds(first: float, max_rounds: int) -> RolloutRounds:
  """config_base's selection.rounds with another first-round size and round cap."""
  return RolloutRounds(first=first, floor=0.25, slack=1.25, max_rounds=max_rounds)

def _ctx(**kw):
  base = dict(step=0, rng=step_rng(0, 0), batch_questions=16)
  base.update(kw)
  return StepContext(**base)


def _greso(n=10, first=1.0, max_rounds=8, **kw):
  args = dict(alpha=0.25, p_init=0.5, p_step=0.01, p_min=0.05, p_max=0.95, min_keep=0.01,
              rounds=_rounds(first, max_rounds))
  args.update(kw)
  return GresoStrategy(EpochStream(n, 0), n, **args)


def test_group_stats_hand_case():
  # The last two groups score only a format reward (0.1): wrong, so "all wrong" (GRESO's hard).
  r = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 1], [0.1, 0.1, 0.1], [0.1, 0, 0.1]], np.float32)
  st = group_stats(r)
  np.testing.assert_allclose(st.pass_rate_Q, [1, 0, 2 / 3, 0, 0], rtol=1e-6)
  assert st.zero_var_Q.tolist() == [True, True, False, True, False]
  assert st.all_correct_Q.tolist() == [True, False, False, False, False]
  assert st.all_wrong_Q.tolist() == [False, True, False, True, True]


def test_greso_skip_probabilities_hand_computed():
  s = _greso(n=6)
  s.easy_streak[:] = [0, 1, 2, 0, 0, 10]
  s.hard_streak[:] = [0, 0, 0, 3, 1, 0]
  s.p_easy, s.p_hard = 0.5, 0.8
  got = s.skip_probability(np.arange(6))
  # 1 - max(p^z, 0.01); z = 0 (no streak, or no history) is never skipped.
  np.testing.assert_allclose(got, [0.0, 0.5, 0.75, 1 - 0.8 ** 3, 1 - 0.8, 0.99], rtol=1e-12)


def test_greso_streaks_follow_groups():
  s = _greso(n=3)
  prop = Proposal(np.array([0, 1, 2]), np.full(3, np.nan))
  easy, hard, mixed = np.ones(G), np.zeros(G), np.r_[np.ones(1), np.zeros(G - 1)]
  keep = s.observe(_ctx(), prop, np.stack([easy, hard, mixed]))
  assert keep.tolist() == [False, False, True]
  s.observe(_ctx(), prop, np.stack([easy, mixed, hard]))
  assert s.easy_streak.tolist() == [2, 0, 0]
  assert s.hard_streak.tolist() == [0, 0, 1]


def test_greso_p_updates_toward_targets_and_clamp():
  s = _greso()
  # targets: easy 0.25/3 = 0.0833, hard 0.5/3 = 0.1667. Easy share 0.1 >= target: p_easy drops;
  # hard share 0.1 < target: p_hard rises.
  s.adapt(0.1, 0.1)
  assert s.p_easy == pytest.approx(0.49) and s.p_hard == pytest.approx(0.51)
  s.p_easy, s.p_hard = 0.05, 0.95
  s.adapt(0.5, 0.0)
  assert s.p_easy == pytest.approx(0.05) and s.p_hard == pytest.approx(0.95)


def test_greso_p_moves_only_once_candidates_have_history():
  n = 32
  env = Env(np.ones(n))  # every group all-correct: far above the easy target
  s = _greso(n=n, max_rounds=1)
  collect_batch(s, env, 0, 16, seed=0)
  collect_batch(s, env, 1, 16, seed=0)  # the rest of epoch 0: still no history
  assert s.p_easy == 0.5
  collect_batch(s, env, 2, 16, seed=0)  # epoch 1: candidates were seen before
  assert s.p_easy == pytest.approx(0.49)


def test_greso_never_skips_without_history():
  s = _greso(n=100, first=1.5)
  prop = s.propose(_ctx())
  assert len(prop.indices) == 24 and prop.skipped == 0  # first round: 1.5 x 16


def test_rollout_rounds_follow_the_greso_trainer():
  rounds = _rounds(1.5, 8)
  assert rounds.next_size(_ctx()) == 24  # 384 for 256 in the reference script
  # remaining 10 / (1 - 0.5) * 1.25 = 25 > 24: capped at the first-round size, not the last round
  ctx = _ctx(train_rounds=1, kept=6, last_zero_var_ratio=0.5)
  assert rounds.next_size(ctx) == 24 and not ctx.final_round_planned
  # remaining 2 / 0.8 * 1.25 = 3.1 -> 3 <= 24: the last round, raised to the floor 0.25 x 16 = 4
  ctx = _ctx(train_rounds=1, kept=14, last_zero_var_ratio=0.2)
  assert rounds.next_size(ctx) == 4 and ctx.final_round_planned
  ctx.train_rounds, ctx.kept = 2, 15
  assert rounds.next_size(ctx) is None  # after the last round the step trains on 15 groups
  # a round of only zero-variance groups: another first-sized round (the estimate is undefined)
  assert rounds.next_size(_ctx(train_rounds=1, kept=6, last_zero_var_ratio=1.0)) == 24
  assert rounds.next_size(_ctx(train_rounds=1, kept=16, last_zero_var_ratio=0.5)) is None
  assert rounds.next_size(_ctx(train_rounds=8, kept=3, last_zero_var_ratio=0.5)) is None


def test_greso_skips_easy_questions_in_a_run():
  n = 64
  env = Env(np.r_[np.ones(n // 2), np.full(n // 2, 0.5)])
  s = _greso(n=n)
  skipped = 0
  for step in range(12):
    out = collect_batch(s, env, step, 16, seed=3)
    assert len(out.indices) + out.metrics["selection/short_groups"] == 16
    assert not group_stats(out.rewards_QxG).zero_var_Q.any()
    skipped += out.metrics["selection/questions_skipped"]
  assert skipped > 0
  assert s.p_easy < 0.5  # half the rolled-out groups were all-correct: above the easy target


def test_mopps_posterior_hand_computed():
  s = MoppsStrategy(EpochStream(4, 0), 4, prior_a=1.0, prior_b=1.0, forget=0.9, alpha=0.5,
                    candidate_factor=1)
  half = np.array([1, 1, 0, 0, 1, 1, 0, 0], np.float32)
  prop = Proposal(np.array([2]), np.full(1, np.nan))
  s.observe(_ctx(), prop, half[None])
  # a = 0.9*1 + 0.1*1 + 0.5*8 = 5, b = 5
  assert (s.a[2], s.b[2]) == pytest.approx((5.0, 5.0))
  s.observe(_ctx(), prop, np.ones((1, 8), np.float32))
  # a = 0.9*5 + 0.1 + 8 = 12.6, b = 0.9*5 + 0.1 + 0 = 4.6
  assert (s.a[2], s.b[2]) == pytest.approx((12.6, 4.6))
  assert s.a[0] == 1.0 and s.b[0] == 1.0  # unobserved questions keep the prior


def test_mopps_picks_nearest_target():
  n = 40
  s = MoppsStrategy(EpochStream(n, 0), n, prior_a=1.0, prior_b=1.0, forget=0.9, alpha=0.5,
                    candidate_factor=4)
  means = np.linspace(0.02, 0.98, n)
  s.a, s.b = means * 1e6, (1 - means) * 1e6  # sharp posteriors: Thompson draws ~ their means
  prop = s.propose(_ctx(batch_questions=10))
  expected = np.argsort(np.abs(means - 0.5), kind="stable")[:10]
  assert sorted(prop.indices.tolist()) == sorted(expected.tolist())
  np.testing.assert_allclose(prop.predicted, means[prop.indices], atol=1e-5)


def test_dynamic_sampling_fills_with_variance_groups():
  n = 200
  p = np.where(np.arange(n) % 2 == 0, 0.5, 1.0)  # half the questions always give all-correct groups
  env = Env(p)
  s = DynamicSamplingStrategy(EpochStream(n, 1), rounds=_rounds(1.5, 10))
  out = collect_batch(s, env, 0, 32)
  assert out.rewards_QxG.shape == (len(out.indices), G)
  assert len(out.indices) + out.metrics["selection/short_groups"] == 32
  assert not group_stats(out.rewards_QxG).zero_var_Q.any()
  assert out.metrics["selection/effective_frac"] == 1.0
  # the collected groups are the chosen questions', in the same order
  np.testing.assert_array_equal(out.rollouts.groups.qid_Q, out.indices)


def test_dynamic_sampling_rounds_and_short_last_batch():
  """12 questions, 3 of them with reward variance, batch 8, first round 1.5 x 8 = 12: round 1 keeps
  3 (zero-variance ratio 0.75, estimate 5 / 0.25 * 1.25 = 25 > 12: size 12); round 2 keeps 3 more
  (estimate 2 / 0.25 * 1.25 = 10 <= 12: the last round, 10 questions); then the step trains on what
  it kept, fewer than 8 when round 3's 10 questions miss a variance question."""
  mixed = np.r_[np.ones(G // 2), np.zeros(G // 2)].astype(np.float32)
  sizes = []

  def rollout(idx, round):
    sizes.append(len(idx))
    return Rollouts.rewards_only(idx, np.stack([mixed if i < 3 else np.ones(G, np.float32)
                                                for i in idx]))

  for seed in range(6):
    sizes.clear()
    s = DynamicSamplingStrategy(EpochStream(12, seed), rounds=_rounds(1.5, 8))
    out = collect_batch(s, rollout, 0, 8)
    assert sizes == [12, 12, 10]
    third = s.source._order(2)[:10]
    kept = 6 + int(np.sum(third < 3))
    assert len(out.indices) == min(kept, 8)
    assert out.metrics["selection/short_groups"] == 8 - min(kept, 8)
    assert set(out.indices.tolist()) <= {0, 1, 2}


def test_dynamic_sampling_trains_on_nothing_when_no_group_varies():
  env = Env(np.ones(50))
  s = DynamicSamplingStrategy(EpochStream(50, 1), rounds=_rounds(1.0, 2))
  out = collect_batch(s, env, 0, 8)
  assert len(out.indices) == 0 and out.metrics["selection/short_groups"] == 8
  assert out.metrics["selection/rounds"] == 2 and out.metrics["selection/rollouts"] == 2 * 8 * G


def test_epoch_stream_covers_each_epoch_once():
  st = EpochStream(10, 5)
  first = st.take(7)
  rest = st.take(3)
  assert sorted(np.r_[first, rest].tolist()) == list(range(10))
  assert st.epoch == 1 and st.pos == 0


def _planted_dots_inputs(n=400, d=16, seed=0):
  """Embeddings whose first coordinate encodes the true pass rate; a briefly trained estimator."""
  rng = np.random.default_rng(seed)
  p = rng.uniform(0, 1, n)
  emb = rng.normal(size=(n, d)).astype(np.float32) * 0.3
  emb[:, 0] = 4 * (p - 0.5)
  labels = (rng.random((n, 16)) < p[:, None]).mean(1).astype(np.float32)
  model = init_estimator(EstimatorConfig(d, width=32, dropout=0.0))
  fit_estimator(model, emb, labels, steps=150, lr=3e-3, warmup=10, batch=64, ref_size=32, seed=0)
  return p, emb, model


@pytest.fixture(scope="module")
def planted():
  return _planted_dots_inputs()


def make_strategy(config, num_questions, **kw):
  """The job's strategy for `config`, built from its typed settings as the job builds it."""
  s = settings.read(config)
  return factory.make_strategy(config.method, s.selection, num_questions, seed=s.seed,
                               group_size=s.group_size, **kw)


def _config(method, **sel):
  c = base_config()
  c.method = method
  c.seed = 7
  c.selection.dots.ref_size = 24
  c.selection.dots.round_steps = 2
  c.selection.dots.chunk = 128
  for k, v in sel.items():
    section, key = k.split("__")
    c.selection[section][key] = v
  return c


def test_dots_selection_concentrates_near_alpha(planted):
  p, emb, model = planted
  env = Env(p)
  dots = make_strategy(_config("dots"), len(p), embeddings_NxD=emb, estimator=model)
  uni = make_strategy(_config("grpo"), len(p))
  dist_dots, dist_uni = [], []
  for step in range(4):
    a = collect_batch(dots, env, step, 16, seed=1)
    b = collect_batch(uni, env, step, 16, seed=1)
    dist_dots.append(np.abs(p[a.indices] - 0.5).mean())
    dist_uni.append(np.abs(p[b.indices] - 0.5).mean())
    assert len(a.indices) == 16
    assert not np.isnan(a.metrics["selection/pred_pass_rate"])
  # uniform p in [0, 1]: E|p - 0.5| = 0.25; DOTS should pick far closer to 0.5
  assert np.mean(dist_dots) < 0.12 < np.mean(dist_uni)
  # reference rollouts happen once per round of 2 steps and are not trained on
  assert dots.source.rounds == 2


def test_predictions_are_scored_against_exact_pass_rates_and_the_oracle_selects_with_them(planted):
  p, emb, model = planted
  env = Env(p)
  exact = lambda i: env.p[i]
  dots = make_strategy(_config("dots"), len(p), embeddings_NxD=emb, estimator=model)
  oracle = make_strategy(_config("oracle"), len(p))
  uni = make_strategy(_config("grpo"), len(p))
  for step in range(4):
    d = collect_batch(dots, env, step, 16, seed=1, pass_rates=exact)
    o = collect_batch(oracle, env, step, 16, seed=1, pass_rates=exact)
    u = collect_batch(uni, env, step, 16, seed=1, pass_rates=exact)
    # The error against the truth, on the trained questions, next to the one against observation.
    assert d.metrics["selection/pred_abs_err_exact"] == pytest.approx(
        np.abs(d.predicted - p[d.indices]).mean())
    assert d.metrics["selection/exact_pass_rate"] == pytest.approx(p[d.indices].mean())
    # The oracle predicts the exact rates (a fixed environment: no drift within a round) and rolls
    # out no reference questions; uniform GRPO predicts nothing, so nothing is scored.
    assert o.metrics["selection/pred_abs_err_exact"] == pytest.approx(0.0, abs=1e-6)
    assert o.metrics["selection/rollouts_reference"] == 0
    assert "selection/pred_abs_err_exact" not in u.metrics
    # Every strategy's batch against a uniform one in expected reward-variance groups (the pool's
    # evenly spaced sample), and a predicting source's r with the truth over that sample.
    sample = np.unique(np.linspace(0, len(p) - 1, min(len(p), driver.EXACT_SAMPLE)).astype(int))
    share = lambda q: np.mean(1 - q ** G - (1 - q) ** G)
    for got in (d, o, u):
      assert got.metrics["selection/signal_share_exact"] == pytest.approx(share(p[got.indices]))
      assert got.metrics["selection/pool_signal_share_exact"] == pytest.approx(share(p[sample]))
    assert o.metrics["selection/signal_share_exact"] > u.metrics["selection/pool_signal_share_exact"]
    assert o.metrics["selection/pred_pearson_exact"] == pytest.approx(1.0)
    assert d.metrics["selection/pred_pearson_exact"] == pytest.approx(
        np.corrcoef(dots.source.pred[sample], p[sample])[0, 1])
    assert "selection/pred_pearson_exact" not in u.metrics
    assert np.abs(p[o.indices] - 0.5).max() < 0.1  # about 80 of the 400 uniform rates lie that close
  assert oracle.source.rounds == 2
  with pytest.raises(RuntimeError, match="exact pass rates"):
    collect_batch(make_strategy(_config("oracle"), len(p)), env, 0, 16, seed=1)


def _run(strategy, env, steps, start=0):
  out = []
  for step in range(start, start + steps):
    b = collect_batch(strategy, env, step, 16, seed=11, pass_rates=lambda i: env.p[i])
    out.append((b.indices.copy(), b.rewards_QxG.copy(),
                {k: v for k, v in b.metrics.items()
                 if k not in ("selection/overhead_s", "selection/diagnostic_s")}))
  return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_deterministic_and_resumable(method, planted):
  p, emb, model = planted

  def fresh():
    kw = {}
    if METHODS[method].needs_estimator:
      kw = dict(embeddings_NxD=emb, estimator=model)
    return make_strategy(_config(method), len(p), **kw)

  a, b = fresh(), fresh()
  env_a, env_b = Env(p, seed=3), Env(p, seed=3)
  run_a = _run(a, env_a, 5)
  run_b = _run(b, env_b, 3)
  state = {k: np.array(v) for k, v in b.state_dict().items()}  # a saved copy
  c = fresh()
  c.load_state_dict(state)
  env_c = Env(p, seed=3)
  env_c.calls = env_b.calls
  run_c = _run(c, env_c, 2, start=3)
  for x, y in zip(run_a, run_b + run_c):
    np.testing.assert_array_equal(x[0], y[0])
    np.testing.assert_array_equal(x[1], y[1])
    assert x[2].keys() == y[2].keys()
    for k in x[2]:
      np.testing.assert_equal(x[2][k], y[2][k])


def test_state_from_another_method_is_refused(planted):
  p, _, _ = planted
  g = make_strategy(_config("greso"), len(p))
  m = make_strategy(_config("mopps"), len(p))
  with pytest.raises(ValueError, match="greso"):
    m.load_state_dict(g.state_dict())


def test_unknown_method_names_the_flag():
  with pytest.raises(ValueError, match="config.method"):
    make_strategy(_config("nope"), 10)


def test_dots_greso_combines_targeting_and_filtering(planted):
  p, emb, model = planted
  env = Env(p)
  s = make_strategy(_config("dots_rr_greso"), len(p), embeddings_NxD=emb, estimator=model)
  for step in range(4):
    out = collect_batch(s, env, step, 16, seed=2)
    assert len(out.indices) + out.metrics["selection/short_groups"] == 16
    # post-rollout filtering: only groups with reward variance enter
    assert out.metrics["selection/effective_frac"] == 1.0
    assert np.abs(p[out.indices] - 0.5).mean() < 0.15  # still DOTS-targeted candidates
    assert not np.isnan(out.metrics["selection/pred_pass_rate"])
  assert "greso/p_easy" in out.metrics and "dots/recal_slope" in out.metrics


def test_driver_metrics_hand_case():
  n = 8
  pattern = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, 1, 0],
                      [1, 1, 0, 0, 0, 0, 0, 0]], np.float32)

  def rollout(idx, round):
    return Rollouts.rewards_only(idx, pattern[np.asarray(idx) % 4])

  s = make_strategy(_config("grpo"), n)
  out = collect_batch(s, rollout, 0, 4, seed=0)
  m = out.metrics
  obs = pattern[out.indices % 4].mean(1).mean()
  assert m["selection/obs_pass_rate"] == pytest.approx(obs)
  assert np.isnan(m["selection/pred_pass_rate"])  # uniform predicts nothing
  assert m["selection/rollouts"] == 32 and m["selection/rollouts_skipped"] == 0
  out = collect_batch(s, rollout, 1, 4, seed=0)
  assert out.metrics["selection/rollouts_cumulative"] == 64
  # rows 2 and 3 of the pattern have reward variance
  assert out.metrics["selection/effective_frac"] == pytest.approx(np.isin(out.indices % 4, [2, 3]).mean())


def test_dots_method_without_embeddings_is_refused():
  with pytest.raises(ValueError, match="embeddings_NxD"):
    make_strategy(_config("dots"), 10)
