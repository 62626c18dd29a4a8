"""The job's dry run: its plan for a config without weights or data (`dry_run(config, PlanSettings)`).

  python -m dots_jax.tools.plan --config=configs/qwen7b.py:v6e_8 --config.method=dots_rr \
      --topology=v6e-8                      # every program by the TPU's own compiler, fit search
  python -m dots_jax.tools.plan --config=configs/qwen1p5b_math.py --compile   # XLA on CPU devices
  python -m dots_jax.tools.plan --variant=7B --mesh=data:1,fsdp:8,tensor:1 --batch=64 --seq=2048

The per-device memory plan of `dots_jax.run.memory_plan` for the job's settings (`run.settings.read`:
the state `plan` counts: params, AdamW, grads, a KV cache; the activations, logits chunks and
all-gathered layers `update_estimate` adds), the rollout's decode program estimate, and with
`--compile` or `--topology` XLA's own figures beside them (`compiled_programs`, docs/MEMORY.md).
Without --config: one model's state plan on a mesh.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from dots_jax.config_common import ConfigError, policy_runtime
from dots_jax.methods import get_method
from dots_jax.model import hf_io, qwen2, roofline, sharding, variants
from dots_jax.policy.tiny_base import tiny_model_config
from dots_jax.policy.tokenizer import make_char_tokenizer
from dots_jax.rl import replay, update
from dots_jax.run import settings
from dots_jax.run.memory_plan import fit_micro_batch, plan, update_estimate, update_rows
from dots_jax.rollout.engine import Engine, slot_cache_bytes
from dots_jax.run.startup import check_model_mesh, validate_config
from dots_jax.tools import compiled, plan_dots, topology

@dataclasses.dataclass(frozen=True)
class PlanSettings:
  """The dry run's own settings (`python -m dots_jax.tools.plan`'s flags): a topology or GPU whose
  own compiler compiles every program (`tools.topology`: "v5p:2x2x2", "v6e-8", "h100x8"), with a
  fit search when one does not fit under fit_margin x HBM; or, without one, the device's memory in
  GiB for a fits / does NOT fit line (0: none), compiling on this CPU's host devices (`compile`)
  and the accelerator whose published peaks give a roofline step time (`device`, a kind of
  `model.roofline.PEAKS`)."""

  topology: str
  device_gib: float
  compile: bool
  device: str
  fit_margin: float


def _update_settings(config: ml_collections.ConfigDict, cfg: qwen2.Qwen2Config,
                     sizes: Mapping[str, int], seq: int) -> tuple[update.UpdateConfig, int]:
  """The job's update settings for `config` on a mesh of `sizes` (its micro-batch fitted to
  rl.memory_budget_gib as the job fits it) and the rows of one step's update."""
  s = settings.read(config)
  rows = update_rows(s.batch_questions, s.group_size, sharding.data_parallel_size(sizes))
  return fit_micro_batch(s.update, cfg, sizes, seq, rows, s.memory_budget_gib,
                         s.optimizer.mu_dtype), rows


def _log(text: str) -> None:
  if jax.process_index() == 0:
    print(text, flush=True)


def policy_shape(config: ml_collections.ConfigDict) -> tuple[qwen2.Qwen2Config, str]:
  """The policy architecture a config trains, without loading weights: model.variant's shapes, else
  model.path's config.json, else the tiny base's; and where it came from."""
  runtime = policy_runtime(config)
  if config.model.variant:
    return variants.get_variant(config.model.variant, **runtime), f"variant {config.model.variant}"
  if config.model.path:
    return (qwen2.Qwen2Config.from_hf(hf_io.read_hf_config(config.model.path), **runtime),
            config.model.path)
  tok = make_char_tokenizer()
  recipe = settings.read(config).tiny
  if recipe is None:
    raise ConfigError("the config has no model.variant, no model.path and no tiny base recipe: "
                      "nothing gives the policy's shape")
  return (tiny_model_config(recipe.tiny, len(tok), tok.eos_token_id, tok.bos_token_id),
          "tiny base policy")


def planned_mesh(config: ml_collections.ConfigDict, device_count: int | None = None
                 ) -> dict[str, int]:
  """The mesh the config describes: explicit sizes need not exist here (a 7B pod plan on a laptop);
  a -1 axis takes this machine's devices (or `device_count`: a topology's), or 1 if they do not
  divide."""
  mesh_cfg = {a: config.mesh[a] for a in sharding.AXES}
  fixed = math.prod(n for n in mesh_cfg.values() if n != -1)
  free = [a for a, n in mesh_cfg.items() if n == -1]
  count = device_count or jax.device_count()
  devices = fixed * max(count // fixed, 1) if free else fixed
  return sharding.resolve_axis_sizes(mesh_cfg, devices)


def dry_run(config: ml_collections.ConfigDict, plan_settings: PlanSettings) -> dict[str, Any]:
  """Prints the plan (mesh, per-device memory, steps, rollouts) without loading weights or data."""
  p = plan_settings
  cfg, source = policy_shape(config)
  topo = topology.resolve(p.topology) if p.topology else None
  chips = topo.devices if topo else None
  sizes = planned_mesh(config, len(chips) if chips else None)
  validate_config(config, sizes, planning=True)
  check_model_mesh(cfg, sizes)
  dp = sharding.data_parallel_size(sizes)
  g = config.sampling.group_size
  seq = max(config.data.prompt_buckets) + config.sampling.max_new_tokens
  rows = config.rl.batch_questions * g
  mu_dtype = config.rl.mu_dtype
  mem = plan(cfg, sizes, batch=-(-rows // dp) * dp, seq=seq, mu_dtype=mu_dtype)
  gib = lambda n: f"{n / 2**30:.2f} GiB"
  _log("== dry run: plan only (no weights, no data)")
  _log(f"model      {source}: {cfg.num_params() / 1e9:.3f}B params, {cfg.num_hidden_layers} "
       f"layers, compute {cfg.dtype}, params {cfg.param_dtype}, remat {cfg.remat}")
  _log(f"mesh       {sizes} = {math.prod(sizes.values())} devices ({dp} data-parallel shards)")
  _log(f"per device params {gib(mem['params'])} + AdamW {gib(mem['adam'])} + grads "
       f"{gib(mem['grads'])} = {gib(mem['params'] + mem['adam'] + mem['grads'])} (the rollout's "
       "KV cache and the update's activations: below)")
  kv_shards = sharding.kv_head_shards(sizes, cfg.num_key_value_heads)
  slots = settings.read(config).engine.slots_for(cfg, max(config.data.prompt_buckets),
                                                 config.sampling.max_new_tokens, dp, kv_shards)
  if slots:
    kv = slot_cache_bytes(cfg, slots // dp, max(config.data.prompt_buckets),
                          config.sampling.max_new_tokens, kv_shards=kv_shards)
    resident = mem["params"] + mem["adam"]
    mem["rollout_kv_cache"] = kv
    _log(f"rollout    slot engine: {slots} slots ({slots // dp} per device) x {seq} cache slots = "
         f"{gib(kv)} KV cache per device; with params + AdamW {gib(resident + kv)} "
         f"(the static batch would hold {gib(mem['kv_cache'])})"
         + (f"; more slots than the step's {rows} completions: a smaller "
            "config.sampling.kv_budget_gib frees memory" if slots > rows else ""))
  else:
    _log(f"rollout    static batch: all {rows} sequences at once ({gib(mem['kv_cache'])} KV cache "
         "per device; config.sampling.slots or kv_budget_gib bound it)")
  _log(f"method     {config.method} (replay {'on' if get_method(config.method).replay else 'off'})")
  structure = step_structure(config)
  for line in structure["lines"]:
    _log(f"step       {line}")
  ucfg, update_rows_ = _update_settings(config, cfg, sizes, seq)
  mb, micro, n_micro = ucfg.split(update_rows_)
  update_bytes = update_estimate(ucfg, cfg, sizes, seq, update_rows_, grad=True,
                                 mu_dtype=mu_dtype)
  _log(f"update     mini-batch {mb} rows = {n_micro} micro-batches of {micro} rows"
       f"{' (from rl.memory_budget_gib=' + str(config.rl.memory_budget_gib) + ')' if config.rl.memory_budget_gib and not config.rl.micro_batch else ''}"
       f"; attention blocks of {cfg.attn_chunk or seq} queries; logits chunks of "
       f"{config.rl.logits_chunk or seq} positions; remat {cfg.remat_policy if cfg.remat else 'off'}; "
       f"estimated {gib(update_bytes)} per device")
  _log(f"steps      {config.total_steps} x {config.rl.batch_questions} questions x G={g} = "
       f"{config.total_steps * rows:,} training rollouts (selection may add more)")
  _log(f"eval       every {config.eval.every} steps on {', '.join(config.data.eval_sets)}; "
       f"checkpoint every {config.ckpt.every}")
  out = {"mesh": sizes, "memory": mem, "steps": config.total_steps, "rows_per_step": rows,
         "step_structure": {k: v for k, v in structure.items() if k != "lines"}}
  resident = mem["params"] + mem["adam"]  # held across the step; grads live inside the update
  estimates = {"rollout": resident + mem.get("rollout_kv_cache", mem["kv_cache"]),
               "update": update_bytes}
  out["estimated_peak"] = max(estimates.values())
  if p.device_gib > 0:
    _log(fit_verdict(estimates, p.device_gib))
  kind = chips[0].device_kind if chips else p.device
  if kind:
    out["roofline"] = roofline_lines(config, cfg, sizes, structure, slots or rows,
                                     roofline.peaks_for(kind, 0.0, 0.0))
  if topo:
    out.update(topology_plan(config, cfg, sizes, seq, topo, p))
  elif p.compile:
    out["programs"] = compiled_programs(config, cfg, sizes, seq)
    peak = max(out["programs"].values(), key=lambda p: p["compiled"])
    _log(f"peak per device: {gib(peak['compiled'])} compiled, {gib(peak['estimated'])} estimated")
  return out


# Mean answer length as a share of the cap: the long-tailed lengths the benchmarks draw (log-normal,
# median cap/5, 5% at the cap; dots_jax.bench.rollout.long_tailed_lengths) average 0.29 x cap.
ANSWER_SHARE = 0.29


def roofline_lines(config: ml_collections.ConfigDict, cfg: qwen2.Qwen2Config,
                   sizes: Mapping[str, int], structure: dict[str, Any], slots: int,
                   peaks: dict[str, Any]) -> dict[str, Any] | None:
  """One RL step's best time on the chips (`roofline.step_roofline`): the step's rollouts (its
  questions, with DOTS's reference rollouts spread over their round), answers of ANSWER_SHARE x the
  cap after prompts of the smallest bucket, and its update over every trained row."""
  if not peaks["flops"]:
    _log(f"roofline   {peaks['source']}: no step time")
    return None
  g = config.sampling.group_size
  questions = structure.get("first_round_questions", structure.get(
      "rolled_out_questions", structure.get("fresh_questions", config.rl.batch_questions)))
  refs = structure.get("reference_questions", 0) / max(config.selection.dots.round_steps, 1)
  answer = ANSWER_SHARE * config.sampling.max_new_tokens
  prompt = min(config.data.prompt_buckets)
  r = roofline.step_roofline(cfg, completions=int((questions + refs) * g), prompt_len=prompt,
                             answer_len=answer, train_rows=config.rl.batch_questions * g,
                             sizes=dict(sizes), slots=slots, peaks=peaks)
  _log(f"roofline   {r.chips} chips at {peaks['flops'] / 1e12:.0f} TFLOP/s, "
       f"{peaks['hbm'] / 1e12:.2f} TB/s ({peaks['source']}); answers {answer:.0f} tokens on "
       f"average: rollout {r.rollout_s:.1f} s ({r.rollout_bound}-bound), pi_old "
       f"{r.pi_old_s:.1f} s, update {r.update_s:.1f} s (compute-bound{', with remat' if cfg.remat else ''})"
       f" = {r.step_s:.1f} s per RL step at best; MFU ceiling {r.mfu_ceiling:.0%}")
  return {**dataclasses.asdict(r), "step_s": r.step_s, "mfu_ceiling": r.mfu_ceiling}


def topology_plan(config: ml_collections.ConfigDict, cfg: qwen2.Qwen2Config,
                  sizes: Mapping[str, int], seq: int, topo: topology.Topology,
                  p: PlanSettings) -> dict[str, Any]:
  """Every program compiled by the topology's own compiler, each with fits / does NOT fit; when
  the update or the rollout does not fit under p.fit_margin x HBM, the settings that do
  (`fit_search`)."""
  chips, hbm = topo.devices, topo.hbm_bytes
  kind = chips[0].device_kind
  n = math.prod(sizes.values())
  if len(chips) != n:
    raise ConfigError(f"--topology={p.topology!r} has {len(chips)} chips, the "
                      f"mesh {dict(sizes)} needs {n}: set config.mesh to use them all")
  _log(f"topology   {p.topology}: {len(chips)} x {kind}, {hbm / 2**30:.2f} GiB HBM each "
       f"(compiled by {topo.compiler})")
  programs = compiled_programs(config, cfg, sizes, seq, devices=chips, hbm_bytes=hbm)
  out: dict[str, Any] = {"topology": p.topology, "device_kind": kind,
                         "hbm_bytes": hbm, "programs": programs}
  fits = lambda prog: compiled.within(prog, p.fit_margin * hbm)
  found, searched = None, False
  if not (fits(programs["update"]) and fits(programs.get("rollout"))
          and fits(programs.get("prefill"))):
    found, searched = fit_search(config, cfg, sizes, seq, chips, hbm, p), True
    out["fit"] = found
  worst = max(programs.items(), key=lambda kv: kv[1].get("compiled") or kv[1].get("wanted"))
  need = (worst[1].get("compiled") or worst[1].get("wanted")) / 2**30
  line = (f"plan {p.topology}: "
          f"{'fits' if all(p.get('fits') for p in programs.values()) else 'does NOT fit'} as "
          f"configured ({worst[0]} {need:.2f} GiB of {hbm / 2**30:.2f})")
  if found is not None:
    peak = max(found["update"]["compiled"], (found["rollout"] or {}).get("compiled", 0))
    line += (f"; fits with {' '.join(f'--config.{k}={v}' for k, v in found['overrides'].items())}"
             f" (compiled peak {peak / 2**30:.2f} GiB, {100 * peak / hbm:.0f}%)")
  elif searched:
    line += ("; no mesh (fsdp x tensor), remat, micro-batch or dtype setting found that fits: more "
             "chips")
  dots = {n: p for n, p in programs.items() if n in DOTS_PROGRAMS}
  if dots:
    line += f"; {plan_dots.dots_verdict(config, cfg, dots, topo, sizes, p.fit_margin)}"
  _log(line)
  return out


def fit_verdict(estimates: Mapping[str, int], device_gib: float) -> str:
  """One line: whether each phase's estimated per-device bytes (the rollout holds params, AdamW
  and its KV cache; the update its own estimate) fit a device of `device_gib` GiB."""
  peak_name, peak = max(estimates.items(), key=lambda kv: kv[1])
  parts = ", ".join(f"{name} {b / 2**30:.2f} GiB" for name, b in estimates.items())
  ok = peak <= device_gib * 2**30
  return (f"fit        {'fits' if ok else 'does NOT fit'} a {device_gib:g} GiB device: {parts} "
          f"(peak: {peak_name}, {100 * peak / (device_gib * 2**30):.0f}% of the device)")


def rollout_engine(config: ml_collections.ConfigDict, cfg: qwen2.Qwen2Config, graphdef: Any,
                   mesh: Any) -> Engine | None:
  """The slot engine the training rollouts would use on `mesh` (None: the static batch)."""
  dp = sharding.data_parallel_size(mesh)
  prompt, new = max(config.data.prompt_buckets), config.sampling.max_new_tokens
  engine = settings.read(config).engine
  slots = engine.slots_for(cfg, prompt, new, dp,
                           sharding.kv_head_shards(mesh, cfg.num_key_value_heads))
  if not slots:
    return None
  return Engine(graphdef, cfg, slots=slots, max_prompt_len=prompt, max_new_tokens=new,
                eos_ids=(0,), pad_id=0, steps_per_call=engine.steps_per_call,
                windows=engine.windows, mesh=mesh, prefill_prompts=engine.prefill_prompts)


def rollout_estimate(cfg: qwen2.Qwen2Config, sizes: Mapping[str, int], engine: Engine) -> int:
  """Per-device bytes of a decode program: params (and their copy in the compute dtype, made once
  per call when the two differ), the slots' KV cache and per-slot state, and the float32 logits
  (the state's, the step's and the sampling pass's)."""
  dp = sharding.data_parallel_size(sizes)
  rows = engine.slots // dp
  kv = slot_cache_bytes(cfg, rows, engine.max_prompt_len, engine.max_new_tokens,
                        kv_shards=sharding.kv_head_shards(sizes, cfg.num_key_value_heads))
  logits = 3 * rows * (cfg.vocab_size // sizes["tensor"]) * 4
  outputs = 2 * rows * engine.max_new_tokens * 4  # tokens and log-probs
  params = plan(cfg, sizes, batch=1, seq=1)["params"]
  compute, stored = np.dtype(cfg.dtype).itemsize, np.dtype(cfg.param_dtype).itemsize
  cast = params * compute // stored if cfg.dtype != cfg.param_dtype else 0
  return params + cast + kv + logits + outputs


def prefill_block_bytes(cfg: qwen2.Qwen2Config, sizes: Mapping[str, int], prompts: int,
                        engine: Engine) -> int:
  """What a prefill of `prompts` prompts adds to the decode state on each device: its share of the
  block (the block is split over the data axes), their KV cache in every layer (compute dtype)
  and one layer's float32 activations (residual, attention, MLP)."""
  tokens = -(-prompts // sharding.data_parallel_size(sizes)) * engine.max_prompt_len
  w = np.dtype(cfg.dtype).itemsize
  kv_heads = cfg.num_key_value_heads // sharding.kv_head_shards(sizes, cfg.num_key_value_heads)
  cache = 2 * cfg.num_hidden_layers * tokens * kv_heads * cfg.head_dim * w
  layer = tokens * (4 * cfg.hidden_size + 2 * cfg.intermediate_size // sizes["tensor"]) * 4
  return int(cache + layer)


# The DOTS stage's programs (`plan_dots`), compiled when the method selects with DOTS.
DOTS_PROGRAMS = {"embed", "estimator_fit", "estimator_predict"}


def compiled_programs(config: ml_collections.ConfigDict, cfg: qwen2.Qwen2Config,
                      sizes: Mapping[str, int], seq: int, *, devices: list[Any] | None = None,
                      hbm_bytes: int = 0, only: tuple[str, ...] | None = None,
                      quiet: bool = False) -> dict[str, dict[str, Any]]:
  """Lowers and compiles pi_old, the update step, (with the slot engine) the rollout's decode and
  prefill programs and (for DOTS methods) the DOTS stage's embedding pass over the mesh and the
  estimator's programs on the first chip (`plan_dots`), or those named in `only`, with shapes only on a mesh of `sizes`, and
  returns, per program, the per-device bytes of `memory_analysis()` (arguments + outputs - aliased +
  temporaries, plus what stays resident beside it: AdamW's moments beside pi_old and the rollout,
  the policy beside the embedding pass) beside `update_estimate`. `devices`: compile-only devices of a real topology
  (`dots_jax.tools.topology`), else this process's (`dots_jax.main` gives a CPU dry run
  host-platform devices when plan_compile is set). With `hbm_bytes`, each program says whether it
  fits; a compiler that refuses a program for want of memory is that program's `fits: False`
  (with the bytes it wanted and had), not an exception."""
  n = math.prod(sizes.values())
  devices = list(devices) if devices is not None else jax.devices()
  if len(devices) < n:
    raise ConfigError(f"--compile: the mesh {dict(sizes)} needs {n} devices, this process "
                      f"has {len(devices)}; run the dry run through `python -m dots_jax.tools.plan` "
                      f"(it simulates them on CPU) or set "
                      f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
  mesh = sharding.make_mesh(dict(sizes), devices[:n])
  graphdef, abstract = qwen2.abstract_model(cfg)
  params_sh = sharding.param_shardings(abstract, mesh)
  attach = lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh)
  params = jax.tree.map(attach, abstract, params_sh)
  ucfg, rows = _update_settings(config, cfg, sizes, seq)
  optimizer = update.make_optimizer(settings.read(config).optimizer, config.total_steps,
                                    ucfg.updates_per_step)
  state_sh = update.train_state_shardings(optimizer, params, mesh)
  state = jax.tree.map(attach, jax.eval_shape(
      lambda p: update.init_train_state(p, optimizer, config.seed), params), state_sh)
  fns = update.make_update_fn(graphdef, optimizer, ucfg, mesh=mesh, state_shardings=state_sh)
  batch = update.DeviceBatch.abstract(rows, seq, mesh)
  lowered = {"pi_old": lambda: fns.old_logp_fn.lower(params, batch.tokens_NxT, batch.mask_NxT),
             "update": lambda: fns.update_fn.lower(state, batch, None)}
  estimates = {name: update_estimate(ucfg, cfg, sizes, seq, rows, grad=name == "update",
                                     mu_dtype=config.rl.mu_dtype)
               for name in lowered}
  engine = (rollout_engine(config, cfg, graphdef, mesh)
            if not only or {"rollout", "prefill"} & set(only) else None)
  if engine is not None:  # the slot engine's decode program over its largest cache window
    engine_state = jax.tree.map(attach, jax.eval_shape(engine._empty_arrays), engine._state_sh)
    lowered["rollout"] = lambda: engine._decode.lower(
        params, engine_state, jax.random.key(0), np.float32(1.0), np.float32(1.0), np.int32(0),
        np.bool_(False), window=engine.windows[-1])
    estimates["rollout"] = rollout_estimate(cfg, sizes, engine)
    # ... and its prefill (insert) program at the largest prompt block, prompts of the longest bucket
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())  # host inputs: replicated
    u = max(engine.prefill_sizes(config.sampling.group_size))
    ints = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32, sharding=whole)
    lowered["prefill"] = lambda: engine._insert.lower(
        params, engine_state, ints(u, engine.max_prompt_len), ints(u, engine.max_prompt_len),
        ints(engine.slots), ints(engine.slots), ints(engine.slots), ints(engine.slots))
    estimates["prefill"] = estimates["rollout"] + prefill_block_bytes(cfg, sizes, u, engine)
  if get_method(config.method).source == "dots" and (not only or set(only) & DOTS_PROGRAMS):
    for name, (lower, est) in plan_dots.dots_programs(config, cfg, devices[:n], sizes).items():
      lowered[name], estimates[name] = lower, est
  # What stays on each chip while a program runs without being its argument: AdamW's moments beside
  # pi_old and the rollout (the train state lives across the step), the policy's parameters
  # beside the DOTS stage's embedding pass.
  mem = plan(cfg, sizes, batch=1, seq=1, mu_dtype=config.rl.mu_dtype)
  resident = {"pi_old": mem["adam"], "rollout": mem["adam"], "prefill": mem["adam"],
              "embed": mem["params"]}
  out = {}
  for name, lower in lowered.items():
    if only and name not in only:
      continue
    out[name] = compiled.measure_program(lower, estimates[name], hbm_bytes,
                                         resident=resident.get(name, 0))
    if not quiet:
      _log(compiled.program_line(name, out[name], hbm_bytes))
  return out


# Remat settings from least to most recompute: (model.remat, model.remat_policy).
REMAT_LADDER = ((False, "nothing_saveable"), (True, "dots_with_no_batch_dims_saveable"),
                (True, "nothing_saveable"))


def remat_candidates(config: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
  """The configured remat setting, then those of the ladder that recompute more."""
  m = config.model
  current = (bool(m.remat), m.remat_policy if m.remat else "nothing_saveable")
  rank = REMAT_LADDER.index(current) if current in REMAT_LADDER else 0
  return [current] + [r for r in REMAT_LADDER[rank + 1:] if r != current]


# What the fit search may change beyond the mesh, remat and micro-batch, least intrusive first
# (each step keeps the ones before): bfloat16 activations (the training-inference gap grows:
# docs/GAP.md, `python -m dots_jax.bench.logp_gap --activation_dtype=bfloat16`), then AdamW's
# first moment in bfloat16 (config.rl.mu_dtype).
DTYPE_STEPS = (("model.activation_dtype", "bfloat16"), ("rl.mu_dtype", "bfloat16"))


def mesh_candidates(sizes: Mapping[str, int], cfg: qwen2.Qwen2Config) -> list[dict[str, int]]:
  """The configured mesh, then the same chips with the data axis turned into fsdp (parameters and
  AdamW sharded over all of them), then fsdp x tensor for every tensor size that divides the
  chips, the attention and KV heads and the MLP width (a smaller tensor axis first)."""
  n = math.prod(sizes.values())
  out = [dict(sizes)]
  add = lambda m: out.append(m) if m not in out else None
  if sizes["data"] > 1:
    add({"data": 1, "fsdp": n // sizes["tensor"], "tensor": sizes["tensor"]})
  for t in (2, 4, 8, 16):
    if t <= n and not (n % t or cfg.num_attention_heads % t or cfg.num_key_value_heads % t
                       or cfg.intermediate_size % t):
      add({"data": 1, "fsdp": n // t, "tensor": t})
  return out


def dtype_candidates(config: ml_collections.ConfigDict) -> list[dict[str, str]]:
  """Overrides to try, in order: none, then each of DTYPE_STEPS added to the ones before (steps the
  config already takes are skipped)."""
  out, acc = [{}], {}
  for key, value in DTYPE_STEPS:
    section, name = key.split(".")
    if config[section][name] != value:
      acc = {**acc, key: value}
      out.append(dict(acc))
  return out


def _with(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
          ) -> ml_collections.ConfigDict:
  trial = config.copy_and_resolve_references()
  for key, value in overrides.items():
    section, name = key.split(".")
    trial[section][name] = value
  return trial


def _update_at(config: ml_collections.ConfigDict, cfg: qwen2.Qwen2Config,
               sizes: Mapping[str, int], seq: int, chips: list[Any], hbm: int,
               remat: tuple[bool, str], micro: int) -> dict[str, Any]:
  """The update compiled for `config` on `sizes` under `remat` with micro-batches of `micro` rows."""
  trial = _with(config, {"model.remat": remat[0], "model.remat_policy": remat[1],
                         "rl.micro_batch": micro})
  trial_cfg = dataclasses.replace(cfg, **policy_runtime(trial))
  return compiled_programs(trial, trial_cfg, sizes, seq, devices=chips, hbm_bytes=hbm,
                           only=("update",), quiet=True)["update"]


def fit_update(config: ml_collections.ConfigDict, cfg: qwen2.Qwen2Config,
               sizes: Mapping[str, int], seq: int, chips: list[Any], hbm: int, margin: float
               ) -> dict[str, Any] | None:
  """The update settings that fit under `margin` x HBM on the mesh `sizes`, found by compiling:
  first the least memory the update can take (one row per data shard, full remat); if that does
  not fit, None (one compile). Else the configured remat, then each policy that recomputes more,
  at that micro-batch, and the micro-batch doubled while it fits, up to the configured one.
  {"remat", "micro_batch", "compiled", "tried": [(remat policy or "off", micro, GiB)]}."""
  dp = sharding.data_parallel_size(sizes)
  ucfg, rows = _update_settings(config, cfg, sizes, seq)
  mini, configured, _ = ucfg.split(rows)
  least = REMAT_LADDER[-1]
  tried = []

  def at(remat: tuple[bool, str], micro: int) -> dict[str, Any]:
    got = _update_at(config, cfg, sizes, seq, chips, hbm, remat, micro)
    tried.append((remat[1] if remat[0] else "off", micro,
                  round((got.get("compiled") or got.get("wanted")) / 2**30, 2)))
    return got

  got = at(least, dp)
  if not compiled.within(got, margin * hbm):
    return None
  remat, best = least, got
  for candidate in remat_candidates(config):
    if candidate == least:
      break
    trial = at(candidate, dp)
    if compiled.within(trial, margin * hbm):
      remat, best = candidate, trial
      break
  micro = dp
  while 2 * micro <= configured and mini % (2 * micro) == 0:
    trial = at(remat, 2 * micro)
    if not compiled.within(trial, margin * hbm):
      break
    micro, best = 2 * micro, trial
  return {"remat": remat, "micro_batch": micro, "compiled": best["compiled"], "tried": tried}


def fit_search(config: ml_collections.ConfigDict, cfg: qwen2.Qwen2Config,
               sizes: Mapping[str, int], seq: int, chips: list[Any], hbm: int, p: PlanSettings
               ) -> dict[str, Any] | None:
  """Settings under p.fit_margin x HBM, found by compiling: for each set of dtype overrides
  (`dtype_candidates`: none first) and each mesh of the same chips (`mesh_candidates`), the
  update's remat and micro-batch (`fit_update`); the first that fits is kept, then the rollout's
  KV-cache budget on that mesh (`fit_rollout`). Prints the overrides to pass."""
  margin, name = p.fit_margin, p.topology
  update_fit = None
  for dtypes in dtype_candidates(config):
    for mesh in mesh_candidates(sizes, cfg):
      changed = {f"mesh.{a}": v for a, v in mesh.items()} if mesh != dict(sizes) else {}
      trial = _with(config, {**changed, **dtypes})
      trial_cfg = dataclasses.replace(cfg, **policy_runtime(trial))
      update_fit = fit_update(trial, trial_cfg, mesh, seq, chips, hbm, margin)
      label = f"mesh {mesh}{''.join(f', {k}={v}' for k, v in dtypes.items())}"
      if update_fit is None:
        _log(f"fit search {name}: {label}: the update does not fit even at one row per data "
             "shard under full remat")
        continue
      break
    if update_fit is not None:
      break
  if update_fit is None:
    _log(f"fit search {name}: no mesh, remat, micro-batch or dtype tried keeps the update under "
         f"{margin:.0%} of HBM: more chips, or shorter sequences")
    return None
  overrides: dict[str, Any] = {**changed, **dtypes}
  remat, policy = update_fit["remat"]
  if (remat, policy) != remat_candidates(config)[0]:
    overrides["model.remat"] = remat
    if remat:
      overrides["model.remat_policy"] = policy
  overrides["rl.micro_batch"] = update_fit["micro_batch"]
  trial = _with(config, overrides)
  trial_cfg = dataclasses.replace(cfg, **policy_runtime(trial))
  rollout_fit = fit_rollout(trial, trial_cfg, mesh, seq, chips, hbm, margin)
  if rollout_fit is not None:
    key = next(k for k in rollout_fit if k != "compiled")
    overrides[f"sampling.{key}"] = rollout_fit[key]
  flags_ = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
  rollout = (f", rollout {rollout_fit['compiled'] / 2**30:.2f} GiB" if rollout_fit else
             ", no rollout budget fits")
  gap = (" (bfloat16 activations widen the training-inference gap: `python -m "
         "dots_jax.bench.logp_gap --activation_dtype=bfloat16`, docs/GAP.md)"
         if "model.activation_dtype" in overrides else "")
  _log(f"fit search {name}: {flags_} -> update {update_fit['compiled'] / 2**30:.2f} GiB{rollout} "
       f"compiled of {hbm / 2**30:.2f} GiB per chip (margin {margin:.0%}){gap}")
  return {"overrides": overrides, "update": update_fit, "rollout": rollout_fit}


def fit_rollout(config: ml_collections.ConfigDict, cfg: qwen2.Qwen2Config,
                sizes: Mapping[str, int], seq: int, devices: list[Any], hbm_bytes: int,
                margin: float) -> dict[str, Any] | None:
  """The largest KV-cache budget (halving config.sampling.kv_budget_gib, or the slots when they are
  fixed) whose compiled rollout programs, decode and prefill, stay under `margin` x HBM, or None.
  Fewer slots shrink both: the cache, and the prompt block a prefill takes at once."""
  trial = config.copy_and_resolve_references()
  key = "kv_budget_gib" if trial.sampling.kv_budget_gib > 0 else "slots"
  value = trial.sampling[key]
  while value >= (0.5 if key == "kv_budget_gib" else 1):
    trial.sampling[key] = value
    got = compiled_programs(trial, cfg, sizes, seq, devices=devices, hbm_bytes=hbm_bytes,
                            only=("rollout", "prefill"), quiet=True)
    if not got:  # no slot engine: the static batch has no decode program to fit
      return None
    if all(compiled.within(p, margin * hbm_bytes) for p in got.values()):
      return {key: value, "compiled": max(p["compiled"] for p in got.values())}
    value = value / 2 if key == "kv_budget_gib" else value // 2
  return None


def step_structure(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What one RL step rolls out and trains on for `config.method`, and how many optimizer steps
  it takes; `lines` says it in words (the dry run prints them)."""
  method = get_method(config.method)
  b, g, rl = config.rl.batch_questions, config.sampling.group_size, config.rl
  dots = config.selection.dots
  mb_q = b // rl.mini_batches
  out: dict[str, Any] = {"trained_questions": b, "mini_batches": rl.mini_batches,
                         "mini_batch_questions": mb_q,
                         "optimizer_steps": rl.mini_batches * rl.ppo_epochs}
  lines = []
  fresh = b
  if method.replay:
    s = settings.read(config)
    shape_only = replay.ReplayBuffer.build(s.replay, s.group_size, total_len=1,
                                           batch_groups=s.batch_questions)  # its rule
    warm, fresh, retain = shape_only.warmup_steps, shape_only.num_fresh, shape_only.retain
    out.update(replay_warmup_steps=warm, fresh_questions=fresh, replayed_questions=b - fresh,
               replay_retained_groups=retain)
    lines.append(f"replay: the first {warm} steps train on {b} fresh questions; then {fresh} fresh "
                 f"+ up to {b - fresh} replayed groups (buffer keeps its newest {retain} groups, "
                 "then takes the step's fresh ones)")
  if method.filter in ("ds", "greso"):
    r = config.selection.rounds
    first, floor = int(round(r.first * fresh)), int(round(r.floor * fresh))
    out.update(first_round_questions=first, min_round_questions=floor)
    skip = " that survive GRESO's skip" if method.filter == "greso" else ""
    lines.append(f"rollout: round 1 = {first} questions{skip} x G={g}; later rounds adaptive in "
                 f"[{floor}, {first}] until {fresh} groups with reward variance (or the last "
                 "round: then a shorter batch)")
  elif method.filter == "mopps":
    cand = config.selection.mopps.candidate_factor * fresh
    out.update(candidate_questions=cand, rolled_out_questions=fresh)
    lines.append(f"rollout: {fresh} of {cand} candidate questions (Thompson-sampled pass rate "
                 f"nearest {config.selection.mopps.alpha}) x G={g}")
  else:
    out["rolled_out_questions"] = fresh
    lines.append(f"rollout: {fresh} questions x G={g}")
  if method.source == "dots":
    out["reference_questions"] = dots.ref_size
    lines.append(f"dots: {dots.ref_size} reference questions x G={g} rolled out every "
                 f"{dots.round_steps} steps (labels only), selection softmax(-|p - {dots.alpha}| / "
                 f"{dots.tau})")
  lines.append(f"update: {b} questions ({b * g} rows) in {rl.mini_batches} mini-batches of {mb_q} "
               f"questions x {rl.ppo_epochs} epoch(s) = {out['optimizer_steps']} optimizer steps per "
               f"RL step{'' if rl.shuffle else ' (rows in order, no shuffle)'}")
  out["lines"] = lines
  return out


def _gib(n: int) -> str:
  return f"{n / 2**30:9.3f} GiB"


def state_plan(variant: str, hf_dir: str, mesh: str, batch: int, seq: int, dtype: str,
               param_dtype: str) -> dict[str, int]:
  """One model's per-device state on a mesh (no config): params, AdamW, grads, a KV cache."""
  runtime = {"dtype": dtype, "param_dtype": param_dtype}
  if variant:
    cfg, name = variants.get_variant(variant, **runtime), variant
  else:
    cfg = qwen2.Qwen2Config.from_hf(hf_io.read_hf_config(hf_dir), **runtime)
    name = hf_dir
  result = plan(cfg, mesh, batch=batch, seq=seq)
  print(f"{name}: {result['param_count'] / 1e9:.3f}B params, mesh {mesh} "
        f"({result['devices']} devices), params {param_dtype}, compute {dtype}")
  print("per device:")
  for key in ("params", "adam", "grads", "kv_cache", "total"):
    extra = f"  (batch {batch} x seq {seq})" if key == "kv_cache" else ""
    print(f"  {key:9s} {_gib(result[key])}  {result[key]:>16,d} B{extra}")
  return result


def main(argv: list[str]) -> None:
  del argv
  from absl import app
  f = flags.FLAGS
  config = _CONFIG.value
  if config is None:
    if bool(f.variant) == bool(f.hf_dir):
      raise app.UsageError("pass --config (the job's dry run), or --variant or --hf_dir (one "
                           "model's state plan)")
    state_plan(f.variant, f.hf_dir, f.mesh, f.batch, f.seq, f.dtype, f.param_dtype)
    return
  # Compile-only chips of a topology, or this CPU's host devices for the configured mesh: the
  # default backend stays this CPU either way (set before any backend starts).
  jax.config.update("jax_platforms", "cpu")
  if f.compile and not f.topology:
    n = math.prod(max(1, config.mesh[a]) for a in ("data", "fsdp", "tensor"))
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n}").strip()
  try:
    dry_run(config, PlanSettings(topology=f.topology, device_gib=f.device_gib, compile=f.compile,
                                 device=f.device, fit_margin=f.fit_margin))
  except ConfigError as e:
    raise app.UsageError(str(e)) from None


if __name__ == "__main__":  # flags only when run: tests import this module beside dots_jax.main
  from absl import app
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "the job's config file (e.g. configs/qwen7b.py:v6e_8): its dry run")
  flags.DEFINE_string("topology", "", "compile every program with this TPU topology's or GPUs' own "
                      "compiler (v6e-8, v5p:2x2x2, h100x8); the last line says whether it fits")
  flags.DEFINE_float("device_gib", 0.0, "without --topology: the device's memory, for a fits / "
                     "does NOT fit line (0: none)")
  flags.DEFINE_bool("compile", False, "without --topology: compile pi_old, the update and the "
                    "rollout on this CPU's host devices (one per mesh position)")
  flags.DEFINE_string("device", "", "without --topology: the accelerator whose published peaks "
                      "give a roofline step time (H100, H200, v5p, ...)")
  flags.DEFINE_float("fit_margin", 0.9, "a program fits under this share of HBM")
  flags.DEFINE_string("variant", "", f"without --config: one of {', '.join(variants.VARIANTS)}")
  flags.DEFINE_string("hf_dir", "", "without --config: read the shape from this config.json")
  flags.DEFINE_string("mesh", "data:1,fsdp:1,tensor:1", "without --config: e.g. data:1,fsdp:8,tensor:1")
  flags.DEFINE_integer("batch", 1, "without --config: sequences in the KV cache")
  flags.DEFINE_integer("seq", 2048, "without --config: KV cache slots per sequence")
  flags.DEFINE_string("dtype", "bfloat16", "without --config: compute dtype (KV cache)")
  flags.DEFINE_string("param_dtype", "float32", "without --config: parameter dtype")
  app.run(main)
