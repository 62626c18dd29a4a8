"""What `configs/*.py` share: the config-file argument parser and the papers' reference settings.

big_vision keeps these in `configs/common.py`; here they are part of the package so that a config file
loaded by path (`--config=configs/qwen7b.py`) imports them the same way from any working directory.

  * `apply_config_arg(c, "micro,method=dots_rr,rl.lr=1e-5", presets)`: the `:arg` of a config file.
  * `dots_reference(variant)`: the DOTS reference script (Qwen2.5-Math on the DeepScaleR subset).
  * `greso_reference(variant)`: the GRESO reference script (DAPO-17k + MATH, selective rollout).

Where each value comes from (file and line of the official scripts) is in docs/REPRODUCTION.md.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import ml_collections

from dots_jax.config_base import base_config


class ConfigError(ValueError):
  """A configuration that cannot run; the message says which key to change and how."""


def all_keys(c: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every dotted leaf key of a config ("rl.lr", "selection.dots.alpha", ...)."""
  out = []
  for k, v in c.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.extend(all_keys(v, f"{prefix}{k}."))
    else:
      out.append(f"{prefix}{k}")
  return out


def unknown_key_message(c: ml_collections.ConfigDict, key: str) -> str:
  """'no key X in the config; did you mean ...' with the closest existing keys."""
  keys = all_keys(c)
  close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
  leaf = key.rsplit(".", 1)[-1]
  close += [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k not in close][:3 - len(close)]
  hint = f"; did you mean {', '.join(close)}?" if close else ""
  return f"no key {key!r} in the config{hint}"


def _parse_value(text: str, current: Any) -> Any:
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ConfigError(f"expected a boolean, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, tuple):
    return tuple(type(current[0])(v) if current else v for v in text.split("+") if v)
  return text


def apply_config_arg(c: ml_collections.ConfigDict, arg: str,
                     presets: dict[str, Callable[[ml_collections.ConfigDict], None]] | None = None
                     ) -> ml_collections.ConfigDict:
  """Applies a config-file argument such as "micro,method=dots_rr,rl.lr=1e-5" in order.

  Bare words name presets of that config file; `key=value` sets a (dotted) key, parsed with the type
  of its current value (tuples take '+'-separated items).
  """
  presets = presets or {}
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    if "=" not in item:
      if item not in presets:
        raise ConfigError(f"unknown config preset {item!r}; known: {sorted(presets)} "
                          "(or key=value, e.g. method=dots_rr)")
      presets[item](c)
      continue
    key, value = (s.strip() for s in item.split("=", 1))
    *path, leaf = key.split(".")
    parent = c
    for p in path:
      if p not in parent or not isinstance(parent[p], ml_collections.ConfigDict):
        raise ConfigError(f"config argument {item!r}: {unknown_key_message(c, key)}")
      parent = parent[p]
    if leaf not in parent:
      raise ConfigError(f"config argument {item!r}: {unknown_key_message(c, key)}")
    try:
      parent[leaf] = _parse_value(value, parent[leaf])
    except ValueError as e:
      raise ConfigError(f"config argument {item!r}: {e}") from None
  return c


def dots_reference(variant: str) -> ml_collections.ConfigDict:
  """The DOTS reference script's settings, shared by the real-model configs (`variant` gives the
  shapes for dry runs; `model.path` must point at the checkpoint for real runs)."""
  c = base_config()
  c.total_steps = 200
  c.data.train = "deepscaler"
  c.rl.batch_questions = 512
  c.selection.dots.ref_size = 256
  c.selection.dots.round_steps = 2
  c.selection.dots.alpha = 0.5
  c.selection.dots.tau = 1e-3
  c.replay.capacity = 512
  c.replay.fresh_fraction = 0.5
  c.model.variant = variant
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = True
  c.data.system_prompt = "qwen_math"
  c.data.chat_template = True
  c.data.max_prompt_tokens = 1024
  c.data.prompt_buckets = (256, 512, 1024)
  c.data.eval_sets = ("math500", "gsm8k_test", "minerva_math", "olympiadbench")
  c.sampling.group_size = 8
  c.sampling.temperature = 0.6
  c.sampling.max_new_tokens = 3072
  c.reward.kind = "math"
  c.reward.workers = 16
  c.rl.lr = 1e-6
  c.rl.schedule = "constant"
  c.rl.weight_decay = 0.01
  c.rl.grad_clip = 1.0
  c.rl.kl_beta = 0.0
  c.eval.every = 10
  c.eval.temperature = 0.0
  c.eval.max_new_tokens = 3072
  c.eval.batch = 256
  c.ckpt.every = 10
  c.ckpt.async_save = True
  return c
