"""Rollout throughput: our jitted sampler vs `transformers` `generate` on the same random Qwen2 model.

  python -m dots_jax.bench.sampler                       # the issue's shape (slow on a shared CPU)
  python -m dots_jax.bench.sampler --layers 2 --vocab 4096 --batch 4 --new_tokens 16   # smoke test

Both engines sample (temperature 1, no top-k/top-p) and are forced to produce exactly `new_tokens`
tokens per row (no stop tokens). Tokens/s counts generated tokens (batch * samples * new_tokens) over
the wall time of one full generate call (best of --repeats); our compile time is measured by a first,
untimed call and reported separately. transformers loads the same float32 weights, written by `hf_io.export_policy`.
"""

from __future__ import annotations

from typing import Any
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dots_jax.bench.shapes import define_model_flags, random_setup  # noqa: E402
from dots_jax.model.hf_io import export_policy  # noqa: E402
from dots_jax.model.qwen2 import Qwen2Config  # noqa: E402
from dots_jax.rollout.sampler import Sampler  # noqa: E402


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This benchmark's flags (on `fv`; tests parse their own)."""
  define_model_flags(fv, vocab=32768)
  flags.DEFINE_integer("batch", 32, 'prompts', flag_values=fv)
  flags.DEFINE_integer("samples", 4, 'completions per prompt', flag_values=fv)
  flags.DEFINE_integer("prompt_len", 64, 'prompt len', flag_values=fv)
  flags.DEFINE_integer("new_tokens", 128, 'new tokens', flag_values=fv)
  flags.DEFINE_integer("repeats", 1, 'timed calls per engine (best is reported)', flag_values=fv)
  flags.DEFINE_bool("skip_hf", False, 'only time our sampler', flag_values=fv)
  flags.DEFINE_integer("seed", 0, 'seed', flag_values=fv)


def _hf_model(cfg: Qwen2Config, graphdef: nnx.GraphDef, params: nnx.State, workdir: str):
  """transformers' Qwen2ForCausalLM with exactly our float32 weights (exported, then loaded)."""
  import torch
  import transformers


  export_policy(cfg, nnx.merge(graphdef, params), workdir)
  return transformers.Qwen2ForCausalLM.from_pretrained(workdir, dtype=torch.float32).eval()


def _time_hf(hf, prompt_BxP: np.ndarray, args: Any) -> float:
  import torch

  ids = torch.from_numpy(prompt_BxP.astype(np.int64))
  attn = torch.ones_like(ids)
  kwargs = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=None, pad_token_id=0)
  with torch.inference_mode():  # warm-up: first-call overheads are not generation speed
    hf.generate(input_ids=ids[:1], attention_mask=attn[:1], max_new_tokens=2, **kwargs)
  best = float("inf")
  for rep in range(args.repeats):
    torch.manual_seed(args.seed + rep)
    t0 = time.perf_counter()
    with torch.inference_mode():
      out = hf.generate(input_ids=ids, attention_mask=attn, num_return_sequences=args.samples,
                        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **kwargs)
    best = min(best, time.perf_counter() - t0)
    if out.shape[1] != prompt_BxP.shape[1] + args.new_tokens:
      raise RuntimeError(f"transformers generated {out.shape[1] - prompt_BxP.shape[1]} tokens, "
                         f"expected {args.new_tokens}")
  return best


def main(argv: list[str]) -> None:
  del argv
  args = flags.FLAGS
  cfg, graphdef, params, prompt_BxP, mask_BxP, _ = random_setup(args, args.batch, args.prompt_len,
                                                                 args.new_tokens)
  n_tokens = args.batch * args.samples * args.new_tokens
  print(f"model: {cfg.num_params() / 1e6:.1f}M params, hidden {args.hidden}, {args.layers} layers, "
        f"{args.heads}q/{args.kv_heads}kv heads, vocab {args.vocab}; batch {args.batch} x "
        f"{args.samples} samples, prompt {args.prompt_len}, {args.new_tokens} new tokens; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}", flush=True)

  sampler = Sampler(graphdef, cfg, max_prompt_len=args.prompt_len, max_new_tokens=args.new_tokens,
                    eos_ids=(), pad_id=0)

  def ours(seed: int, new_tokens: int | None = None):
    return sampler.generate(params, prompt_BxP, mask_BxP, jax.random.key(seed),
                            num_samples=args.samples, temperature=1.0, top_p=1.0, top_k=0,
                            max_new_tokens=new_tokens)

  # The per-call token limit is traced, so a 1-token call runs the very program being timed:
  # the first one measures compile + prefill, the second prefill alone.
  t0 = time.perf_counter()
  ours(args.seed, new_tokens=1)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  ours(args.seed, new_tokens=1)
  prefill = time.perf_counter() - t0
  best = float("inf")
  for rep in range(args.repeats):
    t0 = time.perf_counter()
    out = ours(args.seed + 1 + rep)
    best = min(best, time.perf_counter() - t0)
  if int(out.mask_NxR.sum()) != n_tokens:
    raise RuntimeError(f"our sampler generated {int(out.mask_NxR.sum())} tokens, expected {n_tokens}")
  ours_tps = n_tokens / best
  print(f"ours:         {ours_tps:10.1f} tokens/s  ({best:.2f} s per call, of which prefill + first "
        f"token {prefill:.2f} s; compile ~{first - prefill:.1f} s)", flush=True)
  if args.new_tokens > 1 and best > prefill:
    decode_tps = (n_tokens - args.batch * args.samples) / (best - prefill)
    print(f"ours, decode steps only: {decode_tps:10.1f} tokens/s", flush=True)
  if args.skip_hf:
    return

  import torch
  import transformers

  with tempfile.TemporaryDirectory() as workdir:
    hf = _hf_model(cfg, graphdef, params, workdir)
  hf_s = _time_hf(hf, prompt_BxP, args)
  hf_tps = n_tokens / hf_s
  print(f"transformers: {hf_tps:10.1f} tokens/s  ({hf_s:.2f} s per call; transformers "
        f"{transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
  print(f"ratio ours / transformers: {ours_tps / hf_tps:.2f}x")


if __name__ == "__main__":
  define_flags()
  app.run(main)
