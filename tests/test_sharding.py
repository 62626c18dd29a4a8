"""Mesh construction, sharding rules, and that sharding changes placement but not logits."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from dots_jax.model import hf_io, qwen2, sharding
from dots_jax.tools import parity
from hf_fixtures import make_tiny_hf_checkpoint

MESHES = ("fsdp:2,tensor:4", "data:2,fsdp:4")


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
  # vocab 102 is not divisible by a 4-way tensor axis: exercises the replication fallback.
  return make_tiny_hf_checkpoint(tmp_path_factory.mktemp("shard"), vocab_size=102)


def _batch():
  prompts = parity.fixed_prompts(102, lengths=(3, 9, 1, 14, 6, 11, 2, 8))
  return parity.left_pad(prompts)


def test_make_mesh():
  assert jax.device_count() == 8
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(sharding.make_mesh("tensor:8").shape) == {"data": 1, "fsdp": 1, "tensor": 8}
  with pytest.raises(ValueError, match="needs 6 devices but 8"):
    sharding.make_mesh({"data": 3, "fsdp": 2, "tensor": 1})
  with pytest.raises(ValueError, match="not divisible by 3"):
    sharding.make_mesh({"data": -1, "fsdp": 3, "tensor": 1})
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1, "tensor": 1})
  with pytest.raises(ValueError, match="bad mesh spec item 'model:2'"):
    sharding.parse_mesh_spec("data:4,model:2")


def test_rules_and_fallback():
  sizes = {"data": 1, "fsdp": 2, "tensor": 4}
  spec = sharding.param_spec
  assert spec("embed_tokens/embedding", (100, 32), sizes) == P("tensor", "fsdp")
  assert spec("embed_tokens/embedding", (102, 32), sizes) == P(None, "fsdp")  # 4 does not divide 102
  assert spec("lm_head/kernel", (32, 100), sizes) == P("fsdp", "tensor")
  assert spec("layers/3/self_attn/q_proj/kernel", (32, 32), sizes) == P("fsdp", "tensor")
  assert spec("layers/3/mlp/down_proj/kernel", (64, 32), sizes) == P("tensor", "fsdp")
  assert spec("layers/0/self_attn/k_proj/bias", (16,), sizes) == P("tensor")
  assert spec("layers/0/self_attn/k_proj/bias", (6,), sizes) == P(None)
  assert spec("layers/0/input_layernorm/weight", (32,), sizes) == P(None)
  assert spec("norm/weight", (32,), sizes) == P(None)
  # Optimizer-state paths end with the parameter path and get the same layout.
  assert spec("0/mu/layers/0/mlp/up_proj/kernel", (32, 64), sizes) == P("fsdp", "tensor")
  assert spec("0/count", (), sizes) == P()
  with pytest.raises(ValueError, match="no sharding rule matches parameter 'layers/0/foo/w'"):
    spec("layers/0/foo/w", (3,), sizes)
  assert sharding.shard_shape((102, 32), P(None, "fsdp"), sizes) == (102, 16)
  cache = (2, 8, 16, 2, 8)
  assert sharding.cache_spec(cache, {"data": 2, "fsdp": 4, "tensor": 1}) == P(
      None, ("data", "fsdp"), None, None, None)


@pytest.mark.parametrize("mesh_spec", MESHES)
def test_sharded_logits_equal_single_device(ckpt_dir, mesh_spec):
  tokens, mask = _batch()
  _, ref_model = hf_io.load_policy(ckpt_dir)
  ref = np.asarray(parity._forward(ref_model, tokens, mask))

  mesh = sharding.make_mesh(mesh_spec)
  _, model = hf_io.load_policy(ckpt_dir, mesh=mesh)
  # Parameters really are distributed as the rules say.
  q = model.layers[0].self_attn.q_proj.kernel.get_value()
  want = sharding.param_spec("layers/0/self_attn/q_proj/kernel", q.shape,
                             sharding.mesh_axis_sizes(mesh))
  assert q.sharding.spec == want and want != P(None, None)
  assert q.addressable_shards[0].data.shape == sharding.shard_shape(
      q.shape, want, sharding.mesh_axis_sizes(mesh))
  bs = sharding.batch_sharding(mesh)
  got = parity._forward(model, jax.device_put(tokens, bs), jax.device_put(mask, bs))
  diff = float(np.abs(np.asarray(got) - ref).max())
  print(f"{mesh_spec}: max abs logit diff vs 1 device {diff:.2e}")
  assert diff <= 1e-5

  # shard_model of the single-device model gives the same placement and logits.
  moved = sharding.shard_model(ref_model, mesh)
  assert moved.layers[0].self_attn.q_proj.kernel.get_value().sharding.spec == want
  np.testing.assert_allclose(np.asarray(parity._forward(moved, tokens, mask)), ref, atol=1e-5)


def test_init_sharded_model_matches_plain_init():
  cfg = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
  mesh = sharding.make_mesh("fsdp:2,tensor:4")
  model = sharding.init_sharded_model(cfg, mesh, seed=1)
  plain = qwen2.init_model(cfg, seed=1)
  sharded_state = nnx.to_flat_state(nnx.state(model))
  plain_state = dict(nnx.to_flat_state(nnx.state(plain)))
  for path, var in sharded_state:
    arr = var.get_value()
    assert arr.sharding.spec == sharding.param_spec(
        sharding.path_str(path), arr.shape, sharding.mesh_axis_sizes(mesh))
    np.testing.assert_allclose(np.asarray(arr), np.asarray(plain_state[path].get_value()),
                               atol=1e-6)
  tokens = np.arange(16, dtype=np.int32).reshape(2, 8)
  mask = np.ones_like(tokens)
  np.testing.assert_allclose(np.asarray(parity._forward(model, tokens, mask)),
                             np.asarray(parity._forward(plain, tokens, mask)), atol=1e-5)


def test_loader_reads_only_each_devices_block(ckpt_dir, monkeypatch):
  """Placement reads per-device slices from the files, never a sharded tensor whole."""
  reads = []
  original = hf_io._Reader.block

  def spy(self, name, index, transpose, dtype):
    out = original(self, name, index, transpose, dtype)
    reads.append((name, out.shape))
    return out

  monkeypatch.setattr(hf_io._Reader, "block", spy)
  hf_io.load_policy(ckpt_dir, mesh=sharding.make_mesh("fsdp:2,tensor:4"))
  q_reads = {shape for name, shape in reads if name == "model.layers.0.self_attn.q_proj.weight"}
  assert q_reads == {(16, 8)}  # [32, 32] kernel split 2 x 4
  up_reads = {shape for name, shape in reads if name == "model.layers.1.mlp.up_proj.weight"}
  assert up_reads == {(16, 16)}  # [32, 64] kernel split 2 x 4
