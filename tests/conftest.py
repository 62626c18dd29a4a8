"""Test-wide settings: 8 simulated CPU devices (sharding tests), float32 matmuls at full precision."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The tests run on the CPU. With libtpu and the CUDA plugin installed (the plan extra) jax would
# otherwise try both backends first, and a failed CUDA start leaves no compile-only GPU topology.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shared_tiny(tmp_path_factory):
  """One directory per test process for the micro tiny base and its prepared data (each made once per
  config hash by the first test that needs it): the modules that train micro runs share them instead
  of each fine-tuning its own base."""
  return tmp_path_factory.mktemp("shared_tiny")


@pytest.fixture(scope="module")
def micro_cache(shared_tiny):
  """`shared_tiny`, with JAX's persistent compilation cache on (one directory per test process):
  micro runs in any module compile each program once. JAX keeps a cache it has opened for the rest
  of the process, so tests that run after such a module in the same process use it too (the
  settings are restored for anything that reads them)."""
  old = jax.config.jax_compilation_cache_dir
  old_min = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_compilation_cache_dir", str(shared_tiny / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield shared_tiny
  jax.config.update("jax_compilation_cache_dir", old)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)


def reward_settings(**overrides):
  """`config.reward`'s settings (config_base's defaults), with `overrides`."""
  from dots_jax.config_base import base_config
  from dots_jax.rewards import RewardSettings
  return RewardSettings(**{**base_config().reward.to_dict(), **overrides})
