"""The DOTS stage's programs for the dry run: the backbone's embedding pass and the estimator's
training step and prediction, lowered with shapes only, as the run places them.

The embedding pass runs over the run's mesh as `difficulty.offline.question_embeddings` runs it:
the backbone's weights in `selection.dots.embed_dtype`, laid out by the policy's sharding rules,
each batch of questions split over the data axes. The estimator is a small module jitted without a
mesh: its two programs run on one chip (the first). `plan.compiled_programs` compiles them beside
the policy's programs when the method selects with DOTS; `python -m dots_jax.tools.dots_stage`
compiles them alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from dots_jax.config_common import policy_runtime
from dots_jax.difficulty import embed, estimator, fit
from dots_jax.run import settings
from dots_jax.model import hf_io, qwen2, sharding
from dots_jax.run.memory_plan import plan
from dots_jax.tools import compiled

# (lower the program, the per-chip bytes estimated for it) per program name
Programs = dict[str, tuple[Callable[[], Any], int]]


def backbone_shape(config: ml_collections.ConfigDict, policy: qwen2.Qwen2Config
                   ) -> tuple[qwen2.Qwen2Config, str]:
  """The embedding backbone's architecture in selection.dots.embed_dtype (as `question_embeddings`
  loads it): selection.dots.backbone's config.json when it is a local directory, else the policy's
  shape (the default backbone is the initial policy); and where it came from."""
  path = config.selection.dots.backbone
  dtype = config.selection.dots.embed_dtype
  runtime = dict(dtype=dtype, param_dtype=dtype)
  if path and os.path.isdir(path):
    return qwen2.Qwen2Config.from_hf(hf_io.read_hf_config(path), **runtime), path
  where = f"{path} (not local: the policy's shape assumed)" if path else "the initial policy"
  # the run's runtime fields (scanned layers, remat, attention blocks) are not the embedding's
  fields = qwen2.Qwen2Config.__dataclass_fields__
  defaults = {k: fields[k].default for k in policy_runtime(config)}
  return dataclasses.replace(policy, **{**defaults, **runtime}), where


def _on(device: Any) -> Callable[[Any], jax.ShapeDtypeStruct]:
  one = jax.sharding.SingleDeviceSharding(device)
  return lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one)


def _nbytes(tree: Any) -> int:
  return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def embed_program(config: ml_collections.ConfigDict, backbone: qwen2.Qwen2Config,
                  devices: list[Any], sizes: Mapping[str, int]) -> tuple[Callable[[], Any], int]:
  """`embed._mean_hidden` over one batch of the longest questions on a mesh of `sizes` over
  `devices`: `embed_batch` rows (rounded up to a multiple of the data shards) of the bucket holding
  the longest prompt (cut at `embed_max_len`)."""
  d = config.selection.dots
  longest = max(config.data.prompt_buckets)
  width = embed._bucket(longest, d.embed_max_len if d.embed_max_len > 0 else longest)
  graphdef, abstract = qwen2.abstract_model(backbone)
  mesh = sharding.make_mesh(dict(sizes), devices[:math.prod(sizes.values())])
  attach = lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh)
  params = jax.tree.map(attach, abstract, sharding.param_shardings(abstract, mesh))
  shards = sharding.data_parallel_size(sizes)
  batch = embed.pass_batch(d.embed_batch, shards)
  tokens = mask = attach(jax.ShapeDtypeStruct((batch, width), np.int32),
                         sharding.batch_sharding(mesh))
  # the chip's share of the weights, then one layer's activations (residual stream, attention,
  # MLP over the tensor axis) of its rows, in the pass's dtype
  rows = batch // shards * width
  act = rows * (4 * backbone.hidden_size + 2 * backbone.intermediate_size // sizes["tensor"])
  est = plan(backbone, sizes, batch=1, seq=1)["params"] + act * np.dtype(backbone.dtype).itemsize
  return (lambda: embed._mean_hidden.lower(graphdef, params, tokens, mask)), est


def estimator_programs(config: ml_collections.ConfigDict, input_dim: int, device: Any) -> Programs:
  """The estimator's Adam step (the larger of the offline stage's and online fine-tuning's query
  batch and reference set) and its prediction of one chunk of projected questions."""
  d = config.selection.dots
  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: estimator.init_estimator(settings.read(config).stage.estimator_config(input_dim))))
  place = _on(device)
  params = jax.tree.map(place, abstract)
  opt_state = jax.tree.map(place, jax.eval_shape(fit._ADAM.init, abstract))
  f32 = lambda *shape: place(jax.ShapeDtypeStruct(shape, np.float32))
  batch, refs = max(d.fit.batch, d.online_batch), max(d.fit.ref_size, d.ref_size)
  key = place(jax.eval_shape(lambda: jax.random.key(0)))
  weights = _nbytes(abstract)
  # params, Adam's two moments and the gradient; the adapters' activations of queries + references
  act = (batch + refs) * (input_dim + 3 * d.width) * 4 * d.layers
  fit_lower = lambda: fit._train_step.lower(graphdef, params, opt_state, f32(), f32(batch, input_dim),
                                            f32(batch), f32(refs, input_dim), f32(refs), key)
  chunk = d.chunk
  predict_lower = lambda: estimator._predict_projected.lower(
      graphdef, params, f32(chunk, d.width), f32(d.ref_size, input_dim), f32(d.ref_size))
  return {"estimator_fit": (fit_lower, 4 * weights + 2 * act),
          "estimator_predict": (predict_lower, weights + chunk * (d.width + 2 * d.ref_size) * 4)}


def dots_programs(config: ml_collections.ConfigDict, policy: qwen2.Qwen2Config,
                  devices: list[Any], sizes: Mapping[str, int]) -> Programs:
  """Every DOTS-stage program: the embedding pass on the mesh of `sizes` over `devices`, the
  estimator's on the first of them."""
  backbone, _ = backbone_shape(config, policy)
  return {"embed": embed_program(config, backbone, devices, sizes),
          **estimator_programs(config, backbone.hidden_size, devices[0])}


def fit_embed(config: ml_collections.ConfigDict, policy: qwen2.Qwen2Config, devices: list[Any],
              sizes: Mapping[str, int], hbm_bytes: int, margin: float,
              configured: dict[str, Any] | None = None) -> dict[str, Any] | None:
  """The largest `selection.dots.embed_batch` (halving the config's, down to one row per data
  shard) whose embedding pass compiles under `margin` x HBM on the mesh, or None (the chip's share
  of the backbone's weights alone is too large: a smaller backbone, a bfloat16 pass or more chips
  are the remedies); each candidate is one compile, except the configured batch when the caller
  has already measured it (`configured`)."""
  backbone, _ = backbone_shape(config, policy)
  if plan(backbone, sizes, batch=1, seq=1)["params"] > margin * hbm_bytes:
    return None  # the chip's share of the weights alone
  trial = config.copy_and_resolve_references()
  tried, got = [], configured
  while trial.selection.dots.embed_batch >= sharding.data_parallel_size(sizes):
    if got is None:
      got = compiled.measure_program(*embed_program(trial, backbone, devices, sizes), hbm_bytes)
    tried.append((trial.selection.dots.embed_batch, got.get("compiled") or got.get("wanted")))
    if compiled.within(got, margin * hbm_bytes):
      return {"embed_batch": trial.selection.dots.embed_batch, "compiled": got["compiled"],
              "tried": tried}
    trial.selection.dots.embed_batch //= 2
    got = None
  return None


def dots_verdict(config: ml_collections.ConfigDict, policy: qwen2.Qwen2Config,
                 programs: dict[str, dict[str, Any]], topo: Any, sizes: Mapping[str, int],
                 margin: float) -> str:
  """Whether the DOTS stage fits under `margin` x HBM; when the embedding pass does not, the
  embed_batch that does (`fit_embed`), or that the backbone is too large for the slice."""
  limit = margin * topo.hbm_bytes
  unfit = [n for n in sorted(programs) if not compiled.within(programs[n], limit)]
  if not unfit:
    return "the DOTS stage fits"
  line = (f"the DOTS stage's {', '.join(unfit)} does NOT fit (embedding pass in "
          f"{config.selection.dots.embed_dtype} over {dict(sizes)})")
  if "embed" in unfit:
    found = fit_embed(config, policy, topo.devices, sizes, topo.hbm_bytes, margin,
                      configured=programs["embed"])
    line += (f"; fits with --config.selection.dots.embed_batch={found['embed_batch']} (compiled "
             f"{found['compiled'] / 2**30:.2f} GiB)" if found else
             "; no embed_batch fits: --config.selection.dots.embed_dtype=bfloat16, more chips or "
             "--config.selection.dots.backbone=<a smaller checkpoint>")
  return line
