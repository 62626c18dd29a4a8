"""What `configs/*.py` share: the config-file argument parser and the papers' reference settings.

big_vision keeps these in `configs/common.py`; here they are part of the package so that a config file
loaded by path (`--config=configs/qwen7b.py`) imports them the same way from any working directory.

  * `apply_config_arg(c, "micro,method=dots_rr,rl.lr=1e-5", presets)`: the `:arg` of a config file.
  * `dots_reference(variant)`: the DOTS reference script (Qwen2.5-Math on the DeepScaleR subset).
  * `greso_reference(variant)`: the GRESO reference script (DAPO-17k + MATH, selective rollout).

Where each value comes from (file and line of the official scripts) is in docs/REPRODUCTION.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, Callable, TypeVar

import ml_collections

from dots_jax.config_base import base_config


T = TypeVar("T")


class UserError(Exception):
  """Something the user can fix (a setting, a file, the disk): the commands print its message as
  one line, without a traceback (`python -m dots_jax.main --debug` shows it)."""


class ConfigError(UserError, ValueError):
  """A configuration that cannot run; the message says which key to change and how."""


def section(cls: type[T], node: Any, **given: Any) -> T:
  """The frozen settings dataclass `cls` of one config section: every field read from `node` by
  name (sequences as tuples), those in `given` as given (nested sections, derived values). A field
  the section lacks is a ConfigError naming it."""
  values = {}
  for f in dataclasses.fields(cls):
    if f.name in given:
      values[f.name] = given[f.name]
      continue
    if f.name not in node:
      raise ConfigError(f"the config has no key {f.name!r} for {cls.__name__} (a config file that "
                        "does not start from config_base.base_config()?)")
    v = node[f.name]
    values[f.name] = tuple(v) if isinstance(v, list) else v
  return cls(**values)


def as_json(settings: Any) -> str:
  """A settings dataclass as the sorted JSON its config section's `to_json(sort_keys=True)` gives
  (fingerprints keep their values)."""
  return json.dumps(dataclasses.asdict(settings), sort_keys=True)


def policy_runtime(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The runtime fields of `Qwen2Config` that config.model sets (dtypes, remat, attention blocks,
  scanned layers), for `hf_io.load_policy` and the planner."""
  m = config.model
  return dict(dtype=m.dtype, param_dtype=m.param_dtype, activation_dtype=m.activation_dtype,
              remat=m.remat, remat_policy=m.remat_policy, attn_chunk=m.attn_chunk,
              scan_layers=m.scan_layers)


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
  leaf = key.rsplit(".", 1)[-1]
  section = key.rsplit(".", 1)[0] + "." if "." in key else ""
  # An abbreviation of the typed name in the same section (rl.learning_rate -> rl.lr) comes first.
  initials = "".join(w[0] for w in leaf.split("_") if w)
  close = [k for k in keys if k.startswith(section) and k.rsplit(".", 1)[-1] == initials]
  close += [k for k in difflib.get_close_matches(key, keys, n=3, cutoff=0.5) if k not in close]
  close = close[:3]
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


def _verl_run(variant: str) -> ml_collections.ConfigDict:
  """What both reference scripts share: a Qwen2.5 shape in bfloat16 with float32 master weights and
  remat, verl's actor defaults (AdamW lr 1e-6 constant, weight decay 0.01, grad clip 1.0, clip
  ratio 0.2, one PPO epoch over mini-batches in order), G = 8, math rewards, async checkpoints;
  scanned decoder blocks."""
  c = base_config()
  c.model.variant = variant
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = True
  c.rl.shuffle = False
  c.rl.ppo_epochs = 1
  c.rl.lr = 1e-6
  c.rl.schedule = "constant"
  c.rl.warmup_steps = 0
  c.rl.weight_decay = 0.01
  c.rl.grad_clip = 1.0
  c.rl.clip_eps_low = c.rl.clip_eps_high = 0.2
  c.rl.kl_beta = 0.0
  c.rl.logits_chunk = 256  # never hold [rows, T, 151936] float32 logits
  c.model.attn_chunk = 512  # never hold [rows, heads, T, T] float32 attention scores
  c.model.scan_layers = True  # one block's program at 28 layers: faster compiles (docs/MEMORY.md)
  c.sampling.engine_steps = 16
  # Without a bound the first prefill takes slots / G + 1 prompts (220 of 1,024 tokens for the 1.5B
  # configs) on every device: 87 GiB compiled for 8x H100 (docs/MEMORY.md).
  c.sampling.prefill_prompts = 64
  c.data.chat_template = True
  c.sampling.group_size = 8
  c.reward.kind = "math"
  c.reward.workers = 16
  c.eval.batch = 256
  c.ckpt.async_save = True
  return c


def slice_preset(*, mesh: dict[str, int], micro_batch: int, kv_budget_gib: float,
                 bfloat16_activations: bool = False, bfloat16_mu: bool = False
                 ) -> Callable[[ml_collections.ConfigDict], None]:
  """A config-file preset for a rented TPU slice (`configs/qwen7b.py:v6e_8`): the mesh over its
  chips, the update's micro-batch, the rollout's per-chip KV-cache budget and, where the slice
  needs them, bfloat16 activations and AdamW first moment; each preset's compiled figures and the
  command that checks it are in docs/MEMORY.md."""

  def apply(c: ml_collections.ConfigDict) -> None:
    c.mesh.update(mesh)
    c.rl.micro_batch = micro_batch
    c.sampling.kv_budget_gib = kv_budget_gib
    if bfloat16_activations:
      c.model.activation_dtype = "bfloat16"
    if bfloat16_mu:
      c.rl.mu_dtype = "bfloat16"

  return apply


def dots_reference(variant: str) -> ml_collections.ConfigDict:
  """The DOTS reference script (`final_ds_teacher_replay.sh` + its ray_trainer.py; values and line
  numbers in docs/REPRODUCTION.md). `variant` gives the shapes for dry runs; real runs set
  `model.path` (the policy) and `selection.dots.backbone` (the embedding model: the official script
  embeds with Qwen2.5-Math-1.5B-Instruct, not the policy)."""
  c = _verl_run(variant)
  # 30 epochs x mu = 2 steps; each step 512 questions x n = 8, in 8 PPO mini-batches of 64
  # questions taken in order (verl's batch.split, actor.shuffle False). use_kl_loss=True with
  # kl_loss_coef=0: no KL term.
  c.total_steps = 60
  c.rl.batch_questions = 512
  c.rl.mini_batches = 8
  c.rl.entropy_coef = 0.0
  c.data.train = "deepscaler_10240"
  c.data.system_prompt = "dots"
  c.data.max_prompt_tokens = 1024
  c.data.prompt_overflow = "error"  # the script's truncation='error'
  c.data.prompt_buckets = (256, 512, 1024)
  c.data.eval_sets = ("math500", "gsm8k_test", "minerva_math", "olympiadbench", "aime24", "amc23")
  c.sampling.temperature = 0.6
  c.sampling.max_new_tokens = 3072  # Math models; 4096 for the others (configs/qwen3b.py)
  # DOTS: K = 256 references re-rolled every mu = 2 steps, selection softmax(-|p - 0.5| / 1e-3).
  d = c.selection.dots
  d.ref_size = 256
  d.round_steps = 2
  d.alpha = 0.5
  d.tau = 1e-3
  d.embed_max_len = 0  # no truncation below the backbone's context
  d.width = 896  # teacher_model.hidden_size
  d.layers = 3
  d.estimator_path = "auto"
  # The estimator fit (run_train.sh): K = 256, batch 256, 20 epochs, lr 1e-3 with warmup then
  # linear decay; labels from several policies belong in fit.label_policies.
  d.fit.update(ref_size=256, batch=256, epochs=20, lr=1e-3, warmup=100)
  # Rollout replay: buffer 512 groups, sigma = 0.5 fresh, random replay; the first mu steps fresh only.
  c.replay.capacity = 512
  c.replay.fresh_fraction = 0.5
  c.replay.warmup_steps = -1
  # The script's validation settings (val_temperature 0.6, n_val 8); it sets test_freq=1e7, so the
  # official run itself never evaluates during training: we evaluate every 10 steps.
  c.eval.every = 10
  c.eval.temperature = 0.6
  c.eval.k = 8
  c.eval.max_new_tokens = 3072
  c.ckpt.every = 10
  return c


def greso_reference(variant: str) -> ml_collections.ConfigDict:
  """The GRESO reference script (`train-scripts/math_qwen_1_5b_dm_greso.sh` + its ray_trainer.py and
  ppo_trainer.yaml; docs/REPRODUCTION.md): DAPO-17k + MATH, 256 questions trained of a first round
  of 384, mini-batch 64, temperature 1, entropy bonus 0.001, reward 1 / 0.1 / 0."""
  c = _verl_run(variant)
  c.method = "greso"
  c.total_steps = 1000  # trainer.max_steps=1001
  c.rl.batch_questions = 256  # real_train_batch_size
  c.rl.mini_batches = 4  # ppo_mini_batch_size 64 questions
  c.rl.entropy_coef = 0.001  # ppo_trainer.yaml actor.entropy_coeff; use_kl_loss=False
  c.data.train = "dapo_math_17k+math_train"
  c.data.system_prompt = "none"
  c.data.user_template = "greso"
  c.data.max_prompt_tokens = 1536
  c.data.prompt_buckets = (256, 512, 1024, 1536)
  c.data.eval_sets = ("math500", "amc23", "aime24", "minerva_math", "olympiadbench")
  c.sampling.temperature = 1.0
  c.sampling.max_new_tokens = 2560
  c.reward.format_score = 0.1  # latex_math.compute_score(format_score=0.1)
  # sampling_batch_size 384 = 1.5 x 256, adaptive later rounds with a floor of 64 = 0.25 x 256.
  c.selection.rounds.update(first=1.5, floor=0.25, slack=1.25)
  c.selection.greso.update(alpha=0.25, p_init=0.5, p_step=0.01, p_min=0.05, p_max=0.95)
  # Validation: n=4 samples, top_p 0.7, temperature 1 (val_kwargs), every 50 steps (test_freq).
  c.eval.every = 50
  c.eval.k = 4
  c.eval.temperature = 1.0
  c.eval.top_p = 0.7
  c.eval.max_new_tokens = 2560
  c.ckpt.every = 40  # save_freq
  return c
