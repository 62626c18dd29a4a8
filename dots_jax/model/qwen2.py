"""Qwen2 / Qwen2.5 decoder in Flax NNX.

One model code path serves prefill, cached decode and training, so the sampler's log-probs and the
trainer's recomputation agree to float32 rounding.

Shapes: B batch, T query tokens, S key slots (== T without a cache), D model width, H head dim,
N query heads, K key/value heads, G = N // K queries per KV head, V vocabulary, L layers.

Masking contract (left padding, explicit positions):
  * `positions_BxT` are the RoPE positions of the query tokens (callers use `positions_from_mask`).
  * `kv_mask_BxS` says which key slots hold real tokens. Without a cache S == T and it is the token
    mask of the input. With a cache (`init_cache`: per layer [B, C, K, H]) it covers the first S
    cache slots (S <= C; usually all of them), including the T being written now; slots past S are
    not attended.
  * Causality is by slot index: query t (written at slot `cache_index + t`) sees slots <= its own.
    `cache_index` is one int for the batch, or an int per row (the slot engine's rows are at
    different lengths).
Pad queries produce finite garbage (masked scores use a large finite negative, never -inf) that callers
mask out.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  """Architecture hyper-parameters (read from a checkpoint's `config.json`) plus runtime dtypes."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1_000_000.0
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 32768
  head_dim_override: int | None = None
  initializer_range: float = 0.02  # std of random init (HF's field; no effect on loaded weights)
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  # Runtime, not architecture: compute dtype (matmul operands, KV cache) and storage dtype of params.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Activations between matmuls (residual stream, norms, RoPE, MLP gate, attention output): with a
  # 16-bit compute dtype, float32 here keeps every elementwise step and every matmul's float32
  # accumulator unrounded, so the few last-bit differences between the decode and the full-sequence
  # programs (their kernels reduce in other orders) are not turned into 16-bit rounding flips at each
  # step: the sampler's and the trainer's log-probs then agree far more closely (docs/GAP.md).
  # "bfloat16" rounds activations to the compute dtype as transformers does.
  activation_dtype: str = "float32"
  remat: bool = False
  # What a rematerialised layer keeps for the backward pass: a jax.checkpoint_policies name
  # ("nothing_saveable": only the layer's input; "dots_with_no_batch_dims_saveable": also the
  # weight matmuls' outputs, less recomputation for more memory).
  remat_policy: str = "nothing_saveable"
  # Queries per attention block (0 = all at once): attention scores exist for one block of queries
  # at a time, [B, heads, attn_chunk, S] instead of [B, heads, T, S], forward and backward.
  attn_chunk: int = 0
  # Cacheless passes (update, pi_old, reference, scoring) run the decoder blocks as one lax.scan
  # over their stacked weights instead of unrolled: one block's program, compiled once, whatever
  # the depth (MaxText's scan_layers). Decoding keeps the unrolled blocks and per-layer caches.
  scan_layers: bool = False

  @property
  def head_dim(self) -> int:
    return self.head_dim_override or self.hidden_size // self.num_attention_heads

  @property
  def eos_ids(self) -> tuple[int, ...]:
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  @property
  def params_per_layer(self) -> int:
    """Parameters of one decoder layer (attention with biases, MLP, two norms)."""
    d, f = self.hidden_size, self.intermediate_size
    kv = self.num_key_value_heads * self.head_dim
    q = self.num_attention_heads * self.head_dim
    attn = d * q + q + 2 * (d * kv + kv) + q * d
    return attn + 3 * d * f + 2 * d

  def num_params(self) -> int:
    d, v = self.hidden_size, self.vocab_size
    head = 0 if self.tie_word_embeddings else v * d
    return v * d + self.num_hidden_layers * self.params_per_layer + d + head

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **runtime: Any) -> "Qwen2Config":
    """Builds a config from a Hugging Face `config.json` dict; `runtime` sets dtype/param_dtype/remat."""
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
      eos = tuple(eos)
    head_dim = hf.get("head_dim")
    default_head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    return cls(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        num_key_value_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
        head_dim_override=head_dim if head_dim and head_dim != default_head_dim else None,
        initializer_range=hf.get("initializer_range", 0.02),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos,
        **runtime,
    )

  def to_hf(self) -> dict[str, Any]:
    """The `config.json` dict `transformers` needs to rebuild this architecture."""
    eos = self.eos_token_id
    out = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "tie_word_embeddings": self.tie_word_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "max_window_layers": self.num_hidden_layers,
        "use_sliding_window": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "initializer_range": self.initializer_range,
        "use_cache": True,
        "torch_dtype": self.param_dtype,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
    }
    return out


def _rope_theta(hf: dict[str, Any]) -> float:
  # transformers >= 5 moved rope_theta into `rope_parameters`; older configs keep it top-level.
  if "rope_theta" in hf:
    return float(hf["rope_theta"])
  params = hf.get("rope_parameters") or {}
  if params.get("rope_type", "default") != "default":
    raise ValueError(f"Unsupported rope_type {params.get('rope_type')!r}: only default RoPE is implemented.")
  return float(params.get("rope_theta", 1_000_000.0))


@struct.dataclass
class KVCache:
  """Preallocated keys/values (stored as `cache_dtype`), one [B, S, K, H] array per layer.

  Per-layer arrays (not one stacked [L, ...] array) so that a decode step inside a `while_loop`
  updates each layer's buffer in place; slicing and re-stacking a stacked cache copies all of it.
  """

  ks: tuple[jax.Array, ...]
  vs: tuple[jax.Array, ...]

  @property
  def max_len(self) -> int:
    return self.ks[0].shape[1]


def cache_dtype(cfg: Qwen2Config) -> jnp.dtype:
  """Storage dtype of the KV cache: the compute dtype, with 16-bit floats kept as their bits
  (uint16). XLA's CPU backend scatters a bfloat16 buffer through a float32 copy of all of it and
  turns a bfloat16 <-> uint16 reinterpretation into a copy, so a decode loop writing bfloat16
  caches holds extra copies of every layer's cache; an integer cache is written in place, and
  attention reinterprets the window it reads inside the copy that feeds its matmuls."""
  dtype = jnp.dtype(cfg.dtype)
  return jnp.dtype(jnp.uint16) if dtype.itemsize == 2 else dtype


def _to_cache(x: jax.Array, cfg: Qwen2Config) -> jax.Array:
  x = x.astype(cfg.dtype)
  return jax.lax.bitcast_convert_type(x, jnp.uint16) if cache_dtype(cfg) != x.dtype else x


def _from_cache(x: jax.Array, cfg: Qwen2Config) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.dtype(cfg.dtype)) if x.dtype == jnp.uint16 else x


def init_cache(cfg: Qwen2Config, batch: int, max_len: int) -> KVCache:
  shape = (batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
  layers = range(cfg.num_hidden_layers)
  return KVCache(tuple(jnp.zeros(shape, cache_dtype(cfg)) for _ in layers),
                 tuple(jnp.zeros(shape, cache_dtype(cfg)) for _ in layers))


def positions_from_mask(mask_BxT: jax.Array) -> jax.Array:
  """RoPE positions for a left-padded batch: real tokens count from 0, pads get 0."""
  mask = mask_BxT.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


class RMSNorm(nnx.Module):
  """Qwen2 RMSNorm: statistics in float32, scale applied after casting back to the input dtype."""

  def __init__(self, dim: int, eps: float, *, param_dtype: Any):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    in_dtype = x.dtype  # the activation dtype: the scale is applied in it, as transformers does
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight.get_value().astype(in_dtype) * x32.astype(in_dtype)


def _rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding in the rotate-half layout used by Qwen2 checkpoints; angles in float32."""
  h = x_BxTxNxH.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  ang_BxTxH2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  ang_BxTxH = jnp.concatenate([ang_BxTxH2, ang_BxTxH2], axis=-1)
  cos = jnp.cos(ang_BxTxH)[:, :, None, :].astype(x_BxTxNxH.dtype)
  sin = jnp.sin(ang_BxTxH)[:, :, None, :].astype(x_BxTxNxH.dtype)
  x1, x2 = jnp.split(x_BxTxNxH, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x_BxTxNxH * cos + rotated * sin


def _projection_dot(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                    precision: Any = None, preferred_element_type: Any = None, *,
                    out_dtype: Any = None, **kwargs: Any) -> jax.Array:
  """A projection's matmul (`nnx.Linear`'s dot_general), with two departures from the plain one:
  * the token dims are flattened first, so the weight gradient contracts one [tokens] dim instead
    of [batch, time]: XLA's CPU backend otherwise lays the activation gradients out transposed in
    the fusions that produce them (strided writes), which makes the update's backward pass slower;
  * it accumulates in float32 and returns `out_dtype` (the activation dtype; default: the operands'),
    said explicitly so that the CPU backend runs a bfloat16 x bfloat16 -> float32 dot instead of
    upcasting both operands (a float32 copy of every weight, hoisted out of the decode loop)."""
  del preferred_element_type
  (lc, rc), (lb, rb) = dimension_numbers
  lead = lhs.shape[:-1]
  flat = len(lead) > 1 and tuple(lc) == (lhs.ndim - 1,) and not lb and not rb
  if flat:
    lhs, dimension_numbers = lhs.reshape(-1, lhs.shape[-1]), (((1,), tuple(rc)), ((), ()))
  out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                            preferred_element_type=jnp.float32, **kwargs)
  out = out.astype(out_dtype or jnp.result_type(lhs, rhs))
  return out.reshape(*lead, *out.shape[1:]) if flat else out


def _dense(din: int, dout: int, *, bias: bool, cfg: Qwen2Config, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      din, dout, use_bias=bias, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
      kernel_init=nnx.initializers.normal(cfg.initializer_range),
      dot_general=functools.partial(_projection_dot, out_dtype=jnp.dtype(cfg.activation_dtype)),
      rngs=rngs)


class Attention(nnx.Module):
  """Grouped-query attention; K/V heads are never repeated in memory (queries are grouped instead)."""

  def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if n % k:
      raise ValueError(f"num_attention_heads={n} is not a multiple of num_key_value_heads={k}")
    self.q_proj = _dense(d, n * h, bias=True, cfg=cfg, rngs=rngs)
    self.k_proj = _dense(d, k * h, bias=True, cfg=cfg, rngs=rngs)
    self.v_proj = _dense(d, k * h, bias=True, cfg=cfg, rngs=rngs)
    self.o_proj = _dense(n * h, d, bias=False, cfg=cfg, rngs=rngs)

  def __call__(self, x_BxTxD, positions_BxT, kv_mask_BxS, k_cache_BxSxKxH, v_cache_BxSxKxH,
               cache_index):
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    n, kh, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    g = n // kh
    # Queries, keys and values enter the attention matmuls in the compute dtype, the dtype the
    # cache stores them in: a cacheless pass sees the same keys and values as decoding.
    compute = jnp.dtype(cfg.dtype)
    q_BxTxNxH = _rope(self.q_proj(x_BxTxD).reshape(b, t, n, h), positions_BxT,
                      cfg.rope_theta).astype(compute)
    k_BxTxKxH = _rope(self.k_proj(x_BxTxD).reshape(b, t, kh, h), positions_BxT,
                      cfg.rope_theta).astype(compute)
    v_BxTxKxH = self.v_proj(x_BxTxD).reshape(b, t, kh, h).astype(compute)

    if k_cache_BxSxKxH is None:
      k_BxSxKxH, v_BxSxKxH, start_B = k_BxTxKxH, v_BxTxKxH, jnp.zeros((b,), jnp.int32)
    elif jnp.ndim(cache_index) == 1:
      # A write position per row (the slot engine: rows at different lengths); out-of-range rows
      # (finished slots) are dropped by the scatter.
      start_B = cache_index
      rows_Bx1 = jnp.arange(b)[:, None]
      cols_BxT = start_B[:, None] + jnp.arange(t)[None, :]
      k_BxSxKxH = k_cache_BxSxKxH.at[rows_Bx1, cols_BxT].set(_to_cache(k_BxTxKxH, cfg),
                                                             mode="drop")
      v_BxSxKxH = v_cache_BxSxKxH.at[rows_Bx1, cols_BxT].set(_to_cache(v_BxTxKxH, cfg),
                                                             mode="drop")
    else:
      start_B = jnp.full((b,), cache_index, jnp.int32)
      k_BxSxKxH = jax.lax.dynamic_update_slice_in_dim(
          k_cache_BxSxKxH, _to_cache(k_BxTxKxH, cfg), cache_index, axis=1)
      v_BxSxKxH = jax.lax.dynamic_update_slice_in_dim(
          v_cache_BxSxKxH, _to_cache(v_BxTxKxH, cfg), cache_index, axis=1)
    # Keys beyond the mask's length are not attended (the slot engine's cache windows): only the
    # first S cache slots are read, whatever the cache's size.
    s = kv_mask_BxS.shape[1]
    k_att, v_att = _from_cache(k_BxSxKxH[:, :s], cfg), _from_cache(v_BxSxKxH[:, :s], cfg)

    q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, kh, g, h)
    q_slot_BxT = start_B[:, None] + jnp.arange(t)[None, :]
    causal_BxTxS = jnp.arange(s)[None, None, :] <= q_slot_BxT[:, :, None]
    allowed_BxTxS = causal_BxTxS & kv_mask_BxS[:, None, :].astype(bool)
    if cfg.attn_chunk and t > cfg.attn_chunk:
      out_BxTxKxGxH = _attend_chunked(q_BxTxKxGxH, k_att, v_att, allowed_BxTxS, cfg.attn_chunk)
    else:
      out_BxTxKxGxH = _attend(q_BxTxKxGxH, k_att, v_att, allowed_BxTxS)
    out = self.o_proj(out_BxTxKxGxH.reshape(b, t, n * h).astype(x_BxTxD.dtype))
    return out, k_BxSxKxH, v_BxSxKxH


def _attend(q_BxTxKxGxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array,
            allowed_BxTxS: jax.Array) -> jax.Array:
  """Softmax attention of grouped queries over the keys they are allowed to see (float32 scores)."""
  h = q_BxTxKxGxH.shape[-1]
  scores_BxKxGxTxS = jnp.einsum(
      "btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH.astype(q_BxTxKxGxH.dtype),
      preferred_element_type=jnp.float32) * (h ** -0.5)
  # An additive mask: the same values as selecting _MASK_VALUE (scores are far below its ulp),
  # and a backward pass that passes the gradient through instead of selecting it again.
  bias_BxTxS = jnp.where(allowed_BxTxS, 0.0, _MASK_VALUE).astype(jnp.float32)
  scores_BxKxGxTxS = scores_BxKxGxTxS + bias_BxTxS[:, None, None]
  probs = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(v_BxSxKxH.dtype)
  # Accumulated and returned in float32: the caller casts to the activation dtype.
  return jnp.einsum("bkgts,bskh->btkgh", probs, v_BxSxKxH.astype(probs.dtype),
                    preferred_element_type=jnp.float32)


def _attend_chunked(q_BxTxKxGxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array,
                    allowed_BxTxS: jax.Array, chunk: int) -> jax.Array:
  """`_attend` one block of `chunk` queries at a time (each row's softmax is over all its keys, so
  the result is the same): a loop whose body is rematerialised, so the backward pass recomputes one
  block's scores instead of keeping every block's."""
  b, t = q_BxTxKxGxH.shape[:2]
  blocks = -(-t // chunk)
  pad = blocks * chunk - t
  if pad:  # padded query rows see nothing and are dropped below
    q_BxTxKxGxH = jnp.pad(q_BxTxKxGxH, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
    allowed_BxTxS = jnp.pad(allowed_BxTxS, ((0, 0), (0, pad), (0, 0)))
  q_NxBxCxKxGxH = jnp.moveaxis(q_BxTxKxGxH.reshape(b, blocks, chunk, *q_BxTxKxGxH.shape[2:]), 1, 0)
  a_NxBxCxS = jnp.moveaxis(allowed_BxTxS.reshape(b, blocks, chunk, -1), 1, 0)
  block = jax.checkpoint(lambda qa: _attend(qa[0], k_BxSxKxH, v_BxSxKxH, qa[1]))
  out_NxBxCxKxGxH = jax.lax.map(block, (q_NxBxCxKxGxH, a_NxBxCxS))
  out = jnp.moveaxis(out_NxBxCxKxGxH, 0, 1).reshape(b, blocks * chunk,
                                                     *out_NxBxCxKxGxH.shape[3:])
  return out[:, :t]


class MLP(nnx.Module):
  def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.gate_proj = _dense(d, f, bias=False, cfg=cfg, rngs=rngs)
    self.up_proj = _dense(d, f, bias=False, cfg=cfg, rngs=rngs)
    self.down_proj = _dense(f, d, bias=False, cfg=cfg, rngs=rngs)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
    self.self_attn = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions, kv_mask, k_cache, v_cache, cache_index):
    attn, k, v = self.self_attn(self.input_layernorm(x), positions, kv_mask, k_cache, v_cache,
                                cache_index)
    x = x + attn
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, k, v


def _layer_forward(layer, x, positions, kv_mask, k_cache, v_cache, cache_index):
  return layer(x, positions, kv_mask, k_cache, v_cache, cache_index)


def _remat_layer_forward(layer, x, positions, kv_mask, k_cache, v_cache, cache_index, *,
                         policy: str = "nothing_saveable"):
  """`_layer_forward` under jax.checkpoint on the layer's split state: its activations are
  recomputed in the backward pass. (nnx.remat tracks the module's Variables across traces and
  refuses a module merged inside lax.map / scan bodies, which is where the update runs it.)"""
  graphdef, state = nnx.split(layer)

  def pure(state, x, positions, kv_mask, k_cache, v_cache, cache_index):
    return _layer_forward(nnx.merge(graphdef, state), x, positions, kv_mask, k_cache, v_cache,
                          cache_index)

  return jax.checkpoint(pure, policy=remat_policy(policy))(
      state, x, positions, kv_mask, k_cache, v_cache, cache_index)


def remat_policy(name: str) -> Any:
  """The jax.checkpoint policy called `name` (config.model.remat_policy)."""
  policy = getattr(jax.checkpoint_policies, name, None)
  if policy is None or name.startswith("_") or name in ("save_only_these_names",
                                                        "save_any_names_but_these",
                                                        "save_from_both_policies"):
    raise ValueError(f"config.model.remat_policy={name!r} is not a jax.checkpoint_policies policy "
                     "(e.g. nothing_saveable, dots_saveable, dots_with_no_batch_dims_saveable, "
                     "everything_saveable)")
  return policy


@dataclasses.dataclass(frozen=True)
class ForwardShardings:
  """Layouts a training-shaped pass on a mesh pins (`sharding.forward_shardings` builds them).

  Without them the partitioner may all-gather a micro-batch's activations over the fsdp axis and
  keep the weights sharded: every device then computes every row of the micro-batch. Pinning the
  residual stream to the batch layout makes it gather each layer's weights instead, as fsdp means.
  """

  rows: NamedSharding  # [B, T, D] activations: rows over the data-parallel axes
  layer: Any  # one decoder layer's parameter shardings (an nnx.State of NamedSharding)
  # With a tensor axis: the residual stream between blocks also split along the sequence over it
  # (sequence parallelism), so what a block keeps for the backward pass is not repeated on every
  # tensor shard; the blocks gather the sequence where their matmuls need it. Used when T divides.
  seq_rows: NamedSharding | None = None

  def pin_rows(self, x_BxTxD: jax.Array) -> jax.Array:
    seq = self.seq_rows
    if seq is not None and x_BxTxD.shape[1] % seq.mesh.shape["tensor"] == 0:
      return jax.lax.with_sharding_constraint(x_BxTxD, seq)
    return jax.lax.with_sharding_constraint(x_BxTxD, self.rows)


def _row_pin(shardings: ForwardShardings | None) -> Any:
  """`shardings.pin_rows`, or the identity for a pass without a mesh."""
  return (lambda x: x) if shardings is None else shardings.pin_rows


class Qwen2ForCausalLM(nnx.Module):
  """Parameter names mirror the Hugging Face module tree (`model.layers.N.self_attn.q_proj` ...)."""

  def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embed_tokens = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=jnp.dtype(cfg.dtype), param_dtype=pd,
        embedding_init=nnx.initializers.normal(cfg.initializer_range), rngs=rngs)
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd)
    if not cfg.tie_word_embeddings:
      self.lm_head = _dense(cfg.hidden_size, cfg.vocab_size, bias=False, cfg=cfg, rngs=rngs)

  def hidden(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, kv_mask_BxS: jax.Array,
             cache: KVCache | None = None, cache_index: jax.Array | int = 0,
             shardings: ForwardShardings | None = None) -> tuple[jax.Array, KVCache | None]:
    """Final-norm hidden states [B, T, D] (activation dtype) and the updated cache (None without one).
    `shardings`: how a training-shaped pass on a mesh lays out its activations and stacked layers
    (`sharding.forward_shardings`)."""
    pin = _row_pin(shardings)
    x = pin(self.embed_tokens(tokens_BxT).astype(self.cfg.activation_dtype))
    if cache is None and self.cfg.scan_layers:
      return self.norm(self._scanned_layers(x, positions_BxT, kv_mask_BxS, shardings)), None
    step = (functools.partial(_remat_layer_forward, policy=self.cfg.remat_policy)
            if self.cfg.remat else _layer_forward)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      kc = None if cache is None else cache.ks[i]
      vc = None if cache is None else cache.vs[i]
      x, k, v = step(layer, x, positions_BxT, kv_mask_BxS, kc, vc, cache_index)
      x = pin(x)
      new_k.append(k)
      new_v.append(v)
    x = self.norm(x)
    if cache is None:
      return x, None
    return x, KVCache(tuple(new_k), tuple(new_v))

  def _scanned_layers(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
                      kv_mask_BxS: jax.Array, shardings: ForwardShardings | None) -> jax.Array:
    """The decoder blocks as a scan over their weights stacked on a leading layer axis. The stack
    is made inside the program (the stored parameters keep one entry per layer, as checkpoints and
    the sharding rules name them); its gradient is unstacked the same way. It is stacked in the
    compute dtype: every block casts its weights to it before use anyway, so the values and
    gradients are those of the unrolled blocks, and a bfloat16 run's copy is half the size."""
    split = [nnx.split(layer) for layer in self.layers]
    graphdef = split[0][0]
    compute = jnp.dtype(self.cfg.dtype)
    stacked = jax.tree.map(lambda *leaves: jnp.stack([w.astype(compute) for w in leaves]),
                           *[state for _, state in split])
    pin = _row_pin(shardings)
    if shardings is not None:
      # The stack keeps each layer's sharding, with a leading unsharded layer axis.
      stacked = jax.tree.map(
          lambda w, sh: jax.lax.with_sharding_constraint(
              w, NamedSharding(sh.mesh, PartitionSpec(None, *sh.spec))), stacked, shardings.layer)

    def block(x, state):
      x, _, _ = _layer_forward(nnx.merge(graphdef, state), x, positions_BxT, kv_mask_BxS, None,
                               None, 0)
      return pin(x), None

    if self.cfg.remat:
      block = jax.checkpoint(block, policy=remat_policy(self.cfg.remat_policy))
    x_BxTxD, _ = jax.lax.scan(block, x_BxTxD, stacked)
    return x_BxTxD

  def logits_from_hidden(self, h_BxTxD: jax.Array) -> jax.Array:
    """Float32 logits [B, T, V]: the hidden states and the head enter the matmul in the compute
    dtype (no float32 copy of the head), which accumulates in float32."""
    if self.cfg.tie_word_embeddings:
      w_DxV = self.embed_tokens.embedding.get_value().T
    else:
      w_DxV = self.lm_head.kernel.get_value()
    b, t, d = h_BxTxD.shape
    compute = jnp.dtype(self.cfg.dtype)
    logits = jnp.dot(h_BxTxD.reshape(b * t, d).astype(compute), w_DxV.astype(compute),
                     preferred_element_type=jnp.float32)  # tokens flattened: see _projection_dot
    return logits.reshape(b, t, -1)

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, kv_mask_BxS: jax.Array,
               cache: KVCache | None = None, cache_index: jax.Array | int = 0
               ) -> tuple[jax.Array, KVCache | None]:
    h, cache = self.hidden(tokens_BxT, positions_BxT, kv_mask_BxS, cache, cache_index)
    return self.logits_from_hidden(h), cache


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                   temperature: float | jax.Array = 1.0) -> jax.Array:
  """log softmax(logits / temperature)[target], float32. Shared by sampler and trainer.

  Computed as the target's logit minus the log-sum-exp rather than by indexing a [.., V]
  log-softmax: no [.., V] log-softmax is formed, and the backward pass is the softmax the
  log-sum-exp's gradient broadcasts plus a one-element scatter per position (XLA's CPU backend
  runs the indexed log-softmax's backward markedly slower)."""
  scaled = logits_BxTxV.astype(jnp.float32) / temperature
  target = jnp.take_along_axis(scaled, targets_BxT[..., None], axis=-1)[..., 0]
  return target - jax.nn.logsumexp(scaled, axis=-1)


def align_to_tokens(x_BxTm1: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Moves per-prefix values (column t scores token t+1) onto the token they score: out[:, t+1] =
  x[:, t]; 0 at t=0 and at pads. Shared by every per-token quantity (log-probs, entropies)."""
  return jnp.where(mask_BxT.astype(bool), jnp.pad(x_BxTm1, ((0, 0), (1, 0))), 0.0)


def sequence_logprobs(model: Qwen2ForCausalLM, tokens_BxT: jax.Array, mask_BxT: jax.Array,
                      temperature: float | jax.Array = 1.0) -> jax.Array:
  """Log-prob of each token given its prefix: out[:, t] = log p(tokens[:, t] | tokens[:, :t]).

  `mask_BxT` marks real tokens of a left-padded (prompt + completion) batch; out[:, 0] and pad
  positions are 0. This is the trainer-side recomputation the sampler's log-probs are tested against.
  """
  positions = positions_from_mask(mask_BxT)
  logits, _ = model(tokens_BxT, positions, mask_BxT)
  return align_to_tokens(token_logprobs(logits[:, :-1], tokens_BxT[:, 1:], temperature), mask_BxT)


def init_model(cfg: Qwen2Config, seed: int = 0) -> Qwen2ForCausalLM:
  """Random init (for tests, benchmarks and the tiny default's fresh base model)."""
  return Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(seed))


@functools.lru_cache(maxsize=None)
def abstract_model(cfg: Qwen2Config) -> tuple[nnx.GraphDef, nnx.State]:
  """Shape-only graphdef/state, no memory allocated (for sharding plans and loading)."""
  return nnx.split(nnx.eval_shape(lambda: init_model(cfg)))
