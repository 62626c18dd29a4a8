"""`config.data`'s settings, typed (what the data readers, the prompt builder and the synthetic task
read; `dots_jax.run.settings` builds them from the config)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
  """`config.data.synthetic`: the arithmetic task's seed, split sizes, families and their weights."""

  seed: int
  train_size: int
  heldout_size: int
  families: tuple[str, ...]
  pool_weights: tuple[float, ...]
  sft_weights: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """`config.data` (config_base.py says what each does)."""

  train: str
  problem_field: str
  answer_field: str
  id_field: str
  manual_dir: str
  shared_dir: str
  eval_sets: tuple[str, ...]
  system_prompt: str
  chat_template: bool
  user_template: str
  max_prompt_tokens: int
  prompt_overflow: str
  prompt_buckets: tuple[int, ...]
  skip_bad_rows: bool
  prepared_dir: str
  synthetic: SyntheticSettings
