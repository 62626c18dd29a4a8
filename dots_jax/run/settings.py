"""The one reader of a run's ConfigDict: `read(config)` -> `JobSettings`, every part's typed, frozen
settings of its own section. The job (`dots_jax.train`), its dry run (`dots_jax.tools.plan`) and the
other entry points read a config here, once, and hand each part what is its own; no function below
this layer takes the whole config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from jax.sharding import Mesh

from dots_jax import fs
from dots_jax.config_common import policy_runtime, section
from dots_jax.data.settings import DataSettings, SyntheticSettings
from dots_jax.difficulty.offline import FitSettings, StageSettings
from dots_jax.difficulty.tracker import TrackerSettings
from dots_jax.evaluate.benchmarks import EvalSettings
from dots_jax.methods import get_method
from dots_jax.policy.tiny_base import Recipe, TinySettings
from dots_jax.rewards import RewardSettings
from dots_jax.rl.replay import ReplaySettings
from dots_jax.rl.update import OptimizerSettings, UpdateConfig
from dots_jax.rollout.generator import Decoding, EngineSettings
from dots_jax.selection.base import RolloutRounds
from dots_jax.selection.settings import (DotsSettings, GresoSettings, MoppsSettings,
                                         SelectionSettings, TrackSettings)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """`config.model`: the checkpoint (or a shape-only variant) and the runtime fields every load of
  the policy takes (`hf_io.load_policy(path, **runtime)`)."""

  path: str
  variant: str
  runtime: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GuardSettings:
  """`config.guard`: the divergence guard's bounds (0 turns one off)."""

  max_update_ratio: float
  max_entropy_rise: float


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
  every: int
  keep: int
  async_save: bool
  export_hf: bool
  lock_lease_s: float


@dataclasses.dataclass(frozen=True)
class LogSettings:
  every: int
  tensorboard: bool
  samples_every: int
  samples: int
  wandb_project: str


@dataclasses.dataclass(frozen=True)
class JobSettings:
  """Every part of the job's settings, each typed and frozen (config_base.py says what each key does)."""

  seed: int
  method: str
  total_steps: int
  allow_config_change: bool
  compilation_cache: str
  mesh: dict[str, int]
  model: ModelSettings
  tiny: Recipe | None  # the tiny base's recipe, where the config has one (configs/tiny.py)
  data: DataSettings
  group_size: int
  batch_questions: int
  decoding: Decoding  # training rollouts
  engine: EngineSettings
  reward: RewardSettings
  update: UpdateConfig
  optimizer: OptimizerSettings
  adv_norm: str
  memory_budget_gib: float
  guard: GuardSettings
  replay: ReplaySettings | None  # None: the method has no rollout replay
  selection: SelectionSettings
  eval: EvalSettings
  ckpt: CheckpointSettings
  log: LogSettings
  # The DOTS stage's settings but the directories a run resolves (`dots_stage`): policy_dir "",
  # backbone_dir the configured selection.dots.backbone.
  stage: StageSettings

  @property
  def total_len(self) -> int:
    """Tokens of one training row: the longest prompt bucket + the completion budget."""
    return max(self.data.prompt_buckets) + self.decoding.max_new_tokens


def dots_stage(s: JobSettings, policy_dir: str, mesh: Mesh | None = None) -> StageSettings:
  """The DOTS stage's settings for a run whose initial policy is `policy_dir`, its passes laid out
  on `mesh`: the backbone is selection.dots.backbone (a gs:// URL copied once into the local
  cache), else that policy."""
  backbone = fs.localize(s.stage.backbone_dir) if s.stage.backbone_dir else policy_dir
  return dataclasses.replace(s.stage, policy_dir=policy_dir, backbone_dir=backbone, mesh=mesh)


def data_settings(data: ml_collections.ConfigDict) -> DataSettings:
  """`config.data`, typed."""
  return section(DataSettings, data, synthetic=section(SyntheticSettings, data.synthetic))


def read(config: ml_collections.ConfigDict) -> JobSettings:
  """The job's settings from its config (the one place that reads the whole ConfigDict)."""
  s, rl, sel = config.sampling, config.rl, config.selection
  data = data_settings(config.data)
  tiny = None
  if "tiny" in config:
    tiny = Recipe(tiny=section(TinySettings, config.tiny), synthetic=data.synthetic,
                  system_prompt=data.system_prompt, chat_template=data.chat_template,
                  max_prompt_tokens=data.max_prompt_tokens, max_new_tokens=s.max_new_tokens)
  method = get_method(config.method)
  dots = section(DotsSettings, sel.dots)
  replay = None
  if method.replay:
    r = config.replay
    # The first steps train on fresh groups only: -1 is the official first round of DOTS.
    replay = ReplaySettings(r.capacity, r.fresh_fraction,
                            r.warmup_steps if r.warmup_steps >= 0 else dots.round_steps)
  t = sel.track
  selection = SelectionSettings(
      dots=dots,
      track=TrackSettings(tracker=section(TrackerSettings, t), ref_size=t.ref_size,
                          ref_mode=t.ref_mode, train_refs=t.train_refs, draw=t.draw,
                          tau=t.tau, floor=t.floor),
      greso=section(GresoSettings, sel.greso), rounds=section(RolloutRounds, sel.rounds),
      mopps=section(MoppsSettings, sel.mopps))
  d = sel.dots
  runtime = policy_runtime(config)
  decoding = Decoding(s.temperature, s.top_p, s.top_k, s.max_new_tokens)
  engine = EngineSettings(slots=s.slots, kv_budget_gib=s.kv_budget_gib,
                          steps_per_call=s.engine_steps, windows=s.engine_windows,
                          prefill_prompts=s.prefill_prompts)
  reward = section(RewardSettings, config.reward)
  stage = StageSettings(
      policy_dir="", backbone_dir=d.backbone, estimator_path=d.estimator_path,
      embed_path=d.embed_path, embed_batch=d.embed_batch, embed_max_len=d.embed_max_len,
      embed_dtype=d.embed_dtype, width=d.width, layers=d.layers, dropout=d.dropout, score_tau=d.score_tau,
      fit=section(FitSettings, d.fit), seed=config.seed, data=data, decoding=decoding,
      engine=engine, reward=reward, runtime=runtime)
  update = UpdateConfig(
      clip_eps_low=rl.clip_eps_low, clip_eps_high=rl.clip_eps_high, loss_agg=rl.loss_agg,
      kl_beta=rl.kl_beta, entropy_coef=rl.entropy_coef, mini_batches=rl.mini_batches,
      ppo_epochs=rl.ppo_epochs, micro_batch=rl.micro_batch, temperature=s.temperature,
      shuffle=rl.shuffle, logits_chunk=rl.logits_chunk, tis_cap=rl.behavior_is_cap)
  return JobSettings(
      seed=config.seed, method=config.method, total_steps=config.total_steps,
      allow_config_change=config.allow_config_change, compilation_cache=config.compilation_cache,
      mesh={a: int(config.mesh[a]) for a in ("data", "fsdp", "tensor")},
      model=ModelSettings(config.model.path, config.model.variant, runtime),
      tiny=tiny, data=data, group_size=s.group_size, batch_questions=rl.batch_questions,
      decoding=decoding, engine=engine, reward=reward, update=update,
      optimizer=section(OptimizerSettings, rl), adv_norm=rl.adv_norm,
      memory_budget_gib=rl.memory_budget_gib, guard=section(GuardSettings, config.guard),
      replay=replay, selection=selection, eval=section(EvalSettings, config.eval),
      ckpt=section(CheckpointSettings, config.ckpt), log=section(LogSettings, config.log),
      stage=stage)
