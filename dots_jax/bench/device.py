"""One command that measures dots_jax on whatever accelerator `jax.devices()` offers (docs/DEVICE.md).

  python -m dots_jax.bench.device --out=device.json            # Qwen2.5-Math-1.5B shapes, ~6 min on an H200
  python -m dots_jax.bench.device --quick --out=device.json    # ~2 min: shorter answers, fewer prompts
  python -m dots_jax.bench.device --micro --peak_tflops=1 --hbm_tbps=0.05 --out=/tmp/d.json  # CPU, seconds

Random bfloat16-compute weights at a released variant's shapes (nothing is downloaded). Sections:
  1. rollout: a DOTS-like step through the slot engine (prompts x G, long-tailed forced answer
     lengths up to the cap): useful tokens/s, slot utilisation, one decode step's time against the
     HBM roofline (the bytes a step must read: weights in the compute dtype and the KV cache of the
     window / bandwidth), a prefill block's FLOP/s against the peak;
  2. pi_old and one update at the reference config's shapes (remat, scanned layers, chunked logits
     and attention): tokens/s and MFU (model FLOPs / time / peak; remat's recompute not counted);
  3. the training-inference gap on the rollout's first rows (`update.behaviour_gap`, what training
     logs every step);
  4. the reference side by side (`transformers` on torch, same weights, same device): generate on
     the same rows and forced lengths as our engine on them, and a forward+backward;
  5. three end-to-end dots_rr steps (reference-set rollouts at the first, then fresh + replayed
     groups through the learner): step time split into rollout / pi_old / update.
Peaks come from `PEAKS` by device kind (overridable by --peak_tflops / --hbm_tbps); with none
known the fractions are null. Imports only jax, flax, optax, numpy, absl (+ torch, transformers for 4).
The last line reads `device suite: <kind> ... done in <s> s`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dots_jax.bench.logp_gap import bench_optimizer_settings, sampled_gap  # noqa: E402
from dots_jax.bench.rollout import long_tailed_lengths  # noqa: E402
from dots_jax.model import qwen2, variants  # noqa: E402
from dots_jax.model.roofline import (decode_step_bytes, forward_flops, matmul_params,  # noqa: E402
                                     peaks_for)
from dots_jax.rl import update  # noqa: E402
from dots_jax.rl.batch import groups_from_samples  # noqa: E402
from dots_jax.rl.learner import Learner  # noqa: E402
from dots_jax.bench.random_batch import random_batch  # noqa: E402
from dots_jax.rl.replay import ReplayBuffer  # noqa: E402
from dots_jax.rollout.engine import Engine  # noqa: E402

@dataclasses.dataclass(frozen=True)
class Shape:
  """What the suite runs; `for_args` picks the full, quick or micro cut."""

  variant: str
  layers: int  # 0 = the variant's
  vocab: int  # 0 = the variant's
  prompts: int
  group: int
  prompt_len: int
  cap: int
  slots: int
  steps_per_call: int
  windows: int
  update_rows: int
  micro_batch: int
  logits_chunk: int
  attn_chunk: int
  gap_rows: int
  torch_rows: int
  torch_cap: int  # both sides of the generate comparison stop there (transformers' eager decode
  # runs every row to the longest; at the full cap it alone would take minutes)
  torch_train_rows: int
  e2e_prompts: int
  e2e_ref_prompts: int

  @staticmethod
  def for_args(args: Any) -> "Shape":
    # The reference config (configs/qwen1p5b_math.py): G=8, answers up to 3072 tokens, prompts in
    # buckets of 256/512/1024, remat, scanned layers, logits in chunks of 256 positions, attention
    # in blocks of 512 queries (tests/test_device.py holds the two together); its micro-batches of
    # 64 rows over 8 data shards are 8 rows per device, here 16. The end-to-end steps train as
    # many rows as the update section, so they reuse its compiled program.
    if args.micro:  # `model_config` also shrinks the width
      return Shape(variant="0.5B", layers=2, vocab=512, prompts=4, group=2, prompt_len=8, cap=16,
                   slots=8, steps_per_call=4, windows=2, update_rows=8, micro_batch=4,
                   logits_chunk=8, attn_chunk=8, gap_rows=4, torch_rows=2, torch_cap=16,
                   torch_train_rows=2, e2e_prompts=4, e2e_ref_prompts=2)
    common = dict(variant=args.variant, layers=0, vocab=0, group=8, prompt_len=256,
                  steps_per_call=16, windows=4, micro_batch=16, logits_chunk=256, attn_chunk=512,
                  torch_train_rows=4)
    if args.quick:
      return Shape(prompts=32, cap=1024, slots=128, update_rows=32, gap_rows=32, torch_rows=16,
                   torch_cap=512, e2e_prompts=4, e2e_ref_prompts=8, **common)
    return Shape(prompts=128, cap=3072, slots=256, update_rows=64, gap_rows=64, torch_rows=16,
                 torch_cap=1024, e2e_prompts=8, e2e_ref_prompts=16, **common)

  def model_config(self, micro: bool) -> qwen2.Qwen2Config:
    cfg = variants.get_variant(self.variant, dtype="bfloat16", param_dtype="float32",
                               activation_dtype="float32", remat=True, scan_layers=True,
                               attn_chunk=self.attn_chunk)
    over: dict[str, Any] = dict(eos_token_id=None, bos_token_id=None)
    if self.layers:
      over["num_hidden_layers"] = self.layers
    if self.vocab:
      over["vocab_size"] = self.vocab
    if micro:
      over.update(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2)
    return dataclasses.replace(cfg, **over)


def _frac(achieved: float | None, peak: float | None) -> float | None:
  return achieved / peak if achieved is not None and peak else None


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  t0 = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return out, time.perf_counter() - t0


# ----- sections ---------------------------------------------------------------------------------

def rollout_section(cfg, graphdef, params, shape: Shape, peaks, rng) -> tuple[dict, Any, Engine]:
  n = shape.prompts * shape.group
  lengths = long_tailed_lengths(n, shape.cap, rng)
  prompt_BxP = rng.integers(1, cfg.vocab_size, (shape.prompts, shape.prompt_len), dtype=np.int32)
  engine = Engine(graphdef, cfg, slots=shape.slots, max_prompt_len=shape.prompt_len,
                  max_new_tokens=shape.cap, eos_ids=(), pad_id=0,
                  steps_per_call=shape.steps_per_call, windows=shape.windows)
  def warm():  # every program, then one short call for the host loop's own first dispatches
    engine.warmup(params, shape.prompt_len, shape.group)
    return engine.generate(params, prompt_BxP[:1], np.ones_like(prompt_BxP[:1]),
                           jax.random.key(0), num_samples=shape.group, temperature=1.0,
                           limits_N=np.ones(shape.group, np.int32)).tokens_NxR

  _, compile_s = _timed(warm)
  traces = engine.trace_count
  out, gen_s = _timed(lambda: engine.generate(
      params, prompt_BxP, np.ones_like(prompt_BxP), jax.random.key(1), num_samples=shape.group,
      temperature=1.0, limits_N=lengths))
  stats = engine.last_stats
  retraced = engine.trace_count - traces  # 0: the timed call compiled nothing
  useful = int(lengths.sum())
  # A prefill block fills every slot (timed on its second call), then one decode call over the
  # largest window runs with every slot live. Both programs donate the state: each call takes the
  # previous call's.
  held = [engine._empty_state()]
  u = max(engine.prefill_sizes(shape.group))
  zeros = np.zeros((shape.slots,), np.int32)
  block = prompt_BxP[np.arange(u) % shape.prompts]

  def insert():
    held[0] = engine._insert(params, held[0], block, np.ones_like(block),
                             np.arange(shape.slots, dtype=np.int32), zeros, zeros,
                             zeros + shape.cap)
    return held[0]

  _timed(insert)
  _, prefill_s = _timed(insert)
  window = engine.windows[-1]

  def decode():
    held[0] = engine._decode(params, held[0], jax.random.key(2), np.float32(1.0),
                             np.float32(1.0), np.int32(0), np.bool_(False), window=window)
    return held[0]

  _timed(decode)
  _, decode_s = _timed(decode)
  step_s = decode_s / shape.steps_per_call
  step_bytes = decode_step_bytes(cfg, shape.slots, window)
  prefill_flops = forward_flops(cfg, np.full(u, shape.prompt_len))
  out_row = {
      "prompts": shape.prompts, "group": shape.group, "prompt_len": shape.prompt_len,
      "cap": shape.cap, "slots": shape.slots, "useful_tokens": useful,
      "mean_length": float(lengths.mean()), "compile_s": compile_s, "generate_s": gen_s,
      "programs_traced_while_timed": retraced,
      "useful_tokens_per_s": useful / gen_s, "slot_utilisation": useful / max(stats.slot_steps, 1),
      "decode_window": window, "decode_step_s": step_s, "decode_step_bytes": step_bytes,
      "decode_roofline_s": step_bytes / peaks["hbm"] if peaks["hbm"] else None,
      "prefill_block_prompts": u, "prefill_s": prefill_s, "prefill_flops": prefill_flops,
      "prefill_tokens_per_s": u * shape.prompt_len / prefill_s}
  out_row["decode_hbm_fraction"] = _frac(out_row["decode_roofline_s"], step_s)
  out_row["prefill_flop_fraction"] = _frac(prefill_flops / prefill_s, peaks["flops"])
  return out_row, (prompt_BxP, lengths, out), engine


def update_section(cfg, graphdef, params, shape: Shape, peaks, optimizer
                   ) -> tuple[dict, update.PolicyUpdate]:
  seq = shape.prompt_len + shape.cap
  ucfg = update.UpdateConfig(micro_batch=shape.micro_batch, logits_chunk=shape.logits_chunk)
  programs = update.make_update_fn(graphdef, optimizer, ucfg)
  rows = random_batch(0, rows=shape.update_rows, prompt_len=shape.prompt_len,
                      completion_len=shape.cap, vocab_size=cfg.vocab_size, group_size=shape.group)
  rows.mask_NxT[:] = 1  # full-length rows: every position is work, as the FLOP count assumes
  rows.loss_mask_NxT[:, shape.prompt_len:] = 1
  tokens = shape.update_rows * seq
  state = _train_state(params, optimizer)
  pi_old = lambda: programs.old_logp(state.params, rows.tokens_NxT, rows.mask_NxT)
  _, pi_compile_s = _timed(pi_old)
  _, pi_s = _timed(pi_old)
  batch = programs.device_batch(state.params, rows)
  (state, _), up_compile_s = _timed(lambda: programs(state, batch))
  batch = programs.device_batch(state.params, rows)
  (state, _), up_s = _timed(lambda: programs(state, batch))
  fwd = forward_flops(cfg, np.full(shape.update_rows, seq))
  out = {"rows": shape.update_rows, "seq": seq, "micro_batch": shape.micro_batch,
         "logits_chunk": shape.logits_chunk, "attn_chunk": shape.attn_chunk, "tokens": tokens,
         "pi_old_compile_s": pi_compile_s, "pi_old_s": pi_s, "pi_old_flops": fwd,
         "pi_old_tokens_per_s": tokens / pi_s, "update_compile_s": up_compile_s,
         "update_s": up_s, "update_flops": 3 * fwd, "update_tokens_per_s": tokens / up_s}
  out["pi_old_mfu"] = _frac(fwd / pi_s, peaks["flops"])
  out["update_mfu"] = _frac(3 * fwd / up_s, peaks["flops"])
  return out, programs


def _train_state(params, optimizer) -> update.TrainState:
  """A train state on a copy of `params` (the update donates its state; the other sections keep
  theirs), placed on the device up front as the main loop places it: one layout, one compile."""
  return jax.device_put(update.init_train_state(jax.tree.map(jnp.copy, params), optimizer, 0),
                        jax.devices()[0])


def gap_section(programs: update.PolicyUpdate, params, rollout, shape: Shape) -> dict:
  _, _, out = rollout
  n = min(shape.gap_rows, out.tokens_NxR.shape[0])
  rows = (f.name for f in dataclasses.fields(out) if f.name.endswith(("P", "R", "N")))
  first = dataclasses.replace(out, **{name: getattr(out, name)[:n] for name in rows})
  gap, old_NxR = sampled_gap(programs, params, first)
  return {"rows": n, "tokens": int(first.mask_NxR.sum()), **gap,
          "sampler_logp": first.logp_NxR.tolist(), "old_logp": old_NxR.tolist(),
          "mask": first.mask_NxR.tolist()}


def torch_section(cfg, graphdef, params, engine: Engine, rollout, shape: Shape) -> dict:
  import torch
  import transformers

  from dots_jax.model.hf_io import export_policy
  prompt_BxP, lengths, _ = rollout
  device = "cuda" if torch.cuda.is_available() else "cpu"
  rows = min(shape.torch_rows, shape.prompts * shape.group)
  prompts = max(rows // shape.group, 1)
  lens = np.minimum(lengths[:prompts * shape.group], shape.torch_cap)
  with tempfile.TemporaryDirectory() as tmp:
    export_policy(cfg, nnx.merge(graphdef, params), tmp)
    hf = transformers.Qwen2ForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16).to(device)
  ids = torch.from_numpy(prompt_BxP[:prompts].astype(np.int64)).to(device)
  kwargs = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=None,
                pad_token_id=0, num_return_sequences=shape.group)
  longest = int(lens.max())
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  with torch.inference_mode():
    hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, **kwargs)
    sync()
    t0 = time.perf_counter()
    hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=longest,
                min_new_tokens=longest, **kwargs)
    sync()
    hf_s = time.perf_counter() - t0
  # Ours on the same prompts and forced lengths (the engine's programs are already compiled).
  _, ours_s = _timed(lambda: engine.generate(
      params, prompt_BxP[:prompts], np.ones_like(prompt_BxP[:prompts]), jax.random.key(3),
      num_samples=shape.group, temperature=1.0, limits_N=lens))
  useful = int(lens.sum())
  # Forward + backward of a token-mean log-likelihood over full-length rows.
  seq = shape.prompt_len + shape.cap
  x = torch.randint(1, cfg.vocab_size, (shape.torch_train_rows, seq), device=device)
  hf.train()
  hf.gradient_checkpointing_enable()

  def fwd_bwd() -> float:
    sync()
    t0 = time.perf_counter()
    logits = hf(input_ids=x).logits
    loss = -torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, x[:, 1:, None]).mean()
    loss.backward()
    hf.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t0

  fwd_bwd()
  train_s = fwd_bwd()
  return {"device": device, "transformers": transformers.__version__, "torch": torch.__version__,
          "rows": len(lens), "cap": shape.torch_cap, "useful_tokens": useful, "generate_s": hf_s,
          "generate_useful_tokens_per_s": useful / hf_s, "ours_generate_s": ours_s,
          "ours_useful_tokens_per_s": useful / ours_s, "generate_ratio": hf_s / ours_s,
          "train_rows": shape.torch_train_rows, "train_seq": seq, "train_s": train_s,
          "train_tokens_per_s": shape.torch_train_rows * seq / train_s}


def e2e_section(cfg, params, programs: update.PolicyUpdate, optimizer, engine: Engine,
                shape: Shape, rng) -> dict:
  """Three dots_rr steps: the first rolls out a reference set (label-only, DOTS's round start)
  and a full batch of fresh groups; the next two half fresh, half replayed (sigma = 0.5)."""
  seq = shape.prompt_len + shape.cap
  b = shape.e2e_prompts
  buffer = ReplayBuffer(capacity=b, group_size=shape.group, total_len=seq, batch_groups=b,
                        fresh_fraction=0.5, warmup_steps=1)
  learner = Learner(programs, batch_groups=b, adv_norm="grpo", seed=0, buffer=buffer)
  state = _train_state(params, optimizer)
  steps = []
  for step in range(3):
    t_step = time.perf_counter()
    ref_s = 0.0
    if step == 0:  # DOTS's reference set: rolled out for labels only
      ref = rng.integers(1, cfg.vocab_size, (shape.e2e_ref_prompts, shape.prompt_len),
                         dtype=np.int32)
      _, ref_s = _timed(lambda: engine.generate(
          state.params, ref, np.ones_like(ref), jax.random.key(100), num_samples=shape.group,
          temperature=1.0, limits_N=long_tailed_lengths(ref.size // shape.prompt_len * shape.group,
                                                        shape.cap, rng)))
    q = learner.fresh_groups(step)
    prompts = rng.integers(1, cfg.vocab_size, (q, shape.prompt_len), dtype=np.int32)
    limits = long_tailed_lengths(q * shape.group, shape.cap, rng)
    sample, roll_s = _timed(lambda: engine.generate(
        state.params, prompts, np.ones_like(prompts), jax.random.key(step), num_samples=shape.group,
        temperature=1.0, limits_N=limits))
    rewards = rng.integers(0, 2, q * shape.group).astype(np.float32)
    fresh = groups_from_samples(sample, rewards, np.arange(q) + step * q, shape.group, seq, 0)
    state, learned = learner.learn(state, fresh, step)
    steps.append({"step": step, "fresh_groups": q, "replayed_groups": learned.replayed,
                  "reference_s": ref_s, "rollout_s": roll_s,
                  "pi_old_s": learned.seconds["pi_old"], "update_s": learned.seconds["update"],
                  "step_s": time.perf_counter() - t_step})
  return {"prompts_per_step": b, "reference_prompts": shape.e2e_ref_prompts, "steps": steps}


# ----- the run ----------------------------------------------------------------------------------

def _fmt(x: Any, spec: str) -> str:
  return "n/a" if x is None else format(x, spec)


def table(report: dict) -> list[str]:
  r, u, g = report["rollout"], report["update"], report["gap"]
  lines = [
      f"device     {report['device_kind']} ({report['platform']}, jax {report['jax']}); peaks: "
      f"{_fmt(report['peaks']['flops'] and report['peaks']['flops'] / 1e12, '.0f')} TFLOP/s, "
      f"{_fmt(report['peaks']['hbm'] and report['peaks']['hbm'] / 1e12, '.2f')} TB/s "
      f"({report['peaks']['source']})",
      f"model      {report['model']}",
      f"rollout    {r['prompts']}x{r['group']} prompts {r['prompt_len']} cap {r['cap']}, "
      f"{r['slots']} slots: {r['useful_tokens_per_s']:,.0f} useful tokens/s, slot utilisation "
      f"{r['slot_utilisation']:.0%}, compile {r['compile_s']:.0f} s",
      f"decode     window {r['decode_window']}: {r['decode_step_s'] * 1e3:.2f} ms/step, roofline "
      f"{_fmt(r['decode_roofline_s'] and r['decode_roofline_s'] * 1e3, '.2f')} ms "
      f"({_fmt(r['decode_hbm_fraction'], '.0%')} of HBM bandwidth)",
      f"prefill    {r['prefill_block_prompts']}x{r['prompt_len']}: "
      f"{r['prefill_tokens_per_s']:,.0f} tokens/s ({_fmt(r['prefill_flop_fraction'], '.0%')} of "
      f"peak FLOP/s)",
      f"pi_old     {u['rows']}x{u['seq']}: {u['pi_old_tokens_per_s']:,.0f} tokens/s, MFU "
      f"{_fmt(u['pi_old_mfu'], '.0%')}",
      f"update     {u['rows']}x{u['seq']} (micro {u['micro_batch']}): "
      f"{u['update_tokens_per_s']:,.0f} tokens/s, MFU {_fmt(u['update_mfu'], '.0%')}, compile "
      f"{u['update_compile_s']:.0f} s",
      f"gap        {g['rows']} rows, {g['tokens']:,} tokens: max {g['logp_gap_max']:.3g} mean "
      f"{g['logp_gap_mean']:.3g} p99 {g['logp_gap_p99']:.3g} nats, ratio off >10% "
      f"{g['ratio_off_frac']:.2%}"]
  t = report.get("torch")
  if t:
    lines.append(
        f"reference  transformers {t['transformers']}: generate {t['generate_useful_tokens_per_s']:,.0f}"
        f" useful tokens/s vs ours {t['ours_useful_tokens_per_s']:,.0f} ({t['generate_ratio']:.2f}x "
        f"ours) on {t['rows']} rows capped at {t['cap']}; fwd+bwd {t['train_tokens_per_s']:,.0f} tokens/s vs our update "
        f"{u['update_tokens_per_s']:,.0f} ({u['update_tokens_per_s'] / t['train_tokens_per_s']:.2f}x)")
  for s in report["e2e"]["steps"]:
    lines.append(
        f"dots_rr    step {s['step']}: {s['step_s']:.1f} s = reference {s['reference_s']:.1f} + "
        f"rollout {s['rollout_s']:.1f} + pi_old {s['pi_old_s']:.1f} + update {s['update_s']:.1f} "
        f"({s['fresh_groups']} fresh, {s['replayed_groups']} replayed groups)")
  return lines


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This benchmark's flags (on `fv`; tests parse their own)."""
  flags.DEFINE_string("variant", 'Math-1.5B', 'variant', flag_values=fv)
  flags.DEFINE_bool("quick", False, 'a ~2-minute cut', flag_values=fv)
  flags.DEFINE_bool("micro", False, 'tiny shapes: seconds on CPU (tests)', flag_values=fv)
  flags.DEFINE_float("peak_tflops", 0.0, "override the table's bf16 peak", flag_values=fv)
  flags.DEFINE_float("hbm_tbps", 0.0, "override the table's HBM bandwidth", flag_values=fv)
  flags.DEFINE_bool("skip_torch", False, 'skip torch', flag_values=fv)
  flags.DEFINE_integer("seed", 0, 'seed', flag_values=fv)
  flags.DEFINE_string("out", 'device.json', 'out', flag_values=fv)


def main(argv: list[str]) -> None:
  del argv
  run(flags.FLAGS)


def run(args: Any) -> dict:
  """The benchmark with parsed flags `args` (attribute access)."""
  t_start = time.perf_counter()
  shape = Shape.for_args(args)
  cfg = shape.model_config(args.micro)
  dev = jax.devices()[0]
  peaks = peaks_for(dev.device_kind, args.peak_tflops, args.hbm_tbps)
  graphdef, params = nnx.split(qwen2.init_model(cfg, args.seed))
  params = jax.device_put(params, dev)
  rng = np.random.default_rng(args.seed)
  report: dict[str, Any] = {
      "device_kind": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
      "devices": jax.device_count(), "peaks": peaks, "shape": dataclasses.asdict(shape),
      "model": (f"{shape.variant} shapes, {cfg.num_hidden_layers} layers, hidden "
                f"{cfg.hidden_size}, vocab {cfg.vocab_size}, {cfg.num_params() / 1e9:.3f}B params "
                f"({cfg.dtype} compute, {cfg.param_dtype} params, {cfg.activation_dtype} "
                f"activations)"),
      "matmul_params": matmul_params(cfg)}
  optimizer = update.make_optimizer(bench_optimizer_settings(), total_steps=10)

  def section(name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    row = out[0] if isinstance(out, tuple) else out
    row["section_s"] = time.perf_counter() - t0
    report[name] = row
    print(f"-- {name} done ({row['section_s']:.0f} s)", flush=True)
    return out

  _, rollout, engine = section("rollout", lambda: rollout_section(cfg, graphdef, params, shape,
                                                                  peaks, rng))
  _, programs = section("update", lambda: update_section(cfg, graphdef, params, shape, peaks,
                                                         optimizer))
  section("gap", lambda: gap_section(programs, params, rollout, shape))
  if not args.skip_torch:
    section("torch", lambda: torch_section(cfg, graphdef, params, engine, rollout, shape))
  section("e2e", lambda: e2e_section(cfg, params, programs, optimizer, engine, shape, rng))
  report["total_s"] = time.perf_counter() - t_start
  report["table"] = table(report)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print("\n".join(report["table"]))
  print(f"device suite: {dev.device_kind} {shape.variant} done in {report['total_s']:.0f} s "
        f"({args.out})", flush=True)
  return report


if __name__ == "__main__":
  define_flags()
  app.run(main)
