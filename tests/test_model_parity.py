"""Logit parity of load_policy + our model with transformers' Qwen2ForCausalLM (float32)."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from dots_jax.model import hf_io, qwen2
from dots_jax.tools import parity
from hf_fixtures import make_tiny_hf_checkpoint

TOL = 1e-4

CASES = {
    "untied_kv_ratio2": dict(tie=False, num_attention_heads=4, num_key_value_heads=2),
    "tied_kv_ratio1": dict(tie=True, num_attention_heads=4, num_key_value_heads=4),
    "untied_kv_ratio7": dict(tie=False, num_attention_heads=7, num_key_value_heads=1,
                             hidden_size=56),
    "tied_sharded_files": dict(tie=True, max_shard_size="20KB"),
}


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
  return make_tiny_hf_checkpoint(tmp_path_factory.mktemp("base"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(name, tmp_path):
  path = make_tiny_hf_checkpoint(tmp_path, **CASES[name])
  if "max_shard_size" in CASES[name]:
    assert os.path.isfile(os.path.join(path, hf_io.INDEX_FILE))
  # Covers each prompt alone and all of them as one left-padded batch vs unpadded references.
  result = parity.run_parity(path, verbose=False)
  assert result["logit_scale"] > 1.0  # random weights with std 0.2 give meaningful logits
  assert result["single"] <= TOL, result
  assert result["batch"] <= TOL, result


def _logits(model, tokens, mask):
  return np.asarray(parity._forward(model, tokens, mask))


def test_bfloat16_compute_is_close(ckpt_dir):
  """bf16 activations (params f32 or bf16) stay near the f32 logits; the gap is printed."""
  tokens, mask = parity.left_pad(parity.fixed_prompts(100))
  _, ref_model = hf_io.load_policy(ckpt_dir)
  ref = _logits(ref_model, tokens, mask)
  valid = mask.astype(bool)
  for param_dtype in ("float32", "bfloat16"):
    _, model = hf_io.load_policy(ckpt_dir, dtype="bfloat16", param_dtype=param_dtype)
    got = _logits(model, tokens, mask)
    assert got.dtype == np.float32
    gap = float(np.abs(got - ref)[valid].max())
    print(f"bfloat16 compute, {param_dtype} params: max abs logit gap {gap:.4f} "
          f"(max |logit| {np.abs(ref[valid]).max():.2f})")
    assert 0 < gap < 0.3
    # The greedy token is almost always unchanged.
    agree = (got.argmax(-1) == ref.argmax(-1))[valid].mean()
    assert agree >= 0.9, agree


def test_remat_gives_identical_logits_and_grads(ckpt_dir):
  tokens, mask = parity.left_pad(parity.fixed_prompts(100))
  outs = []
  for remat in (False, True):
    _, model = hf_io.load_policy(ckpt_dir, remat=remat)
    graphdef, params = nnx.split(model)

    def loss(p, graphdef=graphdef):
      m = nnx.merge(graphdef, p)
      return -qwen2.sequence_logprobs(m, tokens, mask).sum()

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    outs.append((_logits(model, tokens, mask), float(value), jax.tree.leaves(grads)))
  (l0, v0, g0), (l1, v1, g1) = outs
  np.testing.assert_allclose(l1, l0, rtol=0, atol=1e-6)
  assert abs(v1 - v0) <= 1e-4 * abs(v0)
  # Recomputation changes XLA's fusion order, so grads agree to float32 rounding, not bitwise.
  worst = max(float(np.abs(np.asarray(b) - np.asarray(a)).max() / np.abs(np.asarray(a)).max())
              for a, b in zip(g0, g1))
  print(f"remat: max grad diff relative to the leaf's max |grad|: {worst:.2e}")
  assert worst <= 1e-4
