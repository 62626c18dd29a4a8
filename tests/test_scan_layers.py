"""Scanned decoder blocks (model.scan_layers): the same values and gradients as the unrolled blocks,
one block's program whatever the depth, and on an fsdp mesh under remat a compiled footprint the
planner predicts."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dots_jax.model import qwen2
from dots_jax.rl.logprobs import logprobs_and_entropy
from config_files import load_config
from test_attention import CFG as ATTENTION_CFG, _batch

CFG = dataclasses.replace(ATTENTION_CFG, num_hidden_layers=3)


def _outputs(cfg, params):
  graphdef, _ = nnx.split(qwen2.init_model(cfg, seed=3))
  tokens, mask = _batch()

  def loss(p):
    logp, ent = logprobs_and_entropy(nnx.merge(graphdef, p), tokens, mask)
    return jnp.sum(logp * jnp.arange(11.0)) + 0.1 * jnp.sum(ent), (logp, ent)

  (_, (logp, ent)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return logp, ent, grads


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_blocks_equal_the_unrolled_ones_values_and_gradients(remat):
  cfg = dataclasses.replace(CFG, remat=remat)
  _, params = nnx.split(qwen2.init_model(cfg, seed=3))
  want = _outputs(cfg, params)
  got = _outputs(dataclasses.replace(cfg, scan_layers=True), params)
  np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)  # log-probs
  np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-6)  # entropies
  flat_want = dict(nnx.to_flat_state(want[2]))
  for path, g in nnx.to_flat_state(got[2]):
    w = np.asarray(flat_want[path].get_value())
    # Float32 sums in another order: bounded relative to the gradient's own scale.
    assert np.abs(np.asarray(g.get_value()) - w).max() <= 2e-6 * max(1.0, np.abs(w).max()), path
  assert any(np.abs(v.get_value()).max() > 1e-3 for _, v in nnx.to_flat_state(got[2]))


def _program_chars(layers: int, scan: bool) -> int:
  cfg = dataclasses.replace(CFG, num_hidden_layers=layers, scan_layers=scan, remat=True)
  graphdef, params = qwen2.abstract_model(cfg)
  tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32)
  loss = lambda p, t: qwen2.sequence_logprobs(nnx.merge(graphdef, p), t, jnp.ones_like(t)).sum()
  return len(jax.jit(jax.grad(loss)).lower(params, tokens).as_text())


def test_the_scanned_program_does_not_grow_with_depth():
  """Unrolled, the gradient program holds every block (it grows ~linearly with depth); scanned it
  holds one, so only the per-layer stacking and unstacking grow."""
  unrolled = _program_chars(8, False) / _program_chars(2, False)
  scanned = _program_chars(8, True) / _program_chars(2, True)
  assert unrolled > 2.5, unrolled
  assert scanned < 1.6, scanned


def test_fsdp_programs_gather_one_layer_of_weights_at_a_time():
  """On an fsdp mesh the residual stream is pinned to the batch layout and the stack keeps each
  layer's sharding, so the programs all-gather one layer's weights per iteration (not the whole
  model, nor the micro-batch's activations): pi_old's temporaries stay below the model's layer
  weights. And under remat the CPU compiler, which keeps every unrolled block's intermediates
  (docs/MEMORY.md), sees a scanned block's recomputation: the update's compiled bytes agree with
  the planner's remat estimate (each layer's input kept, one layer recomputed at a time)."""
  from dots_jax.tools import plan
  c = load_config("tiny", "micro")
  c.rl.batch_questions, c.sampling.group_size, c.rl.mini_batches = 8, 4, 1
  c.model.remat, c.model.scan_layers = True, True
  cfg = qwen2.Qwen2Config(vocab_size=4096, hidden_size=512, intermediate_size=1024,
                          num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                          remat=True, scan_layers=True)
  out = plan.compiled_programs(c, cfg, {"data": 1, "fsdp": 8, "tensor": 1}, seq=128)
  layer_weights = cfg.num_hidden_layers * cfg.params_per_layer * 4
  assert out["pi_old"]["temp"] < 0.6 * layer_weights, out["pi_old"]
  ratio = out["update"]["estimated"] / out["update"]["compiled"]
  assert 0.75 <= ratio <= 1.25, out["update"]
