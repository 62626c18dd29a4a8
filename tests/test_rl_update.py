"""The jitted GRPO / GRPO-RR update: log-prob definition, accumulation, GRPO reduction, guard, sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dots_jax.config_base import base_config
from dots_jax.run import settings
from dots_jax.model import qwen2
from dots_jax.rl import update
from dots_jax.run.checkpoint import Checkpointer, abstract_like
from dots_jax.rl.logprobs import logprobs_and_entropy
from dots_jax.rl.batch import RLBatch
from dots_jax.bench.random_batch import random_batch

CFG = qwen2.Qwen2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2)
ROWS, P, R = 8, 5, 6


def rl_config(**over):
  c = base_config()
  c.rl.lr = 1e-2
  c.rl.grad_clip = 1.0
  # Adam's first steps are ~ lr * g / (|g| + eps): with a tiny eps, float noise in near-zero gradients
  # (summation order differs between layouts) becomes lr-sized parameter differences.
  c.rl.adam_eps = 1e-3
  for k, v in over.items():
    setattr(c.rl, k, v)
  return c


def setup(config, seed=0):
  graphdef, params = nnx.split(qwen2.init_model(CFG, seed))
  ucfg = settings.read(config).update
  opt = update.make_optimizer(settings.read(config).optimizer, total_steps=10, updates_per_step=ucfg.updates_per_step)
  return graphdef, params, opt, ucfg


def batch_rows(seed=0, replay_fraction=0.5) -> RLBatch:
  return random_batch(seed, rows=ROWS, prompt_len=P, completion_len=R, vocab_size=CFG.vocab_size,
                      replay_fraction=replay_fraction)


def padded(rows: RLBatch) -> RLBatch:
  """`rows` followed by as many padding rows (every field zero)."""
  pad = lambda x: np.concatenate([x, np.zeros_like(x)])
  return RLBatch(**{f.name: pad(getattr(rows, f.name)) for f in dataclasses.fields(RLBatch)})


_FNS = {}  # one compiled update per config: XLA compiles are the slow part of these tests on CPU


def get_fn(config, seed=0):
  """(params, optimizer, jitted update) with the update compiled once per config."""
  graphdef, params, opt, ucfg = setup(config, seed)
  key = config.rl.to_json()
  if key not in _FNS:
    _FNS[key] = (opt, update.make_update_fn(graphdef, opt, ucfg))
  return params, *_FNS[key]


def run(config, rows, steps=1, seed=0, old_logp=None):
  """`steps` updates on `rows`, pi_old recomputed before each (or `old_logp` every time)."""
  params, opt, fn = get_fn(config, seed)
  state = update.init_train_state(params, opt, seed=0)
  for _ in range(steps):
    state, metrics = fn(state, fn.device_batch(state.params, rows, old_logp))
  return state, jax.device_get(metrics)


def assert_trees_close(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_logprobs_match_shared_definition():
  graphdef, params = nnx.split(qwen2.init_model(CFG, 0))
  b = batch_rows()
  both = jax.jit(lambda p, t, m: (logprobs_and_entropy(nnx.merge(graphdef, p), t, m, 0.7),
                                  qwen2.sequence_logprobs(nnx.merge(graphdef, p), t, m, 0.7)))
  (lp, ent), ref = both(params, b.tokens_NxT, b.mask_NxT)
  np.testing.assert_array_equal(np.asarray(lp), np.asarray(ref))
  assert np.all(np.asarray(ent)[b.mask_NxT > 0][1:] > 0)


def test_one_step_equals_direct_grpo_gradient_step():
  """mini=1, epochs=1: the update is AdamW on grad of the plain GRPO loss (ratio 1 at the start)."""
  config = rl_config()
  graphdef, params, opt, _ = setup(config)
  b = batch_rows(replay_fraction=0.0)

  def direct_loss(p):
    lp = qwen2.sequence_logprobs(nnx.merge(graphdef, p), b.tokens_NxT, b.mask_NxT)
    old = jax.lax.stop_gradient(lp)
    r = jnp.exp(lp - old)
    a = b.adv_N[:, None]
    obj = jnp.minimum(r * a, jnp.clip(r, 0.8, 1.2) * a)
    m = b.loss_mask_NxT
    return -jnp.sum(obj * m) / m.sum()

  @jax.jit
  def direct_step(p):
    upd, _ = opt.update(jax.grad(direct_loss)(p), opt.init(p), p)
    return optax.apply_updates(p, upd)

  expected = direct_step(params)
  state, metrics = run(config, b)
  assert_trees_close(state.params, expected, rtol=2e-5, atol=1e-7)
  assert metrics["clip_frac"] == 0.0 and metrics["replay_tokens"] == 0.0
  assert int(state.step) == 1


def test_fresh_rows_ignore_sampler_logprobs():
  """For fresh rows mu := pi_old, so sampler log-probs (and their drift) cannot change the update."""
  b1 = batch_rows(1, replay_fraction=0.5)
  fresh = ~b1.is_replay_N
  b2 = dataclasses.replace(
      b1, behav_logp_NxT=np.where(fresh[:, None], b1.behav_logp_NxT - 3.0, b1.behav_logp_NxT))
  config = rl_config(loss_agg="seq_mean_token_mean", mini_batches=2, micro_batch=2, ppo_epochs=2)
  s1, m1 = run(config, b1, steps=2)
  s2, m2 = run(config, b2, steps=2)
  assert_trees_close(s1.params, s2.params, rtol=0, atol=0)
  assert m1["replay_tokens"] > 0 and m1["replay_r_old_min"] != 1.0
  params, _, fn = get_fn(config)
  g1, g2 = (fn.gap(fn.device_batch(params, b)) for b in (b1, b2))
  assert g2["logp_gap_max"] > g1["logp_gap_max"]  # the gap sees the sampler's log-probs


def test_behaviour_gap_matches_a_hand_computation():
  """|log mu - log pi_old| over fresh completion tokens only: mean, p99, max, share off by > 10%."""
  params, _, fn = get_fn(rl_config())
  rows = batch_rows(8, replay_fraction=0.5)
  batch = fn.device_batch(params, rows)
  delta = np.zeros((ROWS, P + R), np.float32)
  fresh = (rows.loss_mask_NxT > 0) & ~rows.is_replay_N[:, None]
  values = np.linspace(-0.3, 0.3, int(fresh.sum())).astype(np.float32)
  delta[fresh] = values
  delta[~fresh] = 5.0  # replayed rows and prompt positions must not count
  gap = fn.gap(batch.replace(behav_logp_NxT=batch.old_logp_NxT - delta))
  a = np.abs(values)
  assert gap["logp_gap_max"] == pytest.approx(a.max(), rel=1e-5)
  assert gap["logp_gap_mean"] == pytest.approx(a.mean(), rel=1e-5)
  assert gap["logp_gap_p99"] == pytest.approx(np.quantile(a, 0.99), rel=1e-4)
  assert gap["ratio_off_frac"] == pytest.approx(np.mean(np.abs(np.expm1(values)) > 0.1))


def test_tis_with_an_infinite_cap_and_equal_logprobs_is_todays_update():
  rows = batch_rows(9, replay_fraction=0.5)
  params, _, fn = get_fn(rl_config())
  same = fn.device_batch(params, rows)
  same = same.replace(behav_logp_NxT=jnp.where(same.is_replay_N[:, None], same.behav_logp_NxT,
                                               same.old_logp_NxT))
  out = []
  for cap in (0.0, float("inf")):
    params, opt, fn = get_fn(rl_config(behavior_is_cap=cap))
    state, m = fn(update.init_train_state(params, opt, seed=0), same)
    out.append((state, jax.device_get(m)))
  assert_trees_close(out[0][0].params, out[1][0].params, rtol=0, atol=0)
  assert out[0][1]["loss"] == out[1][1]["loss"]
  assert out[1][1]["tis_weight_mean"] == 1.0 and out[1][1]["tis_capped_frac"] == 0.0


def test_micro_batch_accumulation_matches_full_batch():
  b = batch_rows(2)
  agg = "seq_mean_token_mean"  # the aggregation whose weights depend on whole-sequence lengths
  full, mf = run(rl_config(loss_agg=agg, mini_batches=2, ppo_epochs=2), b, steps=2)
  micro, mm = run(rl_config(loss_agg=agg, mini_batches=2, micro_batch=2, ppo_epochs=2), b, steps=2)
  assert_trees_close(full.params, micro.params, rtol=1e-4, atol=1e-6)
  for k in ("loss", "clip_frac", "entropy", "replay_r_mean", "replay_r_max"):
    np.testing.assert_allclose(mf[k], mm[k], rtol=1e-4, atol=1e-7, err_msg=k)


def test_kl_reference_and_split_errors():
  b = batch_rows(3)
  config = rl_config(kl_beta=0.1)
  graphdef, params, opt, ucfg = setup(config)
  ref = jax.tree.map(jnp.array, params)
  state = update.init_train_state(params, opt, seed=0)
  fn = update.make_update_fn(graphdef, opt, ucfg)
  with pytest.raises(ValueError, match="kl_beta"):
    fn(state, fn.device_batch(state.params, b))
  with pytest.raises(TypeError, match="DeviceBatch"):
    fn(state, b, ref)
  state, m = fn(state, fn.device_batch(state.params, b), ref)
  assert m["kl"] == pytest.approx(0.0, abs=1e-7)  # policy == reference before the first update
  state, m = fn(state, fn.device_batch(state.params, b), ref)
  assert m["kl"] > 0
  with pytest.raises(ValueError, match="micro_batch=3"):
    update.UpdateConfig(micro_batch=3).split(8)


def test_schedule_warmup_then_cosine():
  rl = settings.read(rl_config(schedule="cosine", warmup_steps=2, lr=1.0, min_lr_ratio=0.1)).optimizer
  sched = update.lr_schedule(rl, total_steps=6, updates_per_step=2)
  vals = [float(sched(i)) for i in range(13)]
  assert vals[0] == 0.0 and vals[2] == pytest.approx(0.5) and vals[4] == pytest.approx(1.0)
  assert vals[12] == pytest.approx(0.1) and all(x >= y for x, y in zip(vals[4:], vals[5:]))


def test_nonfinite_guard_keeps_last_checkpoint(tmp_path):
  params, opt, fn = get_fn(rl_config())
  state = update.init_train_state(params, opt, seed=0)
  ckpt = Checkpointer(str(tmp_path), keep=2)
  b = batch_rows(4)
  state, m = fn(state, fn.device_batch(state.params, b))
  update.raise_if_nonfinite(m, 1)
  ckpt.save(1, state, {"note": "good"})
  saved = jax.device_get(state)
  bad = dataclasses.replace(
      b, adv_N=np.where(np.arange(ROWS) == 3, np.nan, b.adv_N).astype(np.float32))
  new_state, m = fn(state, fn.device_batch(state.params, bad))
  assert bool(m["nonfinite"])
  assert_trees_close(new_state.params, saved.params, rtol=0, atol=0)  # update skipped
  with pytest.raises(update.NonFiniteError, match="RL step 2"):
    update.raise_if_nonfinite(m, 2)
  assert ckpt.all_steps() == [1]
  restored, host = ckpt.restore(abstract_like(new_state))
  assert host == {"note": "good"}
  assert_trees_close(restored, saved, rtol=0, atol=0)
  ckpt.close()


def test_sharded_update_matches_single_device():
  from dots_jax.model import sharding
  b = batch_rows(5)
  config = rl_config(loss_agg="seq_mean_token_mean", mini_batches=2, micro_batch=2, ppo_epochs=2)
  expected, m_ref = run(config, b, steps=2)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  graphdef, params, opt, ucfg = setup(config)
  st_sh = update.train_state_shardings(opt, params, mesh)
  state = jax.device_put(update.init_train_state(params, opt, seed=0), st_sh)
  fn = update.make_update_fn(graphdef, opt, ucfg, mesh=mesh, state_shardings=st_sh)
  for _ in range(2):
    state, m = fn(state, fn.device_batch(state.params, b))
  q_kernel = state.params["layers"][0]["self_attn"]["q_proj"]["kernel"]
  assert q_kernel.value.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert_trees_close(state.params, expected.params, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-4, atol=1e-7)


def test_sequence_parallel_residual_gives_the_same_update():
  """With a tensor axis and a sequence length it divides, the residual stream between blocks is
  split along the sequence (`ForwardShardings.seq_rows`): the same update as on one device."""
  from dots_jax.model import sharding
  b = random_batch(3, rows=ROWS, prompt_len=6, completion_len=R, vocab_size=CFG.vocab_size,
                   replay_fraction=0.5)
  assert (b.tokens_NxT.shape[1]) % 2 == 0
  config = rl_config(micro_batch=4)
  expected, m_ref = run(config, b, steps=2)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  graphdef, params, opt, ucfg = setup(config)
  st_sh = update.train_state_shardings(opt, params, mesh)
  assert sharding.forward_shardings(st_sh.params, mesh).seq_rows.spec[1] == "tensor"
  state = jax.device_put(update.init_train_state(params, opt, seed=0), st_sh)
  fn = update.make_update_fn(graphdef, opt, ucfg, mesh=mesh, state_shardings=st_sh)
  for _ in range(2):
    state, m = fn(state, fn.device_batch(state.params, b))
  assert_trees_close(state.params, expected.params, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-4, atol=1e-7)


def test_clipping_acts_from_the_second_mini_batch():
  """With one mini-batch the only update sees pi == pi_old, so no fresh token can be clipped; with
  the reference scripts' several mini-batches the later ones move away from pi_old and clip."""
  batch = batch_rows(seed=3, replay_fraction=0.0)
  _, one = run(rl_config(lr=0.3, mini_batches=1), batch)
  _, four = run(rl_config(lr=0.3, mini_batches=4), batch)
  assert one["clip_frac"] == 0.0 and one["optimizer_updates"] == 1
  assert four["clip_frac"] > 0.0 and four["optimizer_updates"] == 4


def test_padding_rows_are_left_out_and_empty_mini_batches_skipped():
  """A short batch padded to the planned shape trains exactly like the short batch alone: padding
  rows are last (no shuffle), their mini-batch has no loss tokens, so its optimizer update (Adam
  moments, step count, weight decay) does not happen."""
  real = batch_rows(seed=5, replay_fraction=0.0)
  long_rows = padded(real)
  short, m_short = run(rl_config(mini_batches=1, shuffle=False, weight_decay=0.1), real, steps=2)
  long, m_long = run(rl_config(mini_batches=2, shuffle=False, weight_decay=0.1), long_rows, steps=2)
  assert m_long["optimizer_updates"] == 1 and not m_long["nonfinite"]
  assert_trees_close(short.params, long.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m_short["loss"], m_long["loss"], rtol=1e-5)


def test_shuffle_keeps_padding_last():
  real = batch_rows(seed=6, replay_fraction=0.0)
  _, m = run(rl_config(mini_batches=2, shuffle=True), padded(real))
  assert m["optimizer_updates"] == 1  # the shuffled real rows fill the first mini-batch


def test_old_logp_program_is_the_updates_pi_old():
  config = rl_config(mini_batches=2)
  params, opt, fn = get_fn(config)
  batch = batch_rows(seed=7)
  old = fn.old_logp(params, batch.tokens_NxT, batch.mask_NxT)
  graphdef, _ = nnx.split(qwen2.init_model(CFG, 0))
  ref = logprobs_and_entropy(nnx.merge(graphdef, params), batch.tokens_NxT, batch.mask_NxT)[0]
  np.testing.assert_allclose(np.asarray(old), np.asarray(ref), atol=1e-6)
  a, ma = run(config, batch)
  b, mb = run(config, batch, old_logp=old)
  assert_trees_close(a.params, b.params, rtol=0, atol=0)


def test_chunked_logprobs_match_and_do_not_hold_the_full_logits():
  """The chunked vocabulary projection gives the same log-probs, entropies and gradients (<= 1e-6),
  and the compiled backward pass needs less scratch memory than with [N, T, V] logits."""
  cfg = qwen2.Qwen2Config(vocab_size=4096, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
  graphdef, params = nnx.split(qwen2.init_model(cfg, 0))
  b = random_batch(1, rows=8, prompt_len=24, completion_len=40, vocab_size=cfg.vocab_size)
  w = jnp.asarray(np.random.default_rng(0).normal(size=b.tokens_NxT.shape), jnp.float32)

  def loss(p, chunk):
    lp, ent = logprobs_and_entropy(nnx.merge(graphdef, p), b.tokens_NxT, b.mask_NxT, 0.8,
                                   chunk)
    return jnp.sum(w * lp) + 0.1 * jnp.sum(w * ent), (lp, ent)

  fns = {c: jax.jit(jax.value_and_grad(lambda p, c=c: loss(p, c), has_aux=True)) for c in (0, 16)}
  (_, (lp0, ent0)), g0 = fns[0](params)
  (_, (lp1, ent1)), g1 = fns[16](params)
  np.testing.assert_allclose(np.asarray(lp1), np.asarray(lp0), atol=1e-6)
  np.testing.assert_allclose(np.asarray(ent1), np.asarray(ent0), atol=1e-6)
  assert_trees_close(g1, g0, rtol=1e-5, atol=1e-6)
  temp = {c: f.lower(params).compile().memory_analysis().temp_size_in_bytes for c, f in fns.items()}
  full_logits = 8 * 63 * cfg.vocab_size * 4
  assert temp[0] >= full_logits and temp[16] < temp[0] / 2, temp


def test_remat_update_matches_and_runs_inside_the_micro_batch_loops():
  """model.remat (every reference config) recomputes layer activations in the backward pass of the
  update, whose micro-batches run inside lax.map / lax.scan: same result as without remat."""
  import dataclasses
  config = rl_config(mini_batches=2, micro_batch=2)
  batch = batch_rows(seed=9)
  states = []
  for remat in (False, True):
    graphdef, params = nnx.split(qwen2.init_model(dataclasses.replace(CFG, remat=remat), 0))
    ucfg = settings.read(config).update
    opt = update.make_optimizer(settings.read(config).optimizer, total_steps=10, updates_per_step=ucfg.updates_per_step)
    fn = update.make_update_fn(graphdef, opt, ucfg)
    state = update.init_train_state(params, opt, seed=0)
    state, _ = fn(state, fn.device_batch(state.params, batch))
    states.append(state)
  assert_trees_close(states[0].params, states[1].params, rtol=1e-5, atol=1e-6)


def test_bfloat16_first_moment_is_stored_sharded_and_follows_float32s():
  """rl.mu_dtype=bfloat16: AdamW's first moment in bfloat16 (a quarter less optimizer state), the
  second in float32, both laid out as their parameter on a mesh; a few steps land where float32
  moments do, to bfloat16's resolution of the moment."""
  from dots_jax.model import sharding
  b = batch_rows(7)
  f32, _ = run(rl_config(), b, steps=3)
  config = rl_config(mu_dtype="bfloat16")
  bf16, _ = run(config, b, steps=3)
  mus = [x for x in jax.tree.leaves(bf16.opt_state) if getattr(x, "ndim", 0) >= 1]
  dtypes = {str(x.dtype) for x in mus}
  assert dtypes == {"bfloat16", "float32"}, dtypes
  n_params = len(jax.tree.leaves(bf16.params))
  assert sum(str(x.dtype) == "bfloat16" for x in mus) == n_params  # mu only; nu stays float32
  assert_trees_close(bf16.params, f32.params, rtol=2e-2, atol=2e-4)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  graphdef, params, opt, _ = setup(config)
  st_sh = update.train_state_shardings(opt, params, mesh)
  state = jax.device_put(update.init_train_state(params, opt, seed=0), st_sh)
  q = lambda tree: tree["layers"][0]["self_attn"]["q_proj"]["kernel"]
  mu = q(state.opt_state[1][0].mu)
  assert mu.get_value().dtype == jnp.bfloat16
  assert mu.get_value().sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
