"""Rollouts with long-tailed answer lengths: the slot engine vs the static batch vs `transformers`.

  python -m dots_jax.bench.rollout                      # 64 prompts x G=8, Qwen2-shaped 512 x 8 layers
  python -m dots_jax.bench.rollout --prompts 8 --cap 32 --layers 2 --slots 16 --skip_hf  # smoke

Math answers are long-tailed: most far shorter than the cap, a few hitting it. Each completion's
length is drawn once from a log-normal with median cap/5 whose upper 5% is cut at the cap, and
forced: the engine ends each completion at its length (a per-completion limit, as an EOS there
would); the static batch and `transformers.generate` decode every row until the longest ends (a
batch ends with its longest row), so they run cap steps. Useful tokens are the drawn lengths' sum,
the same for all three; tokens/s = useful tokens / wall time of one call, compilation excluded.
Peak memory of our programs is XLA's `memory_analysis()` of each compiled program (arguments +
outputs - aliased + temporaries; the largest program of a run); transformers' is not measured.
The last line reads `engine vs static batch: <R>x useful tokens/s, <M>x peak memory`.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dots_jax.bench.shapes import define_model_flags, random_setup  # noqa: E402
from dots_jax.rollout.engine import Engine  # noqa: E402
from dots_jax.rollout.sampler import Sampler  # noqa: E402


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This benchmark's flags (on `fv`; tests parse their own)."""
  define_model_flags(fv, vocab=8192)
  flags.DEFINE_integer("prompts", 64, 'prompts', flag_values=fv)
  flags.DEFINE_integer("samples", 8, 'G completions per prompt', flag_values=fv)
  flags.DEFINE_integer("prompt_len", 32, 'prompt len', flag_values=fv)
  flags.DEFINE_integer("cap", 128, 'max new tokens', flag_values=fv)
  flags.DEFINE_integer("slots", 64, 'slots', flag_values=fv)
  flags.DEFINE_integer("steps_per_call", 8, 'steps per call', flag_values=fv)
  flags.DEFINE_integer("windows", 4, 'windows', flag_values=fv)
  flags.DEFINE_bool("skip_hf", False, 'skip hf', flag_values=fv)
  flags.DEFINE_integer("seed", 0, 'seed', flag_values=fv)


def long_tailed_lengths(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
  """Log-normal lengths with median cap/5 and 5% of the mass at or above the cap (then cut)."""
  sigma = np.log(5.0) / 1.6449  # P(L >= cap) = P(Z >= log(5) / sigma) = 0.05
  lengths = np.exp(np.log(cap / 5.0) + sigma * rng.standard_normal(n))
  return np.clip(np.round(lengths), 1, cap).astype(np.int32)


def _peak_bytes(jitted, *args, **kwargs) -> int:
  ma = jitted.lower(*args, **kwargs).compile().memory_analysis()
  return int(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
             + ma.temp_size_in_bytes)


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def main(argv: list[str]) -> None:
  del argv
  args = flags.FLAGS
  cfg, graphdef, params, prompt_BxP, mask_BxP, rng = random_setup(args, args.prompts,
                                                                   args.prompt_len, args.cap)
  n = args.prompts * args.samples
  lengths = long_tailed_lengths(n, args.cap, rng)
  useful = int(lengths.sum())
  print(f"model: {cfg.num_params() / 1e6:.1f}M params, hidden {args.hidden}, {args.layers} layers; "
        f"{args.prompts} prompts x G={args.samples}, prompt {args.prompt_len}, cap {args.cap}; jax "
        f"{jax.__version__} on {jax.devices()[0].platform}", flush=True)
  q = np.quantile(lengths, [0.1, 0.5, 0.9, 0.99])
  print(f"lengths: log-normal, median cap/5, 5% at the cap: mean {lengths.mean():.1f}, p10/p50/"
        f"p90/p99 {q[0]:.0f}/{q[1]:.0f}/{q[2]:.0f}/{q[3]:.0f}, at cap {np.mean(lengths == args.cap):.1%}; "
        f"useful tokens {useful:,}", flush=True)
  key = jax.random.key(args.seed)

  # Static batch: every row decodes until the longest (cap) ends.
  sampler = Sampler(graphdef, cfg, max_prompt_len=args.prompt_len, max_new_tokens=args.cap,
                    eos_ids=(), pad_id=0)
  # The token limit is traced: a 1-token call compiles the very program timed next.
  sampler.generate(params, prompt_BxP, mask_BxP, key, num_samples=args.samples, temperature=1.0,
                   max_new_tokens=1)
  _, static_s = _timed(lambda: sampler.generate(params, prompt_BxP, mask_BxP, key,
                                                num_samples=args.samples, temperature=1.0))
  static_mem = _peak_bytes(sampler._generate_jit, params, prompt_BxP, mask_BxP, key,
                           np.float32(1.0), np.float32(1.0), np.int32(0), np.bool_(False),
                           np.int32(args.cap), num_samples=args.samples)
  static_tps = useful / static_s
  print(f"static batch: {static_tps:10.1f} useful tokens/s ({static_s:.2f} s; {n} rows x "
        f"{args.cap} steps), peak {static_mem / 2**20:.1f} MiB", flush=True)

  engine = Engine(graphdef, cfg, slots=args.slots, max_prompt_len=args.prompt_len,
                  max_new_tokens=args.cap, eos_ids=(), pad_id=0,
                  steps_per_call=args.steps_per_call, windows=args.windows)
  engine.warmup(params, args.prompt_len, args.samples)
  out, engine_s = _timed(lambda: engine.generate(params, prompt_BxP, mask_BxP, key,
                                                 num_samples=args.samples, temperature=1.0,
                                                 limits_N=lengths))
  if not np.array_equal(out.lengths_N, lengths):
    raise RuntimeError("the engine did not end every completion at its forced length")
  stats = engine.last_stats
  state = engine._empty_state()
  zeros = np.zeros((args.slots,), np.int32)
  engine_mem = max(  # every program the engine compiles: each window, each prefill block size
      [_peak_bytes(engine._decode, params, state, key, np.float32(1.0), np.float32(1.0),
                   np.int32(0), np.bool_(False), window=w) for w in engine.windows]
      + [_peak_bytes(engine._insert, params, state, prompt_BxP[:u], mask_BxP[:u], zeros, zeros,
                     zeros, zeros + 1) for u in engine.prefill_sizes(args.samples)])
  engine_tps = useful / engine_s
  print(f"engine:       {engine_tps:10.1f} useful tokens/s ({engine_s:.2f} s; {args.slots} slots, "
        f"{stats.decode_calls} decode calls x {args.steps_per_call} steps, {stats.insert_calls} "
        f"inserts, windows {sorted(set(stats.windows))}, slot utilisation "
        f"{useful / stats.slot_steps:.0%}), peak {engine_mem / 2**20:.1f} MiB", flush=True)

  if not args.skip_hf:
    import torch
    import transformers
    from dots_jax.model.hf_io import export_policy
    with tempfile.TemporaryDirectory() as workdir:
      export_policy(cfg, nnx.merge(graphdef, params), workdir)
      hf = transformers.Qwen2ForCausalLM.from_pretrained(workdir, dtype=torch.float32).eval()
    ids = torch.from_numpy(prompt_BxP.astype(np.int64))
    kwargs = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=None,
                  pad_token_id=0)
    with torch.inference_mode():
      hf.generate(input_ids=ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=2,
                  **kwargs)
      t0 = time.perf_counter()
      hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                  num_return_sequences=args.samples, max_new_tokens=args.cap,
                  min_new_tokens=args.cap, **kwargs)
      hf_s = time.perf_counter() - t0
    hf_tps = useful / hf_s
    print(f"transformers: {hf_tps:10.1f} useful tokens/s ({hf_s:.2f} s; transformers "
          f"{transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads); engine / transformers {engine_tps / hf_tps:.2f}x", flush=True)
  print(f"engine vs static batch: {engine_tps / static_tps:.2f}x useful tokens/s, "
        f"{engine_mem / static_mem:.2f}x peak memory")


if __name__ == "__main__":
  define_flags()
  app.run(main)
