"""Hugging Face Qwen2 checkpoint directories in and out.

Loading reads `config.json`, builds the model shape-first, then reads the safetensors files tensor by
tensor: each device's block is sliced straight out of the file (`get_slice`), transposed to our
[in, out] layout, cast and placed into its NamedSharding, so no host ever holds more than one tensor.
Export writes HF names and layout back (`config.json`, `generation_config.json`, safetensors with an
index when sharded, the tokenizer files) so `transformers` and vLLM can load the directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from dots_jax import fs
from dots_jax.model import qwen2, sharding

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "chat_template.json")
# Buffers some older exports carry; they are recomputed, never loaded.
_IGNORED_TENSORS = re.compile(r"\.rotary_emb\.inv_freq$")

_log = logging.getLogger(__name__)


def _hf_name(path: tuple[Any, ...]) -> tuple[str, bool]:
  """HF tensor name of one of our parameters and whether its 2-D layout is transposed."""
  names = [str(p) for p in path]
  last = names[-1]
  if names[0] == "lm_head":
    return "lm_head.weight", True
  if names[0] == "embed_tokens":
    return "model.embed_tokens.weight", False
  if last == "kernel":
    return "model." + ".".join(names[:-1]) + ".weight", True
  return "model." + ".".join(names), False


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
  """`config.json` of a Qwen2 checkpoint directory; clear errors for anything else."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
  cfg_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path} is missing: a Hugging Face checkpoint directory needs "
                            f"{CONFIG_FILE}")
  try:
    with open(cfg_path) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
  archs = hf.get("architectures") or []
  if hf.get("model_type") != "qwen2" or (archs and "Qwen2ForCausalLM" not in archs):
    raise ValueError(f"{cfg_path} describes model_type={hf.get('model_type')!r} "
                     f"architectures={archs!r}; only Qwen2ForCausalLM (model_type 'qwen2', which "
                     f"covers Qwen2.5 and Qwen2.5-Math) is supported")
  # Features the model does not implement must fail loudly rather than give different logits.
  if hf.get("use_sliding_window"):
    raise ValueError(f"{cfg_path}: use_sliding_window=true is not supported (full attention only)")
  scaling = hf.get("rope_scaling") or {}
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type != "default":
    raise ValueError(f"{cfg_path}: rope_scaling type {rope_type!r} is not supported (only default "
                     f"RoPE; remove rope_scaling to run at the native context length)")
  return hf


def _weight_files(path: str) -> dict[str, str]:
  """tensor name -> file, from the index (sharded) or the single file's header."""
  index_path = os.path.join(path, INDEX_FILE)
  if os.path.isfile(index_path):
    try:
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{index_path} is not a safetensors index ({e!r})") from None
    for fname in sorted(set(weight_map.values())):
      if not os.path.isfile(os.path.join(path, fname)):
        raise FileNotFoundError(f"{index_path} lists {fname} but {os.path.join(path, fname)} "
                                f"does not exist")
    return {k: os.path.join(path, v) for k, v in weight_map.items()}
  single = os.path.join(path, SINGLE_FILE)
  if not os.path.isfile(single):
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path} (only safetensors "
                            f"checkpoints are supported)")
  with _open(single) as f:
    return {k: single for k in f.keys()}


def _open(fname: str):
  try:
    return safe_open(fname, framework="flax")
  except (SafetensorError, OSError) as e:
    raise ValueError(f"cannot read safetensors file {fname}: {e}") from None


class _Reader:
  """Keeps each safetensors file open once; reads blocks of a tensor in our layout and dtype."""

  def __init__(self, files: dict[str, str]):
    self.files = files
    self._handles: dict[str, Any] = {}
    self._last: tuple[Any, np.ndarray] | None = None

  def _slice(self, name: str):
    fname = self.files[name]
    if fname not in self._handles:
      self._handles[fname] = _open(fname)
    try:
      return self._handles[fname].get_slice(name)
    except (SafetensorError, OSError) as e:
      raise ValueError(f"cannot read tensor {name!r} from {fname}: {e}") from None

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._slice(name).get_shape())

  def block(self, name: str, index: tuple[slice, ...], transpose: bool, dtype: Any) -> np.ndarray:
    """Block `index` (in our layout) of tensor `name`, read without loading the rest."""
    hf_index = tuple(reversed(index)) if transpose else tuple(index)
    key = (name, _index_key(hf_index), np.dtype(dtype).name)
    if self._last is not None and self._last[0] == key:
      return self._last[1]  # replicas of the same block (e.g. over `data`) are read once
    try:
      # The flax framework is the one that understands bfloat16; keep its arrays on the host.
      with jax.default_device(jax.local_devices(backend="cpu")[0]):
        data = np.asarray(self._slice(name)[hf_index] if hf_index else self._slice(name)[:])
    except (SafetensorError, OSError) as e:
      raise ValueError(f"cannot read tensor {name!r} from {self.files[name]}: {e}") from None
    if transpose:
      data = data.T
    data = np.ascontiguousarray(data.astype(dtype))
    self._last = (key, data)
    return data


def _index_key(index: tuple[slice, ...]) -> tuple[tuple[Any, Any, Any], ...]:
  return tuple((s.start, s.stop, s.step) for s in index)


def _check_tied_head(reader: _Reader, rows: int, chunk: int = 4096) -> None:
  """A tied checkpoint may still store lm_head.weight; it must equal the embedding."""
  emb, head = "model.embed_tokens.weight", "lm_head.weight"
  if reader.shape(head) != reader.shape(emb):
    raise ValueError(f"tie_word_embeddings is true but {head} {reader.shape(head)} has a different "
                     f"shape from {emb} {reader.shape(emb)} ({reader.files[head]})")
  for start in range(0, rows, chunk):
    sl = (slice(start, min(rows, start + chunk)), slice(None))
    if not np.array_equal(reader.block(emb, sl, False, np.float32),
                          reader.block(head, sl, False, np.float32)):
      raise ValueError(f"tie_word_embeddings is true but {head} in {reader.files[head]} differs "
                       f"from {emb}; set tie_word_embeddings=false in config.json to use it")


def load_policy(path: str | os.PathLike, *, mesh: Mesh | None = None,
                allow_unexpected: bool = False, **runtime: Any
                ) -> tuple[qwen2.Qwen2Config, qwen2.Qwen2ForCausalLM]:
  """Loads a HF Qwen2/Qwen2.5 directory; parameters are placed on `mesh` (None: first device).
  `runtime`: `Qwen2Config`'s runtime fields (dtype, param_dtype, remat, ...; float32 by default;
  `config_common.policy_runtime(config)` gives a run's).

  Unknown tensors in the files are an error unless `allow_unexpected` (then they are logged).
  """
  path = os.fspath(path)
  cfg = qwen2.Qwen2Config.from_hf(read_hf_config(path), **runtime)
  graphdef, abstract_state = qwen2.abstract_model(cfg)
  if mesh is None:
    one = SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: one, abstract_state)
  else:
    shardings = sharding.param_shardings(abstract_state, mesh)
  reader = _Reader(_weight_files(path))

  flat = list(nnx.to_flat_state(abstract_state))
  wanted = {_hf_name(p)[0]: p for p, _ in flat}
  missing = sorted(set(wanted) - set(reader.files))
  if missing:
    raise ValueError(f"checkpoint {path} lacks {len(missing)} tensor(s) the config needs: "
                     f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
  extra = sorted(n for n in set(reader.files) - set(wanted) if not _IGNORED_TENSORS.search(n))
  if cfg.tie_word_embeddings and "lm_head.weight" in extra:
    _check_tied_head(reader, cfg.vocab_size)
    extra.remove("lm_head.weight")
  if extra:
    msg = (f"checkpoint {path} has {len(extra)} tensor(s) a Qwen2ForCausalLM with this config "
           f"does not use: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
    if not allow_unexpected:
      raise ValueError(msg + " (pass allow_unexpected=True to ignore them)")
    _log.warning(msg)

  flat_shardings = dict(nnx.to_flat_state(shardings))
  loaded = []
  for p, var in flat:
    name, transpose = _hf_name(p)
    want = tuple(var.get_value().shape)
    got = reader.shape(name)
    ours = tuple(reversed(got)) if transpose else got
    if ours != want:
      expected_hf = tuple(reversed(want)) if transpose else want
      raise ValueError(f"tensor {name} in {reader.files[name]} has shape {got} but the config "
                       f"needs {expected_hf}")
    np_dtype = np.dtype(var.get_value().dtype)
    target = flat_shardings[p].get_value()
    arr = jax.make_array_from_callback(
        want, target, lambda idx, n=name, t=transpose: reader.block(n, idx, t, np_dtype))
    loaded.append((p, var.replace(value=arr)))
  return cfg, nnx.merge(graphdef, nnx.from_flat_state(loaded))


def load_tokenizer(path: str | os.PathLike):
  """The tokenizer (and chat template) stored in a checkpoint directory; never downloads."""
  import transformers  # Heavy import, only needed here.
  path = os.fspath(path)
  if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "vocab.json")):
    raise FileNotFoundError(f"no tokenizer files (tokenizer.json or vocab.json) in {path}")
  return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def stop_token_ids(cfg: qwen2.Qwen2Config, tokenizer: Any) -> list[int]:
  """Every token that ends a completion: the checkpoint's EOS ids and the tokenizer's EOS (chat
  checkpoints name <|im_end|> in one place and <|endoftext|> in the other)."""
  return sorted(set(cfg.eos_ids) | ({tokenizer.eos_token_id} - {None}))


def pad_token_id(tokenizer: Any, stop_ids: list[int]) -> int:
  """The tokenizer's pad id, else the first stop id (pads are masked out everywhere)."""
  return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0])


def _parse_size(size: int | str) -> int:
  if isinstance(size, int):
    return size
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
  if not m:
    raise ValueError(f"bad max_shard_size {size!r}: use bytes or e.g. '500MB', '5GB'")
  return int(float(m.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[m.group(2)])


def _hf_tensors(model: qwen2.Qwen2ForCausalLM) -> Iterator[tuple[str, jax.Array, bool]]:
  for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name, transpose = _hf_name(p)
    yield name, var.get_value(), transpose


def export_policy(cfg: qwen2.Qwen2Config, model: qwen2.Qwen2ForCausalLM,
                  out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                  max_shard_size: int | str = "5GB") -> str:
  """Writes a HF directory `transformers`/vLLM can load; tensors keep the params' dtype. A gs://
  `out_dir` is written locally first, then uploaded (safetensors writes local files)."""
  out_dir = os.fspath(out_dir)
  if fs.is_remote(out_dir):
    with tempfile.TemporaryDirectory() as tmp:
      export_policy(cfg, model, tmp, tokenizer_dir, max_shard_size)
      if jax.process_index() == 0:
        fs.upload_dir(tmp, out_dir)
    return out_dir
  limit = _parse_size(max_shard_size)
  write = jax.process_index() == 0
  if write:
    os.makedirs(out_dir, exist_ok=True)
  # Pass 1: sizes only, to name the shards model-0000i-of-0000N like save_pretrained.
  sizes = [(name, int(np.prod(x.shape)) * x.dtype.itemsize) for name, x, _ in _hf_tensors(model)]
  groups: list[list[str]] = [[]]
  group_bytes = 0
  for name, nbytes in sizes:
    if groups[-1] and group_bytes + nbytes > limit:
      groups.append([])
      group_bytes = 0
    groups[-1].append(name)
    group_bytes += nbytes
  fnames = ([SINGLE_FILE] if len(groups) == 1 else
            [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])
  file_of = {n: fnames[i] for i, g in enumerate(groups) for n in g}

  # Pass 2: gather one file's tensors at a time (all processes take part in the gathers).
  tensors = {name: (x, t) for name, x, t in _hf_tensors(model)}
  for fname, group in zip(fnames, groups):
    arrays = {}
    for name in group:
      x, transpose = tensors[name]
      host = sharding.to_host(x)
      arrays[name] = np.ascontiguousarray(host.T if transpose else host)
    if write:
      save_file(arrays, os.path.join(out_dir, fname), metadata={"format": "pt"})
    del arrays
  if not write:
    return out_dir

  if len(fnames) > 1:
    index = {"metadata": {"total_size": sum(b for _, b in sizes)}, "weight_map": file_of}
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  hf_cfg = cfg.to_hf()
  hf_cfg["dtype"] = hf_cfg["torch_dtype"]  # transformers >= 5 reads `dtype`, older `torch_dtype`.
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": hf_cfg["eos_token_id"],
         "do_sample": True, "temperature": 1.0, "top_p": 1.0}
  with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
    json.dump(gen, f, indent=2, sort_keys=True)
  if tokenizer_dir is not None:
    copied = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer_dir, f))]
    if not copied:
      raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir} holds none of {TOKENIZER_FILES}")
    for f in copied:
      shutil.copyfile(os.path.join(tokenizer_dir, f), os.path.join(out_dir, f))
  return out_dir
