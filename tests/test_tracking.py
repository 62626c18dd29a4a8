"""The predictability measures of `dots_jax.tiny.tracking` on inputs with known answers (a run end to
end: tests/test_main.py)."""
import numpy as np
import pytest

from dots_jax.tiny import tracking


def test_group_r2_is_the_variance_the_groups_explain():
  keys = ["a", "a", "b", "b"]
  assert tracking.group_r2(np.array([0.1, 0.1, 0.9, 0.9]), keys) == pytest.approx(1.0)
  # Group means 0.2 and 0.8 around 0.5; within-group deviations 0.1: R^2 = 0.09 / 0.1 = 0.9.
  assert tracking.group_r2(np.array([0.1, 0.3, 0.7, 0.9]), keys) == pytest.approx(0.9)
  assert np.isnan(tracking.group_r2(np.full(4, 0.5), keys))
  np.testing.assert_allclose(tracking.group_means(np.array([0.1, 0.3, 0.7, 0.9]), keys),
                             [0.2, 0.2, 0.8, 0.8])


def test_ridge_readout_finds_a_linear_signal_and_not_noise():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 16))
  linear = 1 / (1 + np.exp(-x[:, 3]))
  assert tracking.ridge_r(x, linear, penalty=1.0) > 0.95
  assert abs(tracking.ridge_r(x, rng.uniform(size=2000), penalty=1.0)) < 0.1
  # Its predictions are of the held-out rows, on the scale of p (the rule compares them with alpha).
  exact = 0.2 + 0.1 * x[:, 3]
  pred = tracking.ridge_predict(x, exact, penalty=1.0)
  assert pred.shape == (1000,)
  np.testing.assert_allclose(pred, exact[tracking.RIDGE_TEST], atol=0.01)


def test_pearson_of_a_constant_is_nan():
  assert np.isnan(tracking.pearson(np.ones(5), np.arange(5)))
  assert tracking.pearson(np.arange(5), 2 * np.arange(5) + 1) == pytest.approx(1.0)


def test_signal_share_is_the_chance_a_group_has_reward_variance():
  np.testing.assert_allclose(tracking.signal_share(np.array([0.0, 1.0, 0.5, 0.1]), 2),
                             [0.0, 0.0, 0.5, 2 * 0.1 * 0.9])


def test_round_block_of_exact_predictions_is_the_oracles():
  p = np.linspace(0.0, 1.0, 101)
  rng = np.random.default_rng(0)
  # A near-zero temperature makes the rule a top-k by |p - 0.5|: the 11 questions from 0.45 to 0.55.
  exact = tracking.round_block([p.copy()], p, group_size=4, alpha=0.5, tau=1e-6, budget=11, rng=rng)
  share = tracking.signal_share(p, 4)
  assert exact.signal_estimator == pytest.approx(share[45:56].mean())
  assert exact.signal_exact == pytest.approx(exact.signal_estimator)
  assert exact.signal_uniform == pytest.approx(share.mean()) and exact.error == 0.0
  # Predictions that say nothing (all 0.5) draw a uniform block, with their error on it.
  blind = tracking.round_block([np.full(101, 0.5)] * 200, p, group_size=4, alpha=0.5, tau=1e-6,
                               budget=11, rng=rng)
  assert blind.signal_estimator == pytest.approx(share.mean(), abs=0.02)
  assert blind.error == pytest.approx(np.abs(p - 0.5).mean(), abs=0.01)


def test_probe_figures_by_hand():
  """The go/no-go figures of `tiny.probe` on hand-made pass rates."""
  from dots_jax.tiny import probe
  assert probe.mid_band_share(np.array([0.1, 0.3, 0.31, 0.5, 0.69, 0.7, 0.9, 1.0])) == 3 / 8
  # G = 1: a group is zero-variance with probability 1 (p^1 + (1 - p)^1 = 1): nothing informative.
  zz, ii = probe.persistence(np.array([0.2, 0.7]), np.array([0.5, 0.5]), 1)
  assert zz == 1.0 and np.isnan(ii)
  # G = 2: z = p^2 + (1 - p)^2. Question A: 1.0 -> 0.5 (z 1 -> 0.5); B: 0.5 -> 0.5 (z 0.5 -> 0.5).
  zz, ii = probe.persistence(np.array([1.0, 0.5]), np.array([0.5, 0.5]), 2)
  assert zz == pytest.approx((1 * 0.5 + 0.5 * 0.5) / 1.5)
  assert ii == pytest.approx((0 * 0.5 + 0.5 * 0.5) / 0.5)
  # Structure: two groups whose means explain all of the variance at the first evaluation, none of
  # it at the second (every group holds both values).
  structure = ["a", "a", "b", "b"]
  rates = {0: np.array([0.2, 0.2, 0.8, 0.8]), 10: np.array([0.2, 0.8, 0.2, 0.8])}
  figs = probe.eval_figures(rates, structure, group_size=8)
  assert [f.step for f in figs] == [0, 10]
  assert figs[0].structure_r2 == pytest.approx(1.0) and figs[1].structure_r2 == pytest.approx(0.0)
  assert np.isfinite(figs[0].zero_var_persists) and np.isnan(figs[1].zero_var_persists)
  curve = {"step": np.array([0.0, 30.0, 60.0, 90.0]), "accuracy": np.array([0.4, 0.5, 0.6, 0.7])}
  checked = probe.verdict(figs, curve)
  assert checked["structure_r2_min"]["value"] == pytest.approx(0.0)
  assert not checked["structure_r2_min"]["pass"]
  assert checked["heldout_gain"]["value"] == pytest.approx(0.3) and checked["heldout_gain"]["pass"]
  assert checked["late_gain_share"]["value"] == pytest.approx(1 / 3)
