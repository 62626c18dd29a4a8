"""`config.selection`'s settings, typed (config_base.py says what each does; `dots_jax.run.settings`
builds them from the config)."""

from __future__ import annotations

import dataclasses

from dots_jax.difficulty.tracker import TrackerSettings
from dots_jax.selection.base import RolloutRounds


@dataclasses.dataclass(frozen=True)
class DotsSettings:
  """DOTS's rounds: `ref_size` references every `round_steps` steps, softmax(-|p - alpha| / tau)
  over the predictions (`chunk` questions per jitted call), optional online fine-tuning."""

  ref_size: int
  round_steps: int
  alpha: float
  tau: float
  chunk: int
  online_finetune: bool
  online_steps: int
  online_lr: float
  online_batch: int


@dataclasses.dataclass(frozen=True)
class TrackSettings:
  """The tracking model's (`tracker`) and its source's references and draw (`selection.track`)."""

  tracker: TrackerSettings
  ref_size: int
  ref_mode: str
  train_refs: bool
  draw: str
  tau: float
  floor: float


@dataclasses.dataclass(frozen=True)
class GresoSettings:
  alpha: float
  p_init: float
  p_step: float
  p_min: float
  p_max: float
  min_keep: float


@dataclasses.dataclass(frozen=True)
class MoppsSettings:
  prior_a: float
  prior_b: float
  forget: float
  alpha: float
  candidate_factor: int


@dataclasses.dataclass(frozen=True)
class SelectionSettings:
  dots: DotsSettings
  track: TrackSettings
  greso: GresoSettings
  rounds: RolloutRounds
  mopps: MoppsSettings
