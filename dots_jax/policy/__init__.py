"""The initial policy every run starts from: `policy_path(config)` resolves it (a Hugging Face
directory given by `config.model.path`, or the embedded tiny base, built once by `tiny_base` from the
character `tokenizer` and the `sft` warm-up, then cached)."""

from __future__ import annotations

from typing import Any, Callable

from dots_jax import fs
from dots_jax.policy.tiny_base import ensure_tiny_base


def policy_path(config: Any, log: Callable[[str], None] = print) -> str:
  """The initial policy's local directory: config.model.path (a gs:// URL copied once into the
  local cache), or the cached tiny base (made now if missing)."""
  if config.model.path:
    return fs.localize(config.model.path)
  return ensure_tiny_base(config, log)
