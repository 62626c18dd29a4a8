"""Sampler behaviour on tiny random models: log-prob consistency, stops, groups, no retracing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dots_jax.model.qwen2 import Qwen2Config, init_model, positions_from_mask, sequence_logprobs
from dots_jax.rollout.filtering import truncation_mask
from dots_jax.rollout.sampler import FINISH_LENGTH, FINISH_STOP, Sampler
from dots_jax.data.prompts import pad_prompts

PAD = 0
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [1], [20, 21, 22, 23]]


def _cfg(**kw) -> Qwen2Config:
  base = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
  base.update(kw)
  return Qwen2Config(**base)


@pytest.fixture(scope="module")
def tiny():
  cfg = _cfg()
  model = init_model(cfg, 0)
  graphdef, params = nnx.split(model)
  return cfg, model, graphdef, params


@pytest.fixture(scope="module")
def plain(tiny):
  """The shared no-stop sampler: its compiled programs are reused across tests (compiles are slow)."""
  return _sampler(tiny)


def _sampler(tiny, max_new=6, eos=()):
  cfg, _, graphdef, _ = tiny
  return Sampler(graphdef, cfg, max_prompt_len=16, max_new_tokens=max_new, eos_ids=eos, pad_id=PAD)


def _recompute(model, out, temperature, top_p=1.0, top_k=0):
  """Trainer-side log-probs of the completion tokens (sequence_logprobs over prompt + completion);
  with top-p/top-k, those of the truncated distribution the tokens were drawn from (the full
  forward's logits, scaled, cut by `truncation_mask` and renormalised)."""
  tokens = np.concatenate([out.prompt_tokens_NxP, out.tokens_NxR], axis=1)
  mask = np.concatenate([out.prompt_mask_NxP, out.mask_NxR], axis=1)
  p = out.prompt_tokens_NxP.shape[1]
  if top_p >= 1.0 and top_k == 0:
    lp = sequence_logprobs(model, jnp.asarray(tokens), jnp.asarray(mask), temperature)
    return np.asarray(lp)[:, p:]
  logits, _ = model(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))
  n, t, v = logits.shape
  scaled = (logits[:, p - 1:-1] / temperature).reshape(-1, v)
  cut = jnp.where(truncation_mask(scaled, top_k, top_p), scaled, -jnp.inf)
  lp = jax.nn.log_softmax(cut, axis=-1)
  picked = jnp.take_along_axis(lp, jnp.asarray(out.tokens_NxR).reshape(-1, 1), axis=-1)
  return np.where(out.mask_NxR > 0, np.asarray(picked).reshape(n, -1), 0.0)


def test_pad_prompts_left_pads_to_smallest_bucket():
  tokens, mask = pad_prompts([[1, 2], [3, 4, 5]], buckets=(8, 4), pad_id=9)
  np.testing.assert_array_equal(tokens, [[9, 9, 1, 2], [9, 3, 4, 5]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 1, 1, 1]])
  assert tokens.dtype == np.int32 and mask.dtype == np.int32
  with pytest.raises(ValueError, match="row 1 has 5 tokens"):
    pad_prompts([[1], [1, 2, 3, 4, 5]], buckets=(4,), pad_id=0)
  with pytest.raises(ValueError, match="row 0 is empty"):
    pad_prompts([[]], buckets=(4,), pad_id=0)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.8, 20)])
def test_logp_equals_trainer_recomputation_float32(tiny, temperature, top_p, top_k):
  cfg, model, _, params = tiny
  # A frequent token as EOS so that some rows stop early and their tails are padding.
  sampler = _sampler(tiny, max_new=8, eos=(11, 12, 13))
  tokens, mask = pad_prompts(PROMPTS, (8,), PAD)
  out = sampler.generate(params, tokens, mask, jax.random.key(3), num_samples=3,
                         temperature=temperature, top_p=top_p, top_k=top_k)
  lp = _recompute(model, out, temperature, top_p, top_k)
  m = out.mask_NxR.astype(bool)
  assert np.max(np.abs(lp[m] - out.logp_NxR[m])) <= 1e-5
  if top_p < 1.0:  # the truncated distribution's log-probs sit above the full softmax's
    full = _recompute(model, out, temperature)
    assert np.all(out.logp_NxR[m] >= full[m] - 1e-6) and np.any(out.logp_NxR[m] > full[m] + 1e-3)
  assert np.all(out.logp_NxR[~m] == 0.0) and np.all(out.logp_NxR[m] < 0.0)
  assert np.any(out.finish_reason_N == FINISH_STOP) and np.any(out.finish_reason_N == FINISH_LENGTH)


def test_eos_stops_rows_and_sets_finish_reasons(tiny, plain):
  _, _, _, params = tiny
  tokens, mask = pad_prompts(PROMPTS, (8,), PAD)
  free = plain.generate(params, tokens, mask, None, num_samples=1, temperature=1.0,
                                 greedy=True)
  assert np.all(free.finish_reason_N == FINISH_LENGTH) and np.all(free.lengths_N == 6)
  # Make row 0's third greedy token a stop token; rows that never produce it run to the limit.
  stop = int(free.tokens_NxR[0, 2])
  out = _sampler(tiny, eos=(stop,)).generate(params, tokens, mask, None, num_samples=1,
                                             temperature=1.0, greedy=True)
  for row in range(len(PROMPTS)):
    hits = np.flatnonzero(free.tokens_NxR[row] == stop)
    if hits.size:
      n = hits[0] + 1
      assert out.finish_reason_N[row] == FINISH_STOP and out.lengths_N[row] == n
      np.testing.assert_array_equal(out.tokens_NxR[row, :n], free.tokens_NxR[row, :n])
      assert np.all(out.tokens_NxR[row, n:] == PAD) and np.all(out.mask_NxR[row, n:] == 0)
      assert np.all(out.mask_NxR[row, :n] == 1)
    else:
      assert out.finish_reason_N[row] == FINISH_LENGTH and out.lengths_N[row] == 6
      np.testing.assert_array_equal(out.tokens_NxR[row], free.tokens_NxR[row])
  assert out.finish_reason_N[0] == FINISH_STOP and out.lengths_N[0] == 3


def test_loop_exits_early_once_every_row_stopped(tiny, plain):
  _, _, _, params = tiny
  tokens, mask = pad_prompts(PROMPTS, (8,), PAD)
  free = plain.generate(params, tokens, mask, None, num_samples=1, temperature=0.0)
  stops = tuple(int(t) for t in free.tokens_NxR[:, 1])  # every row stops at its 2nd token or earlier
  out = _sampler(tiny, eos=stops).generate(params, tokens, mask, None, num_samples=1,
                                           temperature=0.0)
  assert out.num_decode_steps == 2 and free.num_decode_steps == 6
  assert np.all(out.finish_reason_N == FINISH_STOP) and np.all(out.lengths_N <= 2)


def test_groups_are_question_major_and_share_the_prompt(tiny, plain):
  _, _, _, params = tiny
  tokens, mask = pad_prompts(PROMPTS, (8,), PAD)
  sampler = plain
  single = sampler.generate(params, tokens, mask, None, num_samples=1, temperature=1.0, greedy=True)
  group = sampler.generate(params, tokens, mask, None, num_samples=3, temperature=1.0, greedy=True)
  np.testing.assert_array_equal(group.tokens_NxR, np.repeat(single.tokens_NxR, 3, axis=0))
  np.testing.assert_array_equal(group.prompt_tokens_NxP, np.repeat(tokens, 3, axis=0))
  np.testing.assert_allclose(group.logp_NxR, np.repeat(single.logp_NxR, 3, axis=0), atol=1e-6)
  sampled = sampler.generate(params, tokens, mask, jax.random.key(1), num_samples=3, temperature=1.0)
  assert len({tuple(r) for r in sampled.tokens_NxR[:3]}) > 1  # samples of one prompt differ


def test_max_new_tokens_per_call_and_padding_invariance(tiny, plain):
  _, _, _, params = tiny
  sampler = plain
  tokens, mask = pad_prompts(PROMPTS, (8,), PAD)
  short = sampler.generate(params, tokens, mask, None, num_samples=1, temperature=0.0,
                           max_new_tokens=3)
  full = sampler.generate(params, tokens, mask, None, num_samples=1, temperature=0.0)
  assert np.all(short.lengths_N == 3) and np.all(short.finish_reason_N == FINISH_LENGTH)
  np.testing.assert_array_equal(short.tokens_NxR[:, :3], full.tokens_NxR[:, :3])
  assert np.all(short.tokens_NxR[:, 3:] == PAD)
  # A prompt alone (no padding, other bucket) decodes exactly as inside the padded batch.
  alone_t, alone_m = pad_prompts([PROMPTS[0]], (3,), PAD)
  alone = sampler.generate(params, alone_t, alone_m, None, num_samples=1, temperature=0.0)
  np.testing.assert_array_equal(alone.tokens_NxR[0], full.tokens_NxR[0])


def test_decode_program_is_not_retraced(tiny):
  _, _, _, params = tiny
  sampler = _sampler(tiny, eos=(7,))
  settings = [dict(temperature=1.0, top_p=1.0, top_k=0), dict(temperature=0.6, top_p=0.9, top_k=5),
              dict(temperature=0.0, greedy=True), dict(temperature=1.3, top_p=0.5, max_new_tokens=2)]
  for seed, kw in enumerate(settings):
    other_tokens, other_mask = pad_prompts(PROMPTS[seed:] + PROMPTS[:seed], (8,), PAD)
    sampler.generate(params, other_tokens, other_mask, jax.random.key(seed), num_samples=3, **kw)
  assert sampler.trace_count == 1
  assert sampler._generate_jit._cache_size() == 1
  # A new prompt bucket is a new program (bounded by the number of buckets), and only one.
  t4, m4 = pad_prompts([[1, 2], [3]], (4,), PAD)
  for seed in range(2):
    sampler.generate(params, t4, m4, jax.random.key(seed), num_samples=3, temperature=1.0)
  assert sampler.trace_count == 2


def test_bad_inputs_are_rejected_with_the_row(tiny, plain):
  _, _, _, params = tiny
  sampler = plain
  tokens, mask = pad_prompts(PROMPTS, (8,), PAD)
  right = mask[:, ::-1].copy()
  with pytest.raises(ValueError, match="row 0 is empty or not left-padded"):
    sampler.generate(params, tokens, right, None, num_samples=1, temperature=0.0)
  holes = mask.copy()
  holes[1, 4] = 0
  with pytest.raises(ValueError, match="row 1 is not left-padded"):
    sampler.generate(params, tokens, holes, None, num_samples=1, temperature=0.0)
  big = tokens.copy()
  big[2, -1] = 96
  with pytest.raises(ValueError, match="row 2 has token ids outside"):
    sampler.generate(params, big, mask, None, num_samples=1, temperature=0.0)
  with pytest.raises(ValueError, match="max_prompt_len"):
    sampler.generate(params, *pad_prompts(PROMPTS, (32,), PAD), None, num_samples=1, temperature=0)
  with pytest.raises(ValueError, match="top_p"):
    sampler.generate(params, tokens, mask, jax.random.key(0), num_samples=1, temperature=1.0,
                     top_p=0.0)
  with pytest.raises(ValueError, match="max_new_tokens=7"):
    sampler.generate(params, tokens, mask, None, num_samples=1, temperature=0, max_new_tokens=7)


def test_sharded_mesh_matches_single_device(tiny, plain):
  from dots_jax.model.sharding import make_mesh, shard_model
  cfg, model, graphdef, params = tiny
  if len(jax.devices()) < 4:
    pytest.skip("needs the 8 simulated CPU devices from tests/conftest.py")
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 1}, devices=jax.devices()[:4])
  _, sharded_params = nnx.split(shard_model(model, mesh))
  sharded = Sampler(graphdef, cfg, max_prompt_len=16, max_new_tokens=6, eos_ids=(), pad_id=PAD,
                    mesh=mesh)
  tokens, mask = pad_prompts(PROMPTS, (8,), PAD)
  kw = dict(num_samples=3, temperature=0.9, top_p=0.95)
  out = sharded.generate(sharded_params, tokens, mask, jax.random.key(5), **kw)
  ref = plain.generate(params, tokens, mask, jax.random.key(5), **kw)
  np.testing.assert_array_equal(out.tokens_NxR, ref.tokens_NxR)
  np.testing.assert_allclose(out.logp_NxR, ref.logp_NxR, atol=1e-5)
  with pytest.raises(ValueError, match="not divisible by the 4 data-parallel shards"):
    sharded.generate(sharded_params, tokens[:2], mask[:2], jax.random.key(5), **kw)
