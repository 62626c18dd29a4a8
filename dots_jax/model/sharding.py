"""Device mesh and named parameter-sharding rules for the Qwen2 policy.

Mesh axes: `data` (pure data parallel: replicated params), `fsdp` (batch AND parameter sharding),
`tensor` (heads / MLP width / vocabulary). Rules are matched against the '/'-joined parameter path
(so optimizer-state trees, whose paths end with the parameter path, get the same layout). A mesh
axis that does not divide a dimension is dropped for that dimension (it is replicated instead) so
odd shapes (e.g. 2 KV heads on a 4-way tensor axis) still work.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dots_jax.model import qwen2

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (regex searched in the parameter path, mesh axis per dimension). First match wins.
PARAM_RULES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (r"(^|/)embed_tokens/embedding$", ("tensor", "fsdp")),  # [V, D]
    (r"(^|/)lm_head/kernel$", ("fsdp", "tensor")),  # [D, V]
    (r"(^|/)(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", ("fsdp", "tensor")),  # [D, out]
    (r"(^|/)(o_proj|down_proj)/kernel$", ("tensor", "fsdp")),  # [in, D]
    (r"(^|/)(q_proj|k_proj|v_proj)/bias$", ("tensor",)),
    (r"(^|/)(input_layernorm|post_attention_layernorm|norm)/weight$", (None,)),
)
# KV cache [L, B, S, K, H]: batch like the activations, KV heads over `tensor`.
CACHE_AXES = (None, BATCH_AXES, None, "tensor", None)


def parse_mesh_spec(spec: str) -> dict[str, int]:
  """'data:1,fsdp:8,tensor:1' -> {'data': 1, 'fsdp': 8, 'tensor': 1} (missing axes are 1)."""
  sizes = {a: 1 for a in AXES}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, sep, value = part.partition(":")
    if not sep or name not in AXES:
      raise ValueError(f"bad mesh spec item {part!r} in {spec!r}: want AXIS:SIZE with AXIS in {AXES}")
    try:
      sizes[name] = int(value)
    except ValueError:
      raise ValueError(f"bad mesh size {value!r} for axis {name!r} in {spec!r}") from None
  return sizes


def resolve_axis_sizes(mesh_cfg: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills in the (at most one) -1 axis and checks the product equals `num_devices`."""
  sizes = {a: int(mesh_cfg[a]) for a in AXES}
  free = [a for a, n in sizes.items() if n == -1]
  if len(free) > 1 or any(n == 0 or n < -1 for n in sizes.values()):
    raise ValueError(f"mesh {sizes}: sizes must be positive, with at most one -1 (= the rest)")
  fixed = math.prod(n for n in sizes.values() if n != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {sizes}: {num_devices} devices are not divisible by {fixed}")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices but "
                     f"{num_devices} are available")
  return sizes


def make_mesh(mesh_cfg: Mapping[str, int] | str, devices: list[Any] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all) from config.mesh or a spec."""
  if isinstance(mesh_cfg, str):
    mesh_cfg = parse_mesh_spec(mesh_cfg)
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_axis_sizes(mesh_cfg, len(devices))
  grid = np.asarray(devices, dtype=object).reshape([sizes[a] for a in AXES])
  return Mesh(grid, AXES)


def _fit(axes: tuple[Any, ...], shape: tuple[int, ...], axis_sizes: Mapping[str, int]) -> P:
  """PartitionSpec with each dimension's axes kept only if their total size divides it."""
  if len(axes) != len(shape):
    raise ValueError(f"rule {axes} has {len(axes)} dims but the array has shape {shape}")
  out = []
  for ax, dim in zip(axes, shape):
    names = () if ax is None else (ax if isinstance(ax, tuple) else (ax,))
    names = tuple(n for n in names if axis_sizes[n] > 1)
    if not names or dim % math.prod(axis_sizes[n] for n in names):
      out.append(None)
    else:
      out.append(names if len(names) > 1 else names[0])
  return P(*out)


def path_str(path: tuple[Any, ...]) -> str:
  """'/'-joined names of a jax key path or an nnx flat-state path (Variable `.value` dropped)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        k = getattr(k, attr)
        break
    if k != "value":
      parts.append(str(k))
  return "/".join(parts)


def param_spec(path: str, shape: tuple[int, ...], axis_sizes: Mapping[str, int]) -> P:
  """The PartitionSpec of one parameter (or optimizer-state leaf) given mesh axis sizes."""
  if not shape:
    return P()
  for pattern, axes in PARAM_RULES:
    if re.search(pattern, path):
      return _fit(axes, tuple(shape), axis_sizes)
  raise ValueError(f"no sharding rule matches parameter {path!r} (shape {tuple(shape)}); "
                   f"add one to dots_jax.model.sharding.PARAM_RULES")


def cache_spec(shape: tuple[int, ...], axis_sizes: Mapping[str, int]) -> P:
  return _fit(CACHE_AXES, tuple(shape), axis_sizes)


def shard_shape(shape: tuple[int, ...], spec: P, axis_sizes: Mapping[str, int]) -> tuple[int, ...]:
  """Per-device block shape of an array of `shape` laid out by `spec`."""
  out = []
  for i, dim in enumerate(shape):
    ax = spec[i] if i < len(spec) else None
    names = () if ax is None else (ax if isinstance(ax, tuple) else (ax,))
    out.append(-(-dim // math.prod(axis_sizes[n] for n in names)))
  return tuple(out)


def kv_head_shards(mesh: Mesh | Mapping[str, int] | None, num_kv_heads: int) -> int:
  """How many ways a KV cache's heads are split (`CACHE_AXES`: the tensor axis, when it divides
  them); 1 without a mesh."""
  if mesh is None:
    return 1
  tensor = (mesh_axis_sizes(mesh) if isinstance(mesh, Mesh) else mesh)["tensor"]
  return tensor if num_kv_heads % tensor == 0 else 1


def mesh_axis_sizes(mesh: Mesh) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.devices.shape))


def data_parallel_size(mesh: Mesh | Mapping[str, int] | None) -> int:
  """How many shards the batch axis is split into ('data' x 'fsdp'); 1 without a mesh."""
  if mesh is None:
    return 1
  sizes = mesh_axis_sizes(mesh) if isinstance(mesh, Mesh) else mesh
  return int(math.prod(sizes[a] for a in BATCH_AXES))


def pad_to_multiple(rows: Any, multiple: int) -> Any:
  """A list or array with its last row repeated up to a multiple of `multiple` rows (batches must
  split over the data-parallel shards; callers drop the extra rows' results)."""
  extra = (-len(rows)) % multiple
  if not extra:
    return rows
  if isinstance(rows, np.ndarray):
    return np.concatenate([rows, np.repeat(rows[-1:], extra, axis=0)])
  return list(rows) + [rows[-1]] * extra


def param_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Pytree of NamedSharding matching `abstract_state` (an nnx.State, or any tree with such paths)."""
  sizes = mesh_axis_sizes(mesh)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, param_spec(path_str(path), np.shape(leaf), sizes)),
      abstract_state)


def forward_shardings(params_shardings: Any, mesh: Mesh) -> qwen2.ForwardShardings:
  """What a training-shaped pass pins (`qwen2.ForwardShardings`): activation rows over the
  data-parallel axes, and one decoder layer's parameter shardings out of the model's
  (`param_shardings`; the rules name parameters without their layer index, so every layer's are
  these)."""
  seq = (NamedSharding(mesh, P(BATCH_AXES, "tensor", None))
         if mesh_axis_sizes(mesh)["tensor"] > 1 else None)
  return qwen2.ForwardShardings(rows=batch_sharding(mesh, 3), layer=params_shardings["layers"][0],
                                seq_rows=seq)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dimension over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def cache_sharding(mesh: Mesh, cache_shape: tuple[int, ...]) -> NamedSharding:
  """Sharding of a KVCache k/v array [L, B, S, K, H]."""
  return NamedSharding(mesh, cache_spec(cache_shape, mesh_axis_sizes(mesh)))


def init_sharded_model(cfg: qwen2.Qwen2Config, mesh: Mesh, seed: int = 0) -> qwen2.Qwen2ForCausalLM:
  """Random init directly into the mesh layout: shapes first, then a jit with out_shardings."""
  graphdef, abstract_state = qwen2.abstract_model(cfg)
  shardings = param_shardings(abstract_state, mesh)
  init = jax.jit(lambda: nnx.state(qwen2.init_model(cfg, seed)), out_shardings=shardings)
  return nnx.merge(graphdef, init())


def shard_model(model: qwen2.Qwen2ForCausalLM, mesh: Mesh) -> qwen2.Qwen2ForCausalLM:
  """A copy of `model` with every parameter placed by the rules on `mesh`."""
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.device_put(state, param_shardings(state, mesh)))


def to_host(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-host) array on this host: an allgather when it spans devices
  of other processes, a plain device_get otherwise."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
