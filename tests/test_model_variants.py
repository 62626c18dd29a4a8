"""The released-shape table: sizes match the published parameter counts, abstract models build."""

import math

import pytest
from flax import nnx

from dots_jax.model import qwen2, variants

# Parameter counts (billions) published on the Qwen2.5 model cards, to 3 significant digits (some
# truncated rather than rounded, so the tolerance is one unit of the last digit). 32B is left out:
# its card says 32.5B while its config.json shapes count 32.76B.
PUBLISHED_B = {"0.5B": 0.49, "1.5B": 1.54, "3B": 3.09, "7B": 7.61, "14B": 14.7, "72B": 72.7,
               "Math-1.5B": 1.54, "Math-7B": 7.61}


@pytest.mark.parametrize("name", sorted(PUBLISHED_B))
def test_param_count(name):
  cfg = variants.get_variant(name)
  published = PUBLISHED_B[name]
  unit = 0.01 if published < 10 else 0.1
  assert abs(cfg.num_params() / 1e9 - published) < unit


def test_table_and_abstract_model():
  assert set(variants.VARIANTS) == set(PUBLISHED_B) | {"32B"}
  for name, (cfg, source) in variants.VARIANTS.items():
    assert source == f"Qwen/Qwen2.5-{name} config.json"
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    assert cfg.head_dim == 128 or name in ("0.5B", "1.5B", "Math-1.5B", "3B")
    assert cfg.rope_theta == (10000.0 if name.startswith("Math") else 1e6)
  cfg = variants.get_variant("Qwen2.5-Math-7B", param_dtype="bfloat16")
  assert (cfg.max_position_embeddings, cfg.param_dtype) == (4096, "bfloat16")
  _, state = qwen2.abstract_model(cfg)  # shapes only: no 30 GB allocation
  count = sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(state))
  assert count == cfg.num_params()
  with pytest.raises(ValueError, match="unknown variant '9B'"):
    variants.get_variant("9B")
