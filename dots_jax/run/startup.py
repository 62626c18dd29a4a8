"""Start-up checks: fail before any expensive work, in one line that says what to change."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from dots_jax import fs
from dots_jax.config_common import ConfigError
from dots_jax.methods import get_method
from dots_jax.model.qwen2 import remat_policy
from dots_jax.model.sharding import data_parallel_size
from dots_jax.rl.replay import ReplayBuffer
from dots_jax.run import settings


def validate_config(config: ml_collections.ConfigDict,
                    mesh_shape: Mapping[str, int] | None = None, *, planning: bool = False
                    ) -> None:
  """Raises ConfigError for settings that cannot work; `mesh_shape` adds the divisibility checks.
  `planning`: a dry run, which reads shapes only (no model path or data needed)."""
  try:
    get_method(config.method)
    s = settings.read(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.total_steps < 1:
    raise ConfigError(f"config.total_steps={config.total_steps} must be >= 1")
  if config.rl.batch_questions < 1 or config.sampling.group_size < 2:
    raise ConfigError("config.rl.batch_questions must be >= 1 and config.sampling.group_size >= 2 "
                      "(GRPO advantages need at least two samples per question)")
  try:  # the same checks the update and the replay buffer make, before any expensive work
    s.update.split(s.batch_questions * s.group_size)
    if s.replay is not None:
      ReplayBuffer.build(s.replay, s.group_size, total_len=1, batch_groups=s.batch_questions)
    remat_policy(config.model.remat_policy)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if not (math.isfinite(config.rl.lr) and config.rl.lr > 0):
    raise ConfigError(f"config.rl.lr={config.rl.lr} must be a finite number > 0")
  if not config.sampling.temperature > 0:
    raise ConfigError(f"config.sampling.temperature={config.sampling.temperature}: training samples "
                      "must be drawn at a temperature > 0 (0 is greedy decoding: every group would "
                      "repeat one answer and log-probs at temperature 0 are undefined)")
  if config.rl.behavior_is_cap < 0 or 0 < config.rl.behavior_is_cap < 1:
    raise ConfigError(f"config.rl.behavior_is_cap={config.rl.behavior_is_cap} must be 0 (off) or "
                      ">= 1 (a cap below 1 would down-weight every token)")
  if config.model.activation_dtype not in ("float32", "bfloat16", "float16"):
    raise ConfigError(f"config.model.activation_dtype={config.model.activation_dtype!r}: expected "
                      "'float32', 'bfloat16' or 'float16'")
  if config.rl.mu_dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"config.rl.mu_dtype={config.rl.mu_dtype!r}: expected 'float32' or "
                      "'bfloat16'")
  if config.model.attn_chunk < 0:
    raise ConfigError(f"config.model.attn_chunk={config.model.attn_chunk} must be >= 0 (0 = off)")
  if config.model.path:
    check_model_path(config.model.path)
  elif config.data.train != "synthetic" and not planning:
    raise ConfigError(f"config.model.path is empty; data.train={config.data.train!r} needs a real "
                      "Qwen2.5 checkpoint: pass --config.model.path=/path/to/hf_dir (or plan with "
                      "config.model.variant shapes: python -m dots_jax.tools.plan)")
  if mesh_shape is not None:
    dp = data_parallel_size(mesh_shape)
    if config.rl.batch_questions % dp:
      raise ConfigError(
          f"config.rl.batch_questions={config.rl.batch_questions} is not divisible by the "
          f"{dp} data-parallel shards of mesh {dict(mesh_shape)} (data x fsdp); use a multiple of "
          f"{dp} or change config.mesh")


def check_model_path(path: str) -> None:
  """A Hugging Face Qwen2/Qwen2.5 directory: local, or a gs:// URL (copied to the local cache when
  the job loads it, `fs.localize`)."""
  try:
    if not fs.exists(path) or fs.isfile(path):
      raise ConfigError(f"config.model.path={path!r} is not a directory; point it at a Hugging "
                        "Face checkpoint (config.json + *.safetensors + tokenizer files)")
    cfg_file = fs.join(path, "config.json")
    if not fs.isfile(cfg_file):
      raise ConfigError(f"config.model.path={path!r} has no config.json; it must be a Hugging "
                        "Face Qwen2/Qwen2.5 checkpoint directory")
    hf = json.loads(fs.read_text(cfg_file))
  except ConfigError:
    raise
  except Exception as e:  # a URL scheme without its file system, no credentials, ...
    raise ConfigError(f"config.model.path={path!r} cannot be read: {type(e).__name__}: {e} "
                      "(gs:// needs pip install -e \".[gcs]\" and credentials)") from None
  if hf.get("model_type") != "qwen2" and "Qwen2ForCausalLM" not in hf.get("architectures", []):
    raise ConfigError(
        f"config.model.path={path!r} holds model_type={hf.get('model_type')!r} "
        f"(architectures {hf.get('architectures')}); this trainer implements Qwen2/Qwen2.5 "
        "(model_type 'qwen2') only: point config.model.path at a Qwen2.5 checkpoint")


def check_workdir(workdir: str) -> None:
  """An existing workdir must be one of ours (resume) or empty; a file is refused."""
  if not workdir:
    raise ConfigError("--workdir is required: checkpoints, metrics.jsonl and summary.json go there "
                      "(an existing workdir resumes)")
  try:
    is_file = fs.isfile(workdir)
  except Exception as e:  # a URL scheme without its file system, no credentials, ...
    raise ConfigError(f"--workdir={workdir!r} cannot be reached: {type(e).__name__}: {e} (gs:// "
                      "needs pip install -e \".[gcs]\" and credentials)") from None
  if is_file:
    raise ConfigError(f"--workdir={workdir!r} exists and is not a directory")


def check_model_mesh(cfg: Any, sizes: Mapping[str, int]) -> None:
  """The tensor axis must divide what it shards (the attention heads and the MLP width); otherwise
  the sharding rules leave those weights whole on every device (`sharding.param_spec`)."""
  t = int(sizes.get("tensor", 1))
  parts = {"attention heads": cfg.num_attention_heads, "MLP width": cfg.intermediate_size}
  bad = [f"{n} {name}" for name, n in parts.items() if n % t]
  if t > 1 and bad:
    raise ConfigError(f"config.mesh.tensor={t} does not divide the model's {', '.join(bad)}; use a "
                      "tensor size that divides them (or 1), and data/fsdp for the other devices")


def enable_compilation_cache(setting: str, workdir: str) -> str:
  """Turns on JAX's persistent compilation cache where `setting` (config.compilation_cache) says:
  "workdir" = <workdir>/compile_cache, "" = off, else that directory (unless a cache directory is
  already configured, e.g. by JAX_COMPILATION_CACHE_DIR); returns the directory."""
  current = jax.config.jax_compilation_cache_dir
  if current or not setting:
    return current or ""
  path = fs.join(fs.absolute(workdir), "compile_cache") if setting == "workdir" else setting
  jax.config.update("jax_compilation_cache_dir", path)
  return path
