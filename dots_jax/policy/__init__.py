"""The initial policy every run starts from: `policy_path(model_path, recipe)` resolves it (a Hugging Face
directory given by `config.model.path`, or the embedded tiny base, built once by `tiny_base` from the
character `tokenizer` and the `sft` warm-up, then cached)."""

from __future__ import annotations

from typing import Callable

from dots_jax import fs
from dots_jax.config_common import ConfigError
from dots_jax.policy.tiny_base import Recipe, ensure_tiny_base


def policy_path(model_path: str, recipe: Recipe | None, log: Callable[[str], None] = print) -> str:
  """The initial policy's local directory: `model_path` (config.model.path; a gs:// URL is copied
  once into the local cache), or the tiny base of `recipe` (the shipped one, or made now)."""
  if model_path:
    return fs.localize(model_path)
  if recipe is None:
    raise ConfigError("config.model.path is empty and the config has no tiny base recipe (its "
                      "`tiny` section, as configs/tiny.py's): point config.model.path at a Qwen2.5 "
                      "checkpoint")
  return ensure_tiny_base(recipe, log)
