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


def test_ridge_readout_finds_a_linear_signal_and_not_noise():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2000, 16))
  linear = 1 / (1 + np.exp(-x[:, 3]))
  assert tracking.ridge_r(x, linear, penalty=1.0) > 0.95
  assert abs(tracking.ridge_r(x, rng.uniform(size=2000), penalty=1.0)) < 0.1


def test_pearson_of_a_constant_is_nan():
  assert np.isnan(tracking.pearson(np.ones(5), np.arange(5)))
  assert tracking.pearson(np.arange(5), 2 * np.arange(5) + 1) == pytest.approx(1.0)
