"""Question embeddings for DOTS: the final-normed hidden state of a frozen Qwen2 backbone (the same
Flax code as the policy), mean-pooled over the non-pad tokens of the raw question text.

Computed once in jitted batches (length-bucketed, left-padded, fixed batch size so each bucket compiles
once) and cached on disk as .npy, keyed by the data set and a fingerprint of the backbone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dots_jax import fs
from dots_jax.model.qwen2 import Qwen2ForCausalLM, positions_from_mask
from dots_jax.model.sharding import batch_sharding, data_parallel_size, to_host

_MIN_BUCKET = 8


@functools.partial(jax.jit, static_argnums=0)
def _mean_hidden(graphdef, params, tokens_BxT, mask_BxT):
  model = nnx.merge(graphdef, params)
  h_BxTxD, _ = model.hidden(tokens_BxT, positions_from_mask(mask_BxT), mask_BxT)
  m = mask_BxT.astype(jnp.float32)[..., None]
  total = jnp.sum(h_BxTxD.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(m.sum(axis=1), 1.0)


def _bucket(length: int, max_len: int) -> int:
  b = _MIN_BUCKET
  while b < length:
    b *= 2
  return min(b, max_len)


def pass_batch(batch: int, shards: int) -> int:
  """The embedding pass's batch over `shards` data-parallel shards: `batch` rounded up to a
  multiple of them (the planner compiles the pass at this size)."""
  return -(-batch // shards) * shards


def embed_token_lists(model: Qwen2ForCausalLM, token_lists: Sequence[Sequence[int]], *, batch: int,
                      max_len: int, pad_id: int = 0, mesh: Mesh | None = None) -> np.ndarray:
  """float32 [N, D]: mean final hidden state of each token list (truncated to `max_len`; 0 = the
  model's context length, i.e. no truncation, as the official embedding script). With a `mesh`
  (the model's parameters laid out on it) each batch is split over its data axes: `batch` is
  rounded up to a multiple of them."""
  max_len = max_len if max_len > 0 else model.cfg.max_position_embeddings
  batch = pass_batch(batch, data_parallel_size(mesh))
  place = (lambda x: x) if mesh is None else (
      lambda x: jax.device_put(x, batch_sharding(mesh)))
  for i, toks in enumerate(token_lists):
    if len(toks) == 0:
      raise ValueError(f"question {i} tokenizes to nothing; cannot embed an empty question")
  graphdef, params = nnx.split(model)
  lists = [list(t)[:max_len] for t in token_lists]
  out = np.empty((len(lists), model.cfg.hidden_size), np.float32)
  order = np.argsort([len(t) for t in lists], kind="stable")  # similar lengths share a bucket
  for start in range(0, len(order), batch):
    rows = order[start:start + batch]
    width = _bucket(max(len(lists[r]) for r in rows), max_len)
    tokens = np.full((batch, width), pad_id, np.int32)
    mask = np.zeros((batch, width), np.int32)
    for j, r in enumerate(rows):  # left padding, as everywhere in this code base
      n = len(lists[r])
      tokens[j, width - n:] = lists[r]
      mask[j, width - n:] = 1
    pooled = to_host(_mean_hidden(graphdef, params, place(tokens), place(mask)))
    out[rows] = pooled[:len(rows)]
  return out


def embed_texts(model: Qwen2ForCausalLM, tokenizer: Any, texts: Sequence[str], *, batch: int,
                max_len: int, mesh: Mesh | None = None) -> np.ndarray:
  """Embeds raw question texts (no chat template, no special tokens)."""
  token_lists = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return embed_token_lists(model, token_lists, batch=batch, max_len=max_len, pad_id=pad_id,
                           mesh=mesh)


def backbone_fingerprint(path: str) -> str:
  """Identifies a checkpoint directory: its config.json with, where the directory records the
  digest of every file (the tiny base's `tiny_base.json`), those digests, so that the same weights
  anywhere (the package's shipped base in every install and worktree) share their caches; else its
  absolute path and weight file sizes (hashing a real checkpoint's weights would take minutes)."""
  path = os.path.abspath(path)
  cfg = os.path.join(path, "config.json")
  if not os.path.exists(cfg):
    raise FileNotFoundError(f"backbone {path!r} has no config.json (selection.dots.backbone)")
  with open(cfg) as f:
    parts = [f.read()]
  digests = _recorded_digests(path)
  if digests:
    parts += [f"{name}:{digests[name]}" for name in sorted(digests)]
  else:
    parts.insert(0, path)
    for name in sorted(os.listdir(path)):
      if name.endswith(".safetensors"):
        parts.append(f"{name}:{os.path.getsize(os.path.join(path, name))}")
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _recorded_digests(path: str) -> dict[str, str]:
  """The per-file sha256 a tiny base directory records ({} where it records none)."""
  try:
    with open(os.path.join(path, "tiny_base.json")) as f:
      files = json.load(f).get("files", {})
  except (OSError, ValueError, AttributeError):
    return {}
  return files if isinstance(files, dict) and any(n.endswith(".safetensors") for n in files) else {}


def default_cache_dir() -> str:
  root = os.environ.get("DOTS_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "dots_jax")
  return os.path.join(root, "embeddings")


def cached_embeddings(cache_dir: str, dataset: str, backbone_id: str, texts: Sequence[str],
                      max_len: int, compute: Callable[[], np.ndarray],
                      log: Callable[[str], None] = print) -> np.ndarray:
  """Loads `<cache_dir>/<dataset>-<key>.npy` or computes and stores it (atomically: concurrent runs
  never read a half-written cache). The key hashes the data set name, the backbone fingerprint, the
  question texts and the truncation length. A cached file that does not load, or has the wrong
  rows, is computed again, with a line naming it."""
  text_hash = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
  key = hashlib.sha256(json.dumps([dataset, backbone_id, text_hash, max_len]).encode()).hexdigest()
  safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset)
  path = os.path.join(cache_dir or default_cache_dir(), f"{safe}-{key[:16]}.npy")
  if os.path.exists(path):
    try:
      emb = np.load(path)
      if emb.ndim == 2 and emb.shape[0] == len(texts):
        return emb
      problem = f"{emb.shape} for {len(texts)} questions"
    except Exception as e:  # noqa: BLE001 - a truncated or damaged file
      problem = f"{type(e).__name__}: {e}"
    log(f"DOTS: embedding cache {path} does not load ({problem}); computing it again")
  emb = np.asarray(compute(), np.float32)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.npy"
  np.save(tmp, emb)
  os.replace(tmp, path)
  fs.write_text(path[:-4] + ".json", json.dumps({
      "dataset": dataset, "backbone": backbone_id, "questions": len(texts), "max_len": max_len,
      "dim": int(emb.shape[1])}))
  return emb
