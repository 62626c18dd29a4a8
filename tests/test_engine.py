"""The slot engine: same completions as the static batch, independent of scheduling, bounded."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dots_jax.model import qwen2
from dots_jax.rollout.engine import Engine, slot_cache_bytes, slots_for_budget
from dots_jax.rollout.sampler import FINISH_LENGTH, FINISH_STOP, Sampler

CFG = qwen2.Qwen2Config(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4,
                        initializer_range=0.3)
EOS, R, G = 7, 12, 3


@pytest.fixture(scope="module")
def setup():
  graphdef, params = nnx.split(qwen2.init_model(CFG, 0))
  rng = np.random.default_rng(0)
  mask = np.ones((5, 6), np.int32)
  mask[0, :3] = 0
  mask[2, :1] = 0
  tokens = (rng.integers(1, CFG.vocab_size, (5, 6)) * mask).astype(np.int32)
  return graphdef, params, tokens, mask


_ENGINES: dict = {}


def _engine(graphdef, slots, **kw):
  """One engine per layout for the module: tests on the same layout share its compiled programs (and
  so also check that an engine serves calls with other sampling settings without recompiling)."""
  key = (id(graphdef), slots, tuple(sorted((k, id(v) if k == "mesh" else v) for k, v in kw.items())))
  if key not in _ENGINES:
    _ENGINES[key] = Engine(graphdef, CFG, slots=slots, max_prompt_len=8, max_new_tokens=R,
                           eos_ids=[EOS], pad_id=0, steps_per_call=4, **kw)
  return _ENGINES[key]


def test_greedy_matches_the_static_batch(setup):
  graphdef, params, tokens, mask = setup
  ref = Sampler(graphdef, CFG, max_prompt_len=6, max_new_tokens=R, eos_ids=[EOS], pad_id=0
                ).generate(params, tokens, mask, None, num_samples=G, temperature=0.0, greedy=True)
  out = _engine(graphdef, 4).generate(params, tokens, mask, None, num_samples=G, temperature=0.0,
                                      greedy=True)
  np.testing.assert_array_equal(out.tokens_NxR, ref.tokens_NxR)
  np.testing.assert_array_equal(out.lengths_N, ref.lengths_N)
  np.testing.assert_array_equal(out.finish_reason_N, ref.finish_reason_N)
  np.testing.assert_allclose(out.logp_NxR, ref.logp_NxR, atol=1e-5)
  assert {FINISH_STOP, FINISH_LENGTH} <= set(out.finish_reason_N.tolist())  # both reasons occur


@pytest.mark.parametrize("top_p,top_k", [(1.0, 0), (0.8, 5)])
def test_outputs_do_not_depend_on_slots_or_windows(setup, top_p, top_k):
  graphdef, params, tokens, mask = setup
  key = jax.random.key(3)
  # Slots and windows each differ between any two layouts; the truncated draws need only two.
  # The last layout bounds each prefill call to one prompt (several calls fill the slots).
  layouts = (((1, 1, 0), (3, 4, 0), (8, 2, 0), (8, 2, 1)) if top_k == 0
             else ((1, 1, 0), (3, 4, 0)))
  runs = [_engine(graphdef, slots, windows=w, prefill_prompts=pp).generate(
      params, tokens, mask, key, num_samples=G, temperature=1.0, top_p=top_p, top_k=top_k)
      for slots, w, pp in layouts]
  for other in runs[1:]:
    np.testing.assert_array_equal(other.tokens_NxR, runs[0].tokens_NxR)
    np.testing.assert_array_equal(other.lengths_N, runs[0].lengths_N)
    np.testing.assert_allclose(other.logp_NxR, runs[0].logp_NxR, atol=1e-5)


def test_logprobs_equal_the_trainers(setup):
  graphdef, params, tokens, mask = setup
  out = _engine(graphdef, 5).generate(params, tokens, mask, jax.random.key(1), num_samples=G,
                                      temperature=1.0)
  full = np.concatenate([out.prompt_tokens_NxP, out.tokens_NxR], 1)
  full_mask = np.concatenate([out.prompt_mask_NxP, out.mask_NxR], 1)
  logp = qwen2.sequence_logprobs(nnx.merge(graphdef, params), jnp.asarray(full),
                                 jnp.asarray(full_mask))[:, tokens.shape[1]:]
  np.testing.assert_allclose(np.asarray(logp) * out.mask_NxR, out.logp_NxR, atol=1e-5)


def test_limits_finish_reasons_and_bounded_programs(setup):
  graphdef, params, tokens, mask = setup
  engine = _engine(graphdef, 4)
  limits = np.array([1, 2, 3, 12, 5] * G, np.int32)
  for seed in range(3):  # more calls compile nothing new
    out = engine.generate(params, tokens, mask, jax.random.key(seed), num_samples=G,
                          temperature=1.0, limits_N=limits)
    assert np.all(out.lengths_N <= limits)
    stop = out.finish_reason_N == FINISH_STOP
    last = out.tokens_NxR[np.arange(len(limits)), out.lengths_N - 1]
    assert np.all(last[stop] == EOS) and np.all(out.lengths_N[~stop] == limits[~stop])
    assert np.all(out.tokens_NxR[out.mask_NxR == 0] == 0)
  # Per prompt bucket one insert program per prefill block size (a few powers of two), and at
  # most one decode program per window size.
  assert engine.trace_count <= len(engine.prefill_sizes(G)) + len(engine.windows)
  assert engine.prefill_sizes(G) == (1, 2, 3)  # 4 slots, G = 3: at most 3 prompts per block
  assert engine.last_stats.insert_calls > 1  # slots were refilled as completions finished


def test_slots_from_a_kv_budget():
  per_slot = slot_cache_bytes(CFG, 1, 8, R)
  assert per_slot == 2 * 2 * (8 + R) * 2 * 8 * 4
  assert slots_for_budget(CFG, 10 * per_slot / 2**30, 8, R) == 10
  assert slots_for_budget(CFG, 10 * per_slot / 2**30, 8, R, multiple=4) == 8
  with pytest.raises(ValueError, match="kv_budget_gib"):
    slots_for_budget(CFG, 0.5 * per_slot / 2**30, 8, R)


def test_slots_split_over_the_data_axes(setup):
  """On a mesh (8 simulated devices) the slot axis is sharded and the completions are the same."""
  from dots_jax.model import sharding
  graphdef, params, tokens, mask = setup
  key = jax.random.key(5)
  ref = _engine(graphdef, 4).generate(params, tokens, mask, key, num_samples=G, temperature=1.0)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = jax.device_put(params, sharding.param_shardings(params, mesh))
  engine = _engine(graphdef, 4, mesh=mesh)
  out = engine.generate(sharded, tokens, mask, key, num_samples=G, temperature=1.0)
  np.testing.assert_array_equal(out.tokens_NxR, ref.tokens_NxR)
  np.testing.assert_allclose(out.logp_NxR, ref.logp_NxR, atol=1e-5)
  with pytest.raises(ValueError, match="multiple of the 4"):
    _engine(graphdef, 6, mesh=mesh)


BF16 = dataclasses.replace(CFG, num_hidden_layers=12, dtype="bfloat16")


def test_bfloat16_cache_holds_the_keys_bits():
  """A bfloat16 cache is stored as uint16 bits: a prefill through a cache of exactly the prompt's
  length gives the cacheless pass's hidden states bit for bit, and decoding reads them back."""
  cfg = dataclasses.replace(BF16, num_hidden_layers=2)
  graphdef, params = nnx.split(qwen2.init_model(cfg, 0))
  hidden = jax.jit(lambda p, *args: nnx.merge(graphdef, p).hidden(*args))
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, 61, (2, 9)), jnp.int32)
  mask = jnp.ones_like(tokens)
  pos = qwen2.positions_from_mask(mask)
  cache = qwen2.init_cache(cfg, 2, 9)
  assert cache.ks[0].dtype == jnp.uint16
  h_cached, _ = hidden(params, tokens, pos, mask, cache, 0)
  h_full, _ = hidden(params, tokens, pos, mask)
  np.testing.assert_array_equal(np.asarray(h_cached, np.float32), np.asarray(h_full, np.float32))
  # One decode step over the cache (rows at their own write positions) vs the full pass.
  _, longer = hidden(params, tokens[:, :8], pos[:, :8], mask[:, :8], qwen2.init_cache(cfg, 2, 10), 0)
  h_step, _ = hidden(params, tokens[:, 8:], pos[:, 8:], jnp.ones((2, 9), jnp.int32), longer,
                     jnp.array([8, 8]))
  np.testing.assert_allclose(np.asarray(h_step[:, 0], np.float32),
                             np.asarray(h_full[:, 8], np.float32), rtol=0.05, atol=0.05)


def test_bfloat16_decode_program_keeps_no_copy_of_the_cache():
  """The decode program's temporaries stay well below its bfloat16 KV cache (XLA's CPU backend
  would otherwise scatter through float32 copies of every layer's cache)."""
  graphdef, params = nnx.split(qwen2.init_model(BF16, 0))
  engine = Engine(graphdef, BF16, slots=64, max_prompt_len=8, max_new_tokens=504, eos_ids=[EOS],
                  pad_id=0, steps_per_call=2, windows=1)
  state = jax.eval_shape(engine._empty_arrays)
  kv = sum(a.size * a.dtype.itemsize for a in state["k"] + state["v"])
  ma = engine._decode.lower(params, state, jax.random.key(0), np.float32(1.0), np.float32(1.0),
                            np.int32(0), np.bool_(False), window=engine.windows[-1]
                            ).compile().memory_analysis()
  assert ma.temp_size_in_bytes < 0.5 * kv, (ma.temp_size_in_bytes, kv)


def test_the_prefill_block_is_split_over_the_data_axes():
  """Each device prefills its share of the block's prompts: on 8 data shards the insert program's
  temporaries are a fraction of one device's, and the block sizes are multiples of the shards."""
  from dots_jax.model import sharding
  cfg = dataclasses.replace(CFG, hidden_size=64, intermediate_size=256, num_attention_heads=4)
  graphdef, abstract = qwen2.abstract_model(cfg)

  def temporaries(sizes):
    mesh = sharding.make_mesh(sizes, jax.devices()[:8] if sizes["data"] > 1 else jax.devices()[:1])
    on = lambda tree, sh: jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sh)
    params = on(abstract, sharding.param_shardings(abstract, mesh))
    engine = Engine(graphdef, cfg, slots=64, max_prompt_len=256, max_new_tokens=16, eos_ids=[EOS],
                    pad_id=0, mesh=mesh, prefill_prompts=16)
    state = on(jax.eval_shape(engine._empty_arrays), engine._state_sh)
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    ints = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32, sharding=whole)
    u = max(engine.prefill_sizes(4))
    assert all(s % sharding.data_parallel_size(mesh) == 0 for s in engine.prefill_sizes(4))
    lowered = engine._insert.lower(params, state, ints(u, 256), ints(u, 256), *[ints(64)] * 4)
    return lowered.compile().memory_analysis().temp_size_in_bytes

  one, split = temporaries({"data": 1, "fsdp": 1, "tensor": 1}), temporaries(
      {"data": 8, "fsdp": 1, "tensor": 1})
  assert split < one / 3, (split, one)


def test_a_tensor_axis_splits_the_cache_heads_and_the_budget_holds_more_slots():
  """KV heads over the tensor axis (`CACHE_AXES`): a device holds 1 / tensor of each slot's cache,
  so the same per-device budget holds tensor x the slots; the engine's cache arrays say the same."""
  from dots_jax.model import sharding
  from dots_jax.rollout.generator import EngineSettings
  per_slot = slot_cache_bytes(CFG, 1, 8, R)
  assert slot_cache_bytes(CFG, 1, 8, R, kv_shards=2) * 2 == per_slot
  settings = EngineSettings(slots=0, kv_budget_gib=8 * per_slot / 2**30, steps_per_call=2,
                            windows=1, prefill_prompts=0)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shards = sharding.kv_head_shards(mesh, CFG.num_key_value_heads)
  assert shards == 2 and sharding.kv_head_shards({"data": 1, "fsdp": 1, "tensor": 3}, 2) == 1
  slots = settings.slots_for(CFG, 8, R, 4, shards)
  assert slots == 4 * 16 and settings.slots_for(CFG, 8, R, 4) == 4 * 8
  graphdef, _ = nnx.split(qwen2.init_model(CFG, 0))
  engine = Engine(graphdef, CFG, slots=slots, max_prompt_len=8, max_new_tokens=R, eos_ids=[EOS],
                  pad_id=0, mesh=mesh)
  k0 = engine._empty_state()["k"][0]
  block = k0.sharding.shard_shape(k0.shape)
  k_and_v = 2 * CFG.num_hidden_layers * np.prod(block) * k0.dtype.itemsize
  assert k_and_v == slot_cache_bytes(CFG, slots // 4, 8, R, kv_shards=2)
