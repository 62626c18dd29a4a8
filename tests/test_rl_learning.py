"""Learning signal: on a tiny task the sampled reward rises under GRPO and under GRPO-RR.

Task: after any prompt, emit the token TARGET; reward = fraction of completion tokens equal to it
(the stop token counts as a miss, so the policy must learn to keep emitting TARGET). A random policy
scores ~1/V. Rollouts come from the real `dots_jax.sampling.Sampler`.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from dots_jax.config_base import base_config
from dots_jax.run import settings
from dots_jax.model import qwen2
from dots_jax.rl import update
from dots_jax.rl.batch import groups_from_samples
from dots_jax.rl.learner import Learner
from dots_jax.rl.replay import ReplayBuffer
from dots_jax.rollout.sampler import Sampler

V, EOS, PAD, TARGET = 16, 1, 0, 7
Q, G, P, R = 8, 8, 3, 4
STEPS = 12
CFG = qwen2.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, eos_token_id=EOS)


@pytest.fixture(scope="module")
def machinery():
  config = base_config()
  config.rl.lr = 2e-2
  config.rl.clip_eps_high = 0.28
  config.rl.mini_batches = 2
  graphdef, params = nnx.split(qwen2.init_model(CFG, 0))
  ucfg = settings.read(config).update
  opt = update.make_optimizer(settings.read(config).optimizer, total_steps=STEPS, updates_per_step=ucfg.updates_per_step)
  fn = update.make_update_fn(graphdef, opt, ucfg)
  sampler = Sampler(graphdef, CFG, max_prompt_len=P, max_new_tokens=R, eos_ids=(EOS,), pad_id=PAD)
  return params, opt, fn, sampler


def rewards_of(sample):
  hit = (sample.tokens_NxR == TARGET) & (sample.mask_NxR > 0)
  return hit.sum(axis=1).astype(np.float32) / R


def train(machinery, fresh_fraction):
  params, opt, fn, sampler = machinery
  # On the device up front, as the main loop puts it: the programs then see one layout throughout.
  state = jax.device_put(update.init_train_state(jax.tree.map(np.array, params), opt, seed=0),
                         jax.devices()[0])
  buffer = ReplayBuffer(capacity=16, group_size=G, total_len=P + R, batch_groups=Q,
                        fresh_fraction=fresh_fraction, warmup_steps=1)
  learner = Learner(fn, batch_groups=Q, adv_norm="grpo", seed=0, buffer=buffer)
  data_rng = np.random.default_rng(1)
  curve, replayed, drift = [], 0, 0.0
  for step in range(1, STEPS + 1):
    prompts = data_rng.integers(2, V, (Q, P)).astype(np.int32)
    sample = sampler.generate(state.params, prompts, np.ones((Q, P), np.int32),
                              jax.random.PRNGKey(step), num_samples=G, temperature=1.0)
    rewards = rewards_of(sample)
    curve.append(float(rewards.mean()))
    fresh = groups_from_samples(sample, rewards, np.arange(Q) + Q * step, G, P + R, PAD)
    fresh = fresh.take(np.arange(learner.fresh_groups(step)))
    state, learned = learner.learn(state, fresh, step)
    replayed += learned.replayed
    update.raise_if_nonfinite(learned.metrics, step)
    drift = max(drift, learned.gap["logp_gap_max"])
  print(f"fresh_fraction={fresh_fraction}: reward curve {np.round(curve, 3).tolist()}")
  return curve, replayed, drift


@pytest.mark.parametrize("fresh_fraction", [1.0, 0.5], ids=["grpo", "grpo_rr"])
def test_reward_rises(machinery, fresh_fraction):
  curve, replayed, drift = train(machinery, fresh_fraction)
  # Sampler log-probs, packed by groups_from_samples, line up with the trainer's recomputation.
  assert drift < 1e-4
  assert curve[0] < 0.2
  assert np.mean(curve[-3:]) > curve[0] + 0.3, curve
  assert (replayed > 0) == (fresh_fraction < 1.0)
  # The learner's three programs compiled once each for the whole run (short batches are padded
  # to the planned shape; replayed and fresh rows share it).
  _, _, fn, _ = machinery
  assert [f._cache_size() for f in (fn.old_logp_fn, fn.update_fn, fn.gap_fn)] == [1, 1, 1]
