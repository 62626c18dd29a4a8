"""Exact resume: 6 uninterrupted steps == 3 steps, process SIGKILLed after its save, resumed for 3.

The job below is a miniature of the main loop's use of this package (fixed synthetic batches instead
of a sampler): the learner (replay mixing keyed by (seed, step), pi_old, the jitted update), metrics,
and a checkpoint each step holding train state + the learner's state (its replay buffer) + metric
history. Run as a script it is the killable worker.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np

G, Q, P, R = 2, 4, 4, 4
KEY_FIELDS = ("loss", "clip_frac", "entropy", "grad_norm", "replay_r_mean", "replay_r_old_max",
              "reward_mean", "replayed")


def run_job(workdir: str, steps: int, kill_after: int | None = None) -> dict:
  import jax
  from flax import nnx

  from dots_jax.config_base import base_config
  from dots_jax.run import settings
  from dots_jax.model import qwen2
  from dots_jax.rl import update
  from dots_jax.rl.batch import Groups
  from dots_jax.run.checkpoint import Checkpointer
  from dots_jax.rl.learner import Learner
  from dots_jax.run.metrics import MetricsWriter
  from dots_jax.rl.replay import ReplayBuffer
  from dots_jax.bench.random_batch import random_batch

  cfg = qwen2.Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1)
  config = base_config()
  config.rl.lr = 1e-2
  config.rl.adam_eps = 1e-3
  config.rl.mini_batches = 2
  config.rl.schedule = "cosine"
  config.rl.warmup_steps = 1
  graphdef, params = nnx.split(qwen2.init_model(cfg, 0))
  ucfg = settings.read(config).update
  opt = update.make_optimizer(settings.read(config).optimizer, total_steps=steps, updates_per_step=ucfg.updates_per_step)
  fn = update.make_update_fn(graphdef, opt, ucfg)
  state = update.init_train_state(params, opt, seed=0)
  buffer = ReplayBuffer(capacity=3, group_size=G, total_len=P + R, batch_groups=Q,
                        fresh_fraction=0.5, warmup_steps=2)
  learner = Learner(fn, batch_groups=Q, adv_norm="grpo", seed=0, buffer=buffer)
  writer = MetricsWriter(workdir, tensorboard=False)
  ckpt = Checkpointer(workdir, keep=2)
  state, host, _ = ckpt.restore_or_init(state)
  if host is not None:
    learner.load_state_dict(host["replay"])
    writer.load_state_dict(host["metrics"])
  start = int(state.step)
  for step in range(start + 1, steps + 1):
    b = random_batch(step, rows=Q * G, prompt_len=P, completion_len=R, vocab_size=cfg.vocab_size,
                     group_size=G)
    # Pretend rewards with and without variance; mu differs from pi so replayed r_old != 1.
    rewards = np.random.default_rng(100 + step).integers(0, 2, (Q, G)).astype(np.float32)
    fresh = Groups(b.tokens_NxT.reshape(Q, G, -1), b.mask_NxT.reshape(Q, G, -1),
                   b.loss_mask_NxT.reshape(Q, G, -1), b.behav_logp_NxT.reshape(Q, G, -1), rewards,
                   np.arange(Q) + 10 * step)
    fresh = fresh.take(np.arange(learner.fresh_groups(step)))
    state, learned = learner.learn(state, fresh, step)
    metrics = dict(learned.metrics)
    update.raise_if_nonfinite(metrics, step)
    metrics["reward_mean"] = float(fresh.rewards_QxG.mean())
    metrics["replayed"] = learned.replayed
    writer.write(step, metrics)
    ckpt.save(step, state, {"replay": learner.state_dict(), "metrics": writer.state_dict()})
    if step == kill_after:
      os.kill(os.getpid(), signal.SIGKILL)
  ckpt.close()
  return {"params": [np.asarray(x) for x in jax.tree.leaves(state.params)],
          "history": writer.history, "replay": buffer.state_dict()}


def _worker_cmd(workdir, steps, kill_after=None):
  code = ("import jax, sys; jax.config.update('jax_default_matmul_precision', 'highest'); "
          f"sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_rl_resume as t, numpy as np; "
          f"out = t.run_job({workdir!r}, {steps}, {kill_after}); "
          f"np.savez({os.path.join(workdir, 'final.npz')!r}, *out['params'])")
  return [sys.executable, "-c", code]


def test_resume_after_kill_is_exact(tmp_path):
  ref = run_job(str(tmp_path / "uninterrupted"), 6)
  work = str(tmp_path / "killed")
  os.makedirs(work)
  env = dict(os.environ)  # conftest's XLA_FLAGS / offline settings carry over
  first = subprocess.run(_worker_cmd(work, 6, kill_after=3), env=env, capture_output=True, text=True)
  assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
  assert not os.path.exists(os.path.join(work, "final.npz"))
  with open(os.path.join(work, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
  second = subprocess.run(_worker_cmd(work, 6), env=env, capture_output=True, text=True)
  assert second.returncode == 0, second.stderr[-3000:]
  resumed = np.load(os.path.join(work, "final.npz"))
  assert len(resumed.files) == len(ref["params"])
  for i, p in enumerate(ref["params"]):
    np.testing.assert_array_equal(resumed[f"arr_{i}"], p)
  with open(os.path.join(work, "metrics.jsonl")) as f:
    hist = [json.loads(line) for line in f]
  assert [h["step"] for h in hist] == list(range(1, 7))
  for h, r in zip(hist, ref["history"]):
    for k in KEY_FIELDS:
      assert h[k] == r[k], (h["step"], k)
  assert any(r["replay_tokens"] > 0 for r in ref["history"])  # replay actually exercised
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["5", "6"]  # keep=2
