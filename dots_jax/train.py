"""The RL main loop: select -> rollout -> reward -> (replay) -> update -> log -> evaluate -> checkpoint.

`train_and_evaluate(config, workdir)` is the whole job; `dots_jax.main` only parses flags. Sections
follow the order a reader needs: setup, mesh, data, policy/sampler, shard, step functions, restore,
loop. Every process runs the same program on the same global batch (the selection strategy is a pure
function of (seed, step, its state), so all processes agree); only process 0 writes logs and
checkpoint metadata.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from dots_jax.config_base import base_config

# method -> (selection strategy family, rollout replay on). The strategies live in dots_jax.selection.
METHODS: dict[str, bool] = {
    "grpo": False,  # uniform sampling
    "dots": False,  # difficulty-targeted online selection
    "dots_rr": True,  # DOTS + rollout replay
    "greso": False,  # pre-rollout filtering of predicted zero-variance questions
    "ds": False,  # dynamic sampling: over-sample, drop zero-variance groups
    "mopps": False,  # Beta-posterior difficulty bandit
    "dots_rr_greso": True,
}


class ConfigError(ValueError):
  """A configuration that cannot run; the message says which key to change and how."""


# ---------------------------------------------------------------------------------------------------
# Config helpers (used by configs/*.py).


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
    key, value = item.split("=", 1)
    node, *path = key.strip().split(".")
    parent, leaf = (c, node) if not path else (c, None)
    if path:
      parent = c[node]
      for p in path[:-1]:
        parent = parent[p]
      leaf = path[-1]
    if leaf not in parent:
      raise ConfigError(f"config argument {item!r}: no key {key!r} in the config")
    parent[leaf] = _parse_value(value.strip(), parent[leaf])
  return c


def real_model_config(variant: str, model_path: str) -> ml_collections.ConfigDict:
  """The DOTS reference script's settings (Qwen2.5-Math on DeepScaleR), shared by the real-model
  configs: 512 questions x G=8 per step, lr 1e-6 constant, AdamW wd 0.01, clip 1.0, temperature 0.6,
  3072 response tokens; DOTS K=256 references re-predicted every mu=2 steps, alpha=0.5, tau=1e-3;
  replay buffer of 512 groups with sigma=0.5 of each batch fresh."""
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
  c.model.path = model_path  # a local Hugging Face directory; pass --config.model.path=...
  c.model.variant = variant  # shapes for --config.dry_run=True without weights
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


# ---------------------------------------------------------------------------------------------------
# Start-up checks: fail before any expensive work, saying what to change.


def data_parallel_size(mesh_shape: dict[str, int]) -> int:
  return int(mesh_shape["data"] * mesh_shape["fsdp"])


def validate_config(config: ml_collections.ConfigDict, mesh_shape: dict[str, int] | None = None
                    ) -> None:
  """Raises ConfigError for settings that cannot work; `mesh_shape` adds the divisibility checks."""
  if config.method not in METHODS:
    raise ConfigError(f"config.method={config.method!r} is unknown; use one of {sorted(METHODS)} "
                      "(e.g. --config.method=dots_rr or configs/<name>.py:method=dots_rr)")
  if config.total_steps < 1:
    raise ConfigError(f"config.total_steps={config.total_steps} must be >= 1")
  if config.rl.batch_questions < 1 or config.sampling.group_size < 2:
    raise ConfigError("config.rl.batch_questions must be >= 1 and config.sampling.group_size >= 2 "
                      "(GRPO advantages need at least two samples per question)")
  if config.replay.enabled and not METHODS[config.method]:
    raise ConfigError(f"config.replay.enabled=True but method {config.method!r} has no replay; use "
                      "a *_rr method (dots_rr, dots_rr_greso)")
  if config.model.path:
    _check_model_path(config.model.path)
  elif config.data.train != "synthetic" and not config.dry_run:
    raise ConfigError(f"config.model.path is empty; data.train={config.data.train!r} needs a real "
                      "Qwen2.5 checkpoint: pass --config.model.path=/path/to/hf_dir (or set "
                      "--config.dry_run=True to plan with config.model.variant shapes)")
  if mesh_shape is not None:
    dp = data_parallel_size(mesh_shape)
    if config.rl.batch_questions % dp:
      raise ConfigError(
          f"config.rl.batch_questions={config.rl.batch_questions} is not divisible by the "
          f"{dp} data-parallel shards of mesh {mesh_shape} (data x fsdp); use a multiple of {dp} "
          "or change config.mesh")


def _check_model_path(path: str) -> None:
  if path.startswith("gs://"):
    return
  if not os.path.isdir(path):
    raise ConfigError(f"config.model.path={path!r} is not a directory; point it at a local Hugging "
                      "Face checkpoint (config.json + *.safetensors + tokenizer files)")
  cfg_file = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_file):
    raise ConfigError(f"config.model.path={path!r} has no config.json; it must be a Hugging Face "
                      "Qwen2/Qwen2.5 checkpoint directory")
  with open(cfg_file) as f:
    hf = json.load(f)
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
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir!r} exists and is not a directory")


# ---------------------------------------------------------------------------------------------------
# Pieces of the loop.


def log_line(text: str) -> None:
  """Progress output of the lead process (stdout, flushed: runs are watched live)."""
  if jax.process_index() == 0:
    print(text, flush=True)


def banner(text: str) -> None:
  log_line(f"== {text}")


def resolve_model_path(config: ml_collections.ConfigDict) -> str:
  """config.model.path, or the cached tiny base policy (made now if missing) when it is empty."""
  if config.model.path:
    return config.model.path
  from dots_jax.tiny.base import ensure_tiny_base
  return ensure_tiny_base(config, log=log_line)


class PromptTable:
  """Prompt token ids of a question set, built once (prompts are reused every epoch).

  Questions whose prompt overflows config.data.max_prompt_tokens are dropped or truncated per
  config.data.prompt_overflow; `question(i)` maps the i-th kept prompt (what selection strategies and
  the replay buffer index) back to its Question.
  """

  def __init__(self, tokenizer: Any, data: ml_collections.ConfigDict, questions: Any):
    from dots_jax.data.prompts import build_prompts
    self.questions = questions
    self.buckets = tuple(sorted(data.prompt_buckets))
    self.pad_id = int(tokenizer.pad_token_id)
    if self.buckets[-1] < data.max_prompt_tokens:
      raise ConfigError(f"config.data.prompt_buckets={self.buckets} must reach "
                        f"config.data.max_prompt_tokens={data.max_prompt_tokens}")
    problems = [questions[i].problem for i in range(len(questions))]
    built = build_prompts(tokenizer, problems, data)
    if not built.kept:
      raise ConfigError(f"{questions.name}: every prompt exceeds config.data.max_prompt_tokens="
                        f"{data.max_prompt_tokens}")
    self.tokens, self.kept, self.counts = built.tokens, np.asarray(built.kept), built.counts

  def __len__(self) -> int:
    return len(self.kept)

  def question(self, i: int) -> Any:
    return self.questions[int(self.kept[int(i)])]

  def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from dots_jax.sampling.sampler import pad_prompts
    return pad_prompts([self.tokens[int(i)] for i in indices], self.buckets, self.pad_id)


def rollout_quantum(batch_questions: int, dp: int) -> int:
  """Rollout calls are padded to a multiple of this: it splits over the data-parallel shards and
  keeps the number of distinct shapes (one compilation each) small when strategies roll out
  variable-size rounds (reference sets, GRESO, dynamic sampling)."""
  return math.lcm(dp, max(1, batch_questions // 4))


def pad_to_multiple(indices: np.ndarray, multiple: int) -> np.ndarray:
  """Repeats the last index up to a multiple of `multiple` (extra rows are dropped after rollout)."""
  extra = (-len(indices)) % multiple
  return np.concatenate([indices, np.repeat(indices[-1:], extra)]) if extra else indices


@dataclasses.dataclass
class Progress:
  """Whole-run counters kept in checkpoints (wall-clock excludes time before a restart's restore)."""

  rollouts: int = 0  # completions generated (training + reference + evaluation excluded)
  seconds: float = 0.0  # training wall-clock (rollout + selection + update), evaluation excluded
  last_reward: float = float("nan")
  last_eval: float = float("nan")

  def state_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def slice_rows(sample: Any, n: int) -> Any:
  """The first n rows of a SampleOutput (drops the rows added by `pad_to_multiple`)."""
  fields = {f.name: getattr(sample, f.name) for f in dataclasses.fields(sample)}
  return type(sample)(**{k: (v[:n] if isinstance(v, np.ndarray) else v) for k, v in fields.items()})


def decode_completions(tokenizer: Any, sample: Any) -> list[str]:
  rows = [t[m > 0].tolist() for t, m in zip(sample.tokens_NxR, sample.mask_NxR)]
  return tokenizer.batch_decode(rows, skip_special_tokens=True)


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


# ---------------------------------------------------------------------------------------------------
# Dry run: shapes only.


def dry_run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Prints the plan (mesh, per-device memory, steps, rollouts) without loading weights or data."""
  from dots_jax.model import hf_io, qwen2, sharding, variants
  from dots_jax.tools.plan import plan

  if config.model.variant:
    cfg = variants.get_variant(config.model.variant, dtype=config.model.dtype,
                               param_dtype=config.model.param_dtype, remat=config.model.remat)
    source = f"variant {config.model.variant}"
  elif config.model.path:
    cfg = qwen2.Qwen2Config.from_hf(hf_io.read_hf_config(config.model.path),
                                    dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                                    remat=config.model.remat)
    source = config.model.path
  else:
    from dots_jax.tiny.base import tiny_model_config
    from dots_jax.tiny.tokenizer import make_char_tokenizer
    tok = make_char_tokenizer()
    cfg = tiny_model_config(config.tiny, len(tok), tok.eos_token_id, tok.bos_token_id)
    source = "tiny base policy (made on first real run)"
  mesh_cfg = {a: config.mesh[a] for a in sharding.AXES}
  # Plan for the mesh the config describes: explicit sizes need not exist here (a 7B pod plan on
  # a laptop); a -1 axis takes this machine's devices, or 1 if they do not divide.
  fixed = math.prod(n for n in mesh_cfg.values() if n != -1)
  free = [a for a, n in mesh_cfg.items() if n == -1]
  devices = fixed * max(jax.device_count() // fixed, 1) if free else fixed
  sizes = sharding.resolve_axis_sizes(mesh_cfg, devices)
  validate_config(config, sizes)
  dp = data_parallel_size(sizes)
  g = config.sampling.group_size
  seq = max(config.data.prompt_buckets) + config.sampling.max_new_tokens
  rows = config.rl.batch_questions * g
  mem = plan(cfg, sizes, batch=-(-rows // dp) * dp, seq=seq)
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  banner("dry run: plan only (no weights, no data)")
  log_line(f"model      {source}: {cfg.num_params() / 1e9:.3f}B params, {cfg.num_hidden_layers} "
           f"layers, compute {cfg.dtype}, params {cfg.param_dtype}, remat {cfg.remat}")
  log_line(f"mesh       {sizes} = {math.prod(sizes.values())} devices ({dp} data-parallel shards)")
  log_line(f"per device params {gib(mem['params'])} + AdamW {gib(mem['adam'])} + grads "
           f"{gib(mem['grads'])} + KV cache {gib(mem['kv_cache'])} (rollout of {rows} sequences x "
           f"{seq} slots) = {gib(mem['total'])} (activations not included)")
  log_line(f"method     {config.method} (replay {'on' if METHODS[config.method] else 'off'})")
  log_line(f"steps      {config.total_steps} x {config.rl.batch_questions} questions x G={g} = "
           f"{config.total_steps * rows:,} training rollouts (selection may add more)")
  log_line(f"eval       every {config.eval.every} steps on {', '.join(config.data.eval_sets)}; "
           f"checkpoint every {config.ckpt.every}")
  return {"mesh": sizes, "memory": mem, "steps": config.total_steps, "rows_per_step": rows}


# ---------------------------------------------------------------------------------------------------
# The job.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) RL fine-tuning in `workdir`; returns the final summary."""
  from flax import nnx

  from dots_jax import evaluate, rewards
  from dots_jax.data.dataset import load_dataset
  from dots_jax.model import hf_io, sharding
  from dots_jax.rl import batch as rl_batch
  from dots_jax.rl import checkpoint, metrics, replay, update
  from dots_jax.sampling.sampler import Sampler
  from dots_jax.selection import driver, factory

  # ----- setup ------------------------------------------------------------------------------------
  validate_config(config)
  if config.dry_run:
    return dry_run(config)
  check_workdir(workdir)
  banner(f"setup: method {config.method}, {config.total_steps} steps, workdir {workdir}, "
         f"process {jax.process_index()}/{jax.process_count()}")

  # ----- mesh -------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  sizes = sharding.mesh_axis_sizes(mesh)
  validate_config(config, sizes)
  dp = data_parallel_size(sizes)
  banner(f"mesh: {sizes} over {jax.device_count()} {jax.devices()[0].platform} devices")

  # ----- policy / sampler -------------------------------------------------------------------------
  path = resolve_model_path(config)
  tokenizer = hf_io.load_tokenizer(path)
  qcfg, model = hf_io.load_policy(path, dtype=config.model.dtype,
                                  param_dtype=config.model.param_dtype, remat=config.model.remat,
                                  mesh=mesh)
  graphdef, params = nnx.split(model)
  del model
  eos_ids = sorted(set(qcfg.eos_ids) | ({tokenizer.eos_token_id} - {None}))
  g = config.sampling.group_size
  max_prompt = max(config.data.prompt_buckets)
  total_len = max_prompt + config.sampling.max_new_tokens
  sampler = Sampler(graphdef, qcfg, max_prompt_len=max_prompt,
                    max_new_tokens=config.sampling.max_new_tokens, eos_ids=eos_ids,
                    pad_id=tokenizer.pad_token_id, mesh=mesh)
  eval_sampler = evaluate.make_eval_sampler(config, qcfg, graphdef, tokenizer, mesh)
  banner(f"policy: {path} ({qcfg.num_params() / 1e6:.2f}M params, {qcfg.num_hidden_layers} layers)")

  # ----- data -------------------------------------------------------------------------------------
  train_set = load_dataset(config.data, "train")
  prompts = PromptTable(tokenizer, config.data, train_set)
  evaluator = evaluate.Evaluator(config, tokenizer)
  banner(f"data: {config.data.train} {len(prompts)} prompts ({dict(prompts.counts)}); eval "
         f"{ {k: len(v) for k, v in evaluator.prompts.items()} }")

  # ----- selection / replay -----------------------------------------------------------------------
  dots_kwargs = {}
  if factory.uses_dots(config.method):
    from dots_jax.difficulty.setup import dots_inputs
    emb, estimator = dots_inputs(config, [prompts.question(i).problem for i in range(len(prompts))])
    dots_kwargs = dict(embeddings_NxD=emb, estimator=estimator)
  strategy = factory.make_strategy(config, len(prompts), **dots_kwargs)
  use_replay = METHODS[config.method]
  buffer = replay.ReplayBuffer(config.replay.capacity, g, total_len) if use_replay else None

  # ----- shard + step functions -------------------------------------------------------------------
  ucfg = update.UpdateConfig.from_config(config)
  optimizer = update.make_optimizer(config.rl, config.total_steps, ucfg.updates_per_step)
  state_sh = update.train_state_shardings(optimizer, params, mesh)
  # kl_beta != 0: the initial policy is the KL reference, kept as its own copy (the train state's
  # params are donated every step) with the params' shardings.
  ref_params = ref_sh = None
  if config.rl.kl_beta != 0.0:
    ref_sh = state_sh.params
    ref_params = jax.device_put(jax.tree.map(lambda x: x.copy(), params), ref_sh)
  state = jax.device_put(update.init_train_state(params, optimizer, config.seed), state_sh)
  update_fn = update.make_update_fn(graphdef, optimizer, ucfg, mesh=mesh, state_shardings=state_sh,
                                    ref_shardings=ref_sh)
  writer = metrics.MetricsWriter(workdir, tensorboard=config.log.tensorboard)
  progress = Progress()

  # ----- restore ----------------------------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(workdir, config.ckpt.keep, async_save=config.ckpt.async_save)
  state, host, restored = ckpt.restore_or_init(state)
  if host is not None:
    strategy.load_state_dict(host["selection"])
    if buffer is not None:
      buffer.load_state_dict(host["replay"])
    writer.load_state_dict(host["metrics"])
    progress = Progress(**host["progress"])
    banner(f"restore: resumed from step {restored} ({progress.rollouts:,} rollouts, "
           f"{progress.seconds:.0f}s so far)")
  start = int(jax.device_get(state.step))
  # Separate streams: rollouts fold in (step, call); evaluation folds in the step.
  rng_key = jax.random.fold_in(jax.random.key(config.seed), 0)
  eval_key = jax.random.fold_in(jax.random.key(config.seed), 1)

  quantum = rollout_quantum(config.rl.batch_questions, dp)

  def rollout_fn_for(step: int) -> Callable[[np.ndarray], Any]:
    calls = [0]

    def rollout(indices: np.ndarray) -> driver.RolloutResult:
      n = len(indices)
      tok_BxP, mask_BxP = prompts.batch(pad_to_multiple(np.asarray(indices), quantum))
      key = jax.random.fold_in(jax.random.fold_in(rng_key, step), calls[0])
      calls[0] += 1
      sample = slice_rows(sampler.generate(
          state.params, tok_BxP, mask_BxP, key, num_samples=g,
          temperature=config.sampling.temperature, top_p=config.sampling.top_p,
          top_k=config.sampling.top_k), n * g)
      golds = [prompts.question(i).answer for i in indices for _ in range(g)]
      scores_N, stats = rewards.score_batch(
          decode_completions(tokenizer, sample), golds, kind=config.reward.kind,
          timeout_s=config.reward.timeout_s, workers=config.reward.workers)
      return driver.RolloutResult(scores_N.reshape(n, g), (sample, scores_N, stats, indices))

    return rollout

  def run_eval(step: int) -> dict[str, float]:
    generate = evaluate.sampler_generate(config, eval_sampler, state.params, tokenizer)
    exact = (evaluate.exact_logprob_fn(config, graphdef, state.params, mesh)
             if config.eval.exact else None)
    report = evaluator.run(generate, jax.random.fold_in(eval_key, step), step, exact=exact)
    flat = evaluate.flat_metrics(report)
    first = next(iter(report["sets"].values()))
    progress.last_eval = float(first[f"avg@{first['k']}"])
    flat["eval/accuracy"] = progress.last_eval
    flat["eval/stderr"] = float(first["stderr"])
    flat["eval/seconds"] = float(report["seconds"])
    return flat

  # ----- loop -------------------------------------------------------------------------------------
  banner(f"loop: steps {start}..{config.total_steps}, {config.rl.batch_questions} questions x "
         f"G={g}, replay {'on' if use_replay else 'off'}")
  if start == 0 and config.eval.every > 0:
    writer.write(0, {**run_eval(0), **_progress_metrics(progress)})
  timer = metrics.StepTimer()
  t_loop = time.perf_counter()
  for step in range(start, config.total_steps):
    t_step = time.perf_counter()
    # select + rollout + reward: the strategy decides which questions, the driver rolls them out.
    n_fresh, _ = (buffer.plan(config.rl.batch_questions, config.replay.fresh_fraction)
                  if buffer is not None else (config.rl.batch_questions, 0))
    with timer.phase("rollout"):
      collected = driver.collect_batch(strategy, rollout_fn_for(step), step, None, n_fresh,
                                       seed=config.seed)
    fresh = rl_batch.Groups.concat([
        rl_batch.groups_from_samples(sample, scores, qids, g, total_len,
                                     tokenizer.pad_token_id).take(rows)
        for (sample, scores, _, qids), rows in collected.parts])
    # replay: mix buffered groups in before adding this step's (never replay a group the same step).
    if buffer is not None:
      groups, is_replay = buffer.mix(fresh, config.rl.batch_questions,
                                     config.replay.fresh_fraction,
                                     np.random.default_rng([config.seed, step, 0xBEEF]))
      buffer.add(fresh, step)
    else:
      groups, is_replay = fresh, np.zeros(fresh.num_groups, bool)
    # update
    with timer.phase("update"):
      batch = make_device_batch(rl_batch.make_batch(groups, is_replay, config.rl.adv_norm), mesh)
      state, step_metrics = update_fn(state, batch, ref_params)
      step_metrics = jax.device_get(step_metrics)
    update.raise_if_nonfinite(step_metrics, step)
    progress.seconds += time.perf_counter() - t_step
    progress.rollouts += int(collected.metrics["selection/rollouts"])
    progress.last_reward = float(collected.rewards_BxG.mean())
    done = step + 1
    # log
    record = {f"train/{k}": v for k, v in step_metrics.items()}
    record.update(metrics.batch_stats(collected.rewards_BxG,
                                      fresh.loss_mask_QxGxT.sum(axis=-1).ravel()))
    record.update(collected.metrics)
    record.update(timer.metrics())
    reward_stats = [stats for (_, _, stats, _), _ in collected.parts]
    record.update({f"reward/{k}": float(v) for k, v in _sum_counts(reward_stats).items()})
    record["replay/size"] = float(len(buffer)) if buffer is not None else 0.0
    record["replay/replayed_groups"] = float(is_replay.sum())
    # evaluate
    if config.eval.every > 0 and (done % config.eval.every == 0 or done == config.total_steps):
      record.update(run_eval(done))
    record.update(_progress_metrics(progress))
    writer.write(done, record)
    if done % config.log.every == 0 or done == config.total_steps:
      elapsed = time.perf_counter() - t_loop
      eta = elapsed / (done - start) * (config.total_steps - done)
      log_line(f"step {done}/{config.total_steps} | ETA {format_eta(eta)} | rollouts "
               f"{progress.rollouts:,} | reward {progress.last_reward:.3f} | eval "
               f"{progress.last_eval:.3f} | zero-var "
               f"{1 - collected.metrics['selection/effective_frac_rolled']:.2f} | "
               f"{record['time/step_s']:.2f}s/step")
    # checkpoint
    if done % config.ckpt.every == 0 or done == config.total_steps:
      host_state = {"selection": strategy.state_dict(),
                    "replay": buffer.state_dict() if buffer is not None else {},
                    "metrics": writer.state_dict(), "progress": progress.state_dict()}
      ckpt.save(done, state, host_state)
  ckpt.wait()
  writer.flush()
  summary = {"method": config.method, "seed": config.seed, "steps": config.total_steps,
             "rollouts": progress.rollouts, "train_seconds": progress.seconds,
             "final_eval_accuracy": progress.last_eval, "last_reward": progress.last_reward,
             "model_path": path, "workdir": os.path.abspath(workdir)}
  if jax.process_index() == 0:
    evaluate.write_json(os.path.join(workdir, "summary.json"), summary)
  banner(f"done: {config.method} {config.total_steps} steps, {progress.rollouts:,} rollouts, "
         f"{progress.seconds:.0f}s training, held-out accuracy {progress.last_eval:.4f}")
  writer.close()
  ckpt.close()
  return summary


def _sum_counts(stats: list[Any]) -> dict[str, float]:
  total: dict[str, float] = {}
  for s in stats:
    for k, v in s.counts.items():
      total[k] = total.get(k, 0.0) + float(v)
  return total


def _progress_metrics(progress: Progress) -> dict[str, float]:
  return {"progress/rollouts": float(progress.rollouts), "progress/seconds": progress.seconds}


def make_device_batch(batch: Any, mesh: Any) -> dict[str, jax.Array]:
  """Rows over the data-parallel axes (every process passes the same global batch)."""
  from dots_jax.model.sharding import batch_sharding
  return {k: jax.device_put(v, batch_sharding(mesh, np.ndim(v))) for k, v in batch.as_dict().items()}
