"""Tokens/s of one GRPO update step: our jitted JAX step vs the same step in PyTorch `transformers`.

Both sides run the identical RL step on the identical random Qwen2 weights (ours exported with
`hf_io.export_policy`, loaded by `transformers.Qwen2ForCausalLM`): a no-grad forward for pi_old, a
forward + backward of the token-mean clipped GRPO loss, global-norm clipping and one AdamW step.
As a check that both compute the same thing, the mean log-prob of the completion tokens under the
final weights (after 1 + steps updates) is printed for both.

  python -m dots_jax.bench.train_step            # CPU default: D=512, 8 layers, 8/2 heads, V=32k, 8x256
  python -m dots_jax.bench.train_step --steps 3 --batch 8 --seq 256 --skip_torch
  # long sequences at Qwen2.5's vocabulary: 20 GB of float32 logits alone without chunking
  python -m dots_jax.bench.train_step --batch 8 --seq 4096 --vocab 151936 --hidden 128 \
      --intermediate 512 --layers 2 --heads 4 --kv_heads 2 --remat --logits_chunk 256 \
      --attn_chunk 512 --steps 1 --skip_torch --memory

Tokens/s counts all B*T positions of the batch per step (prompt and completion, as the model processes
them). Timings exclude compilation (JAX) and the first step (both). The two sides' timed steps alternate,
so a shared machine's drifting speed falls on both; the ratio is the median of the per-pair ratios.
"""

from __future__ import annotations

from typing import Any
import os
import resource
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dots_jax.bench.shapes import define_model_flags, model_config
from dots_jax.config_base import base_config
from dots_jax.run import settings
from dots_jax.model import qwen2
from dots_jax.model.hf_io import export_policy
from dots_jax.rl import update
from dots_jax.rl.batch import RLBatch
from dots_jax.rl.logprobs import logprobs_and_entropy
from dots_jax.bench.random_batch import random_batch


def bench_cfg(args: Any, attn_chunk: int | None = None) -> qwen2.Qwen2Config:
  return model_config(args, eos_token_id=1, bos_token_id=1, dtype=args.dtype,
                      param_dtype=args.dtype, remat=args.remat,
                      attn_chunk=args.attn_chunk if attn_chunk is None else attn_chunk)


def _update_parts(cfg: qwen2.Qwen2Config, args: Any, logits_chunk: int):
  config = base_config()
  config.rl.lr = 1e-3
  config.rl.micro_batch = args.micro_batch
  config.rl.logits_chunk = logits_chunk
  graphdef, params = nnx.split(qwen2.init_model(cfg, 0))
  s = settings.read(config)
  opt = update.make_optimizer(s.optimizer, total_steps=100)
  ucfg = s.update
  return graphdef, params, opt, update.make_update_fn(graphdef, opt, ucfg)


def compiled_bytes(cfg: qwen2.Qwen2Config, batch: RLBatch, args: Any,
                   logits_chunk: int) -> int:
  """Per-device bytes XLA allocates for the update program (shapes only: nothing runs)."""
  graphdef, params, opt, fn = _update_parts(cfg, args, logits_chunk)
  state = jax.eval_shape(lambda p: update.init_train_state(p, opt, seed=0), params)
  rows = update.DeviceBatch.abstract(*batch.tokens_NxT.shape)
  ma = fn.update_fn.lower(state, rows, None).compile().memory_analysis()
  return int(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
             + ma.temp_size_in_bytes)


class JaxSide:
  """Our update, compiled and run once; `step()` times one more."""

  def __init__(self, cfg: qwen2.Qwen2Config, batch: RLBatch, args: Any):
    self.graphdef, params, opt, self.fn = _update_parts(cfg, args, args.logits_chunk)
    # The update donates its state: keep a copy of the initial weights for the torch side.
    self.initial_model = nnx.merge(self.graphdef, jax.tree.map(jnp.copy, params))
    self.batch, self.logits_chunk = batch, args.logits_chunk
    self.state = update.init_train_state(params, opt, seed=0)
    self.compile_s = self.step()

  def step(self) -> float:
    t0 = time.perf_counter()
    # pi_old (a no-grad forward, as on the torch side), then the update.
    self.state, m = self.fn(self.state, self.fn.device_batch(self.state.params, self.batch))
    jax.block_until_ready(m)
    return time.perf_counter() - t0

  def mean_logp(self) -> float:
    batch, chunk = self.batch, self.logits_chunk
    return float(jax.jit(lambda p: _mean_loss_token_logp(
        logprobs_and_entropy(nnx.merge(self.graphdef, p), batch.tokens_NxT, batch.mask_NxT,
                             chunk=chunk)[0],
        batch.loss_mask_NxT))(self.state.params))


def _mean_loss_token_logp(logp_NxT, loss_mask_NxT):
  return (logp_NxT * loss_mask_NxT).sum() / loss_mask_NxT.sum()


class TorchSide:
  """The same step in PyTorch transformers (eager, sdpa attention), run once; `step()` times one
  more."""

  def __init__(self, model_dir: str, batch: RLBatch):
    import torch
    import transformers

    self.torch = torch
    torch.manual_seed(0)
    self.model = transformers.Qwen2ForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    self.model.train()
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.0)
    self.tokens = torch.from_numpy(batch.tokens_NxT).long()
    self.mask = torch.from_numpy(batch.mask_NxT).long()
    self.loss_mask_NxT = torch.from_numpy(batch.loss_mask_NxT).float()
    self.adv = torch.from_numpy(batch.adv_N)[:, None]
    self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
    self.step()

  def _logp(self):
    logits = self.model(input_ids=self.tokens, attention_mask=self.mask,
                        position_ids=self.positions).logits.float()
    return self.torch.log_softmax(logits[:, :-1], -1).gather(-1, self.tokens[:, 1:, None])[..., 0]

  def step(self) -> float:
    torch = self.torch
    t0 = time.perf_counter()
    with torch.no_grad():
      old = self._logp()
    lp = self._logp()
    r = torch.exp(lp - old)
    obj = torch.minimum(r * self.adv, torch.clamp(r, 0.8, 1.2) * self.adv)
    loss_mask = self.loss_mask_NxT[:, 1:]
    loss = -(obj * loss_mask).sum() / loss_mask.sum()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.opt.step()
    return time.perf_counter() - t0

  def mean_logp(self) -> float:
    with self.torch.no_grad():
      lp = self.torch.nn.functional.pad(self._logp(), (1, 0))
    return float(_mean_loss_token_logp(lp, self.loss_mask_NxT))


def _rate(times: list[float] | np.ndarray, tokens: int) -> str:
  """'step S s (median of n), R tokens/s' of one side's timed steps."""
  return (f"step {np.median(times):.2f}s (median of {len(times)}), "
          f"{tokens / np.median(times):,.0f} tokens/s")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This benchmark's flags (on `fv`; tests parse their own)."""
  define_model_flags(fv, vocab=32000)
  flags.DEFINE_integer("batch", 8, 'batch', flag_values=fv)
  flags.DEFINE_integer("seq", 256, 'seq', flag_values=fv)
  flags.DEFINE_integer("steps", 5, 'timed steps after the first, per side, taken in alternation (>= 1)', flag_values=fv)
  flags.DEFINE_integer("micro_batch", 0, 'micro batch', flag_values=fv)
  flags.DEFINE_string("dtype", 'float32', 'dtype', flag_values=fv)
  flags.DEFINE_bool("remat", False, 'remat', flag_values=fv)
  flags.DEFINE_integer("logits_chunk", 0, 'rl.logits_chunk (0 = off)', flag_values=fv)
  flags.DEFINE_integer("attn_chunk", 0, 'model.attn_chunk (0 = off)', flag_values=fv)
  flags.DEFINE_bool("memory", False, "also print the update program's compiled bytes, with these chunks and without any (the latter compiled only)", flag_values=fv)
  flags.DEFINE_bool("skip_torch", False, 'skip torch', flag_values=fv)


def main(argv: list[str]) -> None:
  del argv
  run(flags.FLAGS)


def run(args: Any) -> None:
  """The benchmark with parsed flags `args` (attribute access)."""

  cfg = bench_cfg(args)
  prompt = args.seq // 4
  batch = random_batch(0, rows=args.batch, prompt_len=prompt, completion_len=args.seq - prompt,
                       vocab_size=args.vocab)
  batch.mask_NxT[:] = 1  # full-length rows: every position is real work on both sides
  batch.loss_mask_NxT[:, prompt:] = 1
  ntok = args.batch * args.seq
  print(f"model: {cfg.num_params() / 1e6:.1f}M params, batch {args.batch}x{args.seq}, "
        f"{args.dtype}, backend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"logits chunk {args.logits_chunk or 'off'}, attention blocks {args.attn_chunk or 'off'}")
  if args.memory:
    ours = compiled_bytes(cfg, batch, args, args.logits_chunk)
    full = compiled_bytes(bench_cfg(args, attn_chunk=0), batch, args, 0)
    print(f"update program: {ours / 2**30:.2f} GiB with these chunks, {full / 2**30:.2f} GiB "
          f"without (full [B, T, V] logits and [B, heads, T, T] scores); machine memory "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB", flush=True)
  ours = JaxSide(cfg, batch, args)
  print(f"jax  : compile+first {ours.compile_s:.1f}s", flush=True)
  if args.skip_torch:
    jt = [ours.step() for _ in range(args.steps)]
    print(f"jax  : {_rate(jt, ntok)}; peak resident memory of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)
    print(f"jax  : final mean logp {ours.mean_logp():.6f}")
    return
  with tempfile.TemporaryDirectory() as tmp:
    export_policy(cfg, ours.initial_model, os.path.join(tmp, "m"))
    theirs = TorchSide(os.path.join(tmp, "m"), batch)
  # Alternate the two sides step by step, so that drifts of a shared machine's speed fall on both
  # alike; the ratio is the median of the per-pair ratios.
  jt, tt = [], []
  for _ in range(args.steps):
    jt.append(ours.step())
    time.sleep(0.5)  # let the other side's worker threads go idle
    tt.append(theirs.step())
    time.sleep(0.5)
  jt, tt = np.array(jt), np.array(tt)
  print(f"jax  : {_rate(jt, ntok)}, final mean logp {ours.mean_logp():.6f}")
  print(f"torch: {_rate(tt, ntok)}, final mean logp {theirs.mean_logp():.6f}")
  print(f"ratio jax/torch tokens/s: {np.median(tt / jt):.2f}x (per-pair ratios "
        f"{', '.join(f'{r:.2f}' for r in tt / jt)})")

if __name__ == "__main__":
  define_flags()
  app.run(main)
