"""Per-device memory of training on a mesh: the state a device holds (`plan`: params, AdamW moments,
gradients, a KV cache), one update's or pi_old's peak (`update_estimate`), and the update's static
settings with the micro-batch chosen to fit `config.rl.memory_budget_gib` (`fit_micro_batch`, which
the training loop calls).

Numbers come from the real sharding rules applied to the abstract (shape-only) model, so they are
the bytes each device holds, not an estimate divided by the device count. `dots_jax.tools.plan`
prints them for a config and sets XLA's compiled figures beside them (docs/MEMORY.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
from flax import nnx

from dots_jax.config_common import ConfigError
from dots_jax.model import qwen2, sharding
from dots_jax.rl import update

def plan(cfg: qwen2.Qwen2Config, mesh: Mapping[str, int] | str, *, batch: int, seq: int,
         kv_dtype: str | None = None, mu_dtype: str = "float32") -> dict[str, int]:
  """Bytes per device; `mesh` is axis sizes (no -1) or a spec like 'data:1,fsdp:8,tensor:1'.

  Keys: params, adam, grads, kv_cache, total, devices, param_count. AdamW keeps mu in `mu_dtype`
  (config.rl.mu_dtype) and nu in float32 for every parameter element; grads are in the param
  dtype; the KV cache (k and v, `batch` sequences of `seq` slots) is in `kv_dtype` (default:
  compute).
  """
  sizes = sharding.parse_mesh_spec(mesh) if isinstance(mesh, str) else dict(mesh)
  if any(sizes[a] < 1 for a in sharding.AXES):
    raise ValueError(f"plan needs explicit mesh sizes (no -1), got {sizes}")
  _, abstract_state = qwen2.abstract_model(cfg)
  param_elems = 0
  param_bytes = 0
  for path, var in nnx.to_flat_state(abstract_state):
    leaf = var.get_value()
    spec = sharding.param_spec(sharding.path_str(path), leaf.shape, sizes)
    elems = math.prod(sharding.shard_shape(leaf.shape, spec, sizes))
    param_elems += elems
    param_bytes += elems * np.dtype(leaf.dtype).itemsize
  cache_shape = (cfg.num_hidden_layers, batch, seq, cfg.num_key_value_heads, cfg.head_dim)
  cache_block = sharding.shard_shape(cache_shape, sharding.cache_spec(cache_shape, sizes), sizes)
  kv_bytes = 2 * math.prod(cache_block) * np.dtype(kv_dtype or cfg.dtype).itemsize
  adam_bytes = np.dtype(mu_dtype).itemsize + 4
  out = {"params": param_bytes, "adam": param_elems * adam_bytes, "grads": param_bytes,
         "kv_cache": kv_bytes}
  out["total"] = sum(out.values())
  out["devices"] = math.prod(sizes.values())
  out["param_count"] = cfg.num_params()
  return out


def update_estimate(ucfg: update.UpdateConfig, cfg: qwen2.Qwen2Config, sizes: Mapping[str, int],
                    seq: int, rows: int, *, grad: bool, micro_batch: int | None = None,
                    mu_dtype: str = "float32") -> int:
  """Per-device bytes of one update (grad=True) or pi_old (grad=False) program over a step of
  `rows` sequences (`update_rows`).

  Weights (+ AdamW moments and gradients), the micro-batch's batch arrays, the activations (in
  `activation_dtype`) the backward pass keeps (every layer's input under remat; every layer's
  intermediates without it:
  q/k/v and attention output, MLP gate/up/activation/product, and the float32 attention scores,
  probabilities and their masked copy unless queries are blocked), and at the peak the larger of
  two transients that do not live together: one layer's recomputation/gradient (with its attention
  block's scores and, under fsdp, its all-gathered weights and full gradient) and the vocabulary
  projection of one logits chunk (float32 logits, their log-softmax and its gradient; one copy
  without a backward pass); with scanned layers, their weights stacked in the compute dtype (and
  the stacked gradient). `micro_batch` overrides `ucfg`'s (the budget search below tries
  candidates); `mu_dtype`: AdamW's first moment (`plan`)."""
  mem = plan(cfg, sizes, batch=1, seq=1, mu_dtype=mu_dtype)
  weights = mem["params"] + (mem["adam"] + mem["grads"] if grad else 0)
  dp = sharding.data_parallel_size(sizes)
  micro = micro_batch or ucfg.split(rows)[1]
  r = -(-micro // dp)
  act = np.dtype(cfg.activation_dtype).itemsize  # residual stream, norms, matmul outputs
  compute = np.dtype(cfg.dtype).itemsize  # weights' working copies
  tp = sizes["tensor"]
  heads, kv_heads = cfg.num_attention_heads // tp, max(cfg.num_key_value_heads // tp, 1)
  d, f, h = cfg.hidden_size, cfg.intermediate_size // tp, cfg.head_dim
  tokens = r * seq
  q_block = min(cfg.attn_chunk or seq, seq)
  scores = 3 * r * heads * q_block * seq * 4  # scores, probabilities, masked scores
  # Blocked attention rematerialises each block: only the full-size scores of unblocked attention
  # are kept per layer.
  kept_scores = 0 if q_block < seq else scores
  projections = tokens * ((2 * heads + 2 * kv_heads) * h + 3 * d) * act
  mlp = 4 * tokens * f * act
  layer_kept = projections + mlp + kept_scores
  layer_transient = projections + mlp + scores
  chunk = min(ucfg.logits_chunk or seq, seq)
  logits = r * chunk * (cfg.vocab_size // tp) * 4
  batch = r * seq * (4 * 4)  # tokens, masks, behaviour / old log-probs of the micro-batch
  # Sharded over fsdp, a layer's weights are all-gathered before use (in the param dtype, then
  # cast to compute) and, with a backward, its full gradient exists before the reduce-scatter.
  gathered = 0
  if sizes["fsdp"] > 1:
    gathered = cfg.params_per_layer // tp * (np.dtype(cfg.param_dtype).itemsize + compute
                                    + (np.dtype(cfg.param_dtype).itemsize if grad else 0))
  # Scanned layers stack their weights in the compute dtype (and, with a backward, their gradient).
  stacked = 0
  if cfg.scan_layers:
    layer_share = cfg.num_hidden_layers * cfg.params_per_layer / cfg.num_params()
    stacked = int(mem["params"] * layer_share * compute / np.dtype(cfg.param_dtype).itemsize)
    stacked *= 2 if grad else 1
  if not grad:  # no backward: one layer or one logits chunk at a time
    return weights + stacked + batch + tokens * d * act + max(layer_transient + gathered, logits)
  kept = (cfg.num_hidden_layers * tokens * d * act if cfg.remat
          else cfg.num_hidden_layers * layer_kept)
  return weights + stacked + batch + kept + max(layer_transient + gathered, 3 * logits)


def update_rows(batch_questions: int, group_size: int, dp: int) -> int:
  """Rows of one step's update batch: every group of the step, padded to the data shards."""
  return -(-batch_questions * group_size // dp) * dp


def fit_micro_batch(ucfg: update.UpdateConfig, cfg: qwen2.Qwen2Config, sizes: Mapping[str, int],
                    seq: int, rows: int, budget_gib: float, mu_dtype: str = "float32"
                    ) -> update.UpdateConfig:
  """`ucfg`, with micro_batch 0 and a budget > 0 given the largest micro-batch that splits the
  mini-batch over the data shards and whose estimated per-device bytes (`update_estimate`) fit
  `budget_gib` (config.rl.memory_budget_gib)."""
  budget = budget_gib * 2**30
  if ucfg.micro_batch or budget <= 0:
    return ucfg
  dp = sharding.data_parallel_size(sizes)
  mb, _, _ = ucfg.split(rows)
  fits = [m for m in range(mb, 0, -1) if mb % m == 0 and m % dp == 0
          and update_estimate(ucfg, cfg, sizes, seq, rows, grad=True, micro_batch=m,
                              mu_dtype=mu_dtype) <= budget]
  if not fits:
    smallest = update_estimate(ucfg, cfg, sizes, seq, rows, grad=True, micro_batch=dp,
                               mu_dtype=mu_dtype)
    raise ConfigError(
        f"config.rl.memory_budget_gib={budget_gib}: even a micro-batch of {dp} rows (one per data "
        f"shard) needs an estimated {smallest / 2**30:.2f} GiB per device; raise the budget, shard "
        "further (config.mesh), set config.model.remat/attn_chunk or config.rl.logits_chunk")
  return dataclasses.replace(ucfg, micro_batch=fits[0])
