"""The training-inference gap in bfloat16: the slot engine's per-token log-probs of what it sampled
against the trainer's pi_old of the same tokens (the update's own `old_logp` program), on a random
model at a released Qwen2.5 variant's layer shapes.

  python -m dots_jax.bench.logp_gap                         # 1.5B layer shapes, 2 layers, 16 x 1024
  python -m dots_jax.bench.logp_gap --layers 4 --new 256    # does the gap grow with depth?
  python -m dots_jax.bench.logp_gap --activation_dtype bfloat16   # activations rounded as transformers

The figures are those the training loop logs every step (`rollout/logp_gap_*`, computed by the same
`update.behaviour_gap`), plus the mean gap by quarter of the completion (does it grow with the
position?). The last line is the one to compare: the goal is max |delta log p| <= 0.01 nats at 16
sequences of 1024 tokens (docs/GAP.md). Imports only jax, flax, optax and numpy (the device suite
runs it on a bare accelerator image).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from absl import app, flags
import jax
import numpy as np
from flax import nnx

from dots_jax.model import qwen2, variants
from dots_jax.rl import update
from dots_jax.rl.batch import groups_from_samples, make_batch
from dots_jax.rollout.engine import Engine
from dots_jax.rollout.sampler import SampleOutput


@dataclasses.dataclass(frozen=True)
class GapReport:
  """One measurement: the gap figures, by quarter of the completion, and what was measured."""

  logp_gap_mean: float
  logp_gap_p99: float
  logp_gap_max: float
  ratio_off_frac: float
  mean_by_quarter: tuple[float, ...]
  tokens: int
  generate_s: float
  setting: dict[str, Any]

  def line(self) -> str:
    s = self.setting
    return (f"logp gap ({s['dtype']} compute, {s['activation_dtype']} activations, {s['variant']} "
            f"layer shapes, {s['layers']} layers, {s['rows']}x{s['new_tokens']}): max "
            f"{self.logp_gap_max:.4g} mean {self.logp_gap_mean:.3g} p99 {self.logp_gap_p99:.3g} "
            f"nats, ratio off >10% {self.ratio_off_frac:.2%}")


def gap_model(variant: str, layers: int, dtype: str, activation_dtype: str, vocab: int = 0,
              init_std: float = 0.02) -> qwen2.Qwen2Config:
  """`variant`'s shapes with `layers` decoder blocks (and `vocab` tokens if > 0)."""
  cfg = variants.get_variant(variant, dtype=dtype, param_dtype=dtype,
                             activation_dtype=activation_dtype)
  over = dict(num_hidden_layers=layers, initializer_range=init_std, eos_token_id=None,
              bos_token_id=None)
  if vocab > 0:
    over["vocab_size"] = vocab
  return dataclasses.replace(cfg, **over)


def measure_gap(cfg: qwen2.Qwen2Config, graphdef: nnx.GraphDef, params: nnx.State, *,
                rows: int, prompt_len: int, new_tokens: int, slots: int, seed: int = 0,
                setting: dict[str, Any] | None = None) -> tuple[GapReport, dict[str, np.ndarray]]:
  """Samples `rows` completions of `new_tokens` (no stop token: every position counts) from random
  prompts with the slot engine at temperature 1, recomputes pi_old with the update's program, and
  returns the report and the arrays it was computed from (sampler and trainer log-probs, mask)."""
  rng = np.random.default_rng(seed)
  prompt_BxP = rng.integers(1, cfg.vocab_size, (rows, prompt_len), dtype=np.int32)
  engine = Engine(graphdef, cfg, slots=slots, max_prompt_len=prompt_len,
                  max_new_tokens=new_tokens, eos_ids=(), pad_id=0, steps_per_call=64)
  t0 = time.perf_counter()
  out = engine.generate(params, prompt_BxP, np.ones_like(prompt_BxP), jax.random.key(seed),
                        num_samples=1, temperature=1.0)
  generate_s = time.perf_counter() - t0
  optimizer = update.make_optimizer(bench_optimizer_settings(), total_steps=1)
  programs = update.make_update_fn(graphdef, optimizer, update.UpdateConfig())
  gap, old_NxR = sampled_gap(programs, params, out)
  delta = np.abs(old_NxR - out.logp_NxR) * out.mask_NxR
  quarters = tuple(float(q.sum() / max(m.sum(), 1)) for q, m in
                   zip(np.array_split(delta, 4, axis=1), np.array_split(out.mask_NxR, 4, axis=1)))
  report = GapReport(**gap, mean_by_quarter=quarters, tokens=int(out.mask_NxR.sum()),
                     generate_s=round(generate_s, 2), setting=dict(setting or {}))
  arrays = {"sampler_logp_NxR": out.logp_NxR, "old_logp_NxR": old_NxR, "mask_NxR": out.mask_NxR}
  return report, arrays


def sampled_gap(programs: update.PolicyUpdate, params: nnx.State, out: SampleOutput
                ) -> tuple[dict[str, float], np.ndarray]:
  """The gap figures (`update.behaviour_gap`) of a sampler output's rows, laid out as training
  lays them out (`groups_from_samples`, `make_batch`, the update's own pi_old), and pi_old of
  their completion tokens [N, R]."""
  n, r = out.tokens_NxR.shape
  groups = groups_from_samples(out, np.zeros(n, np.float32), np.arange(n), 1,
                               out.prompt_tokens_NxP.shape[1] + r, pad_id=0)
  batch = programs.device_batch(params, make_batch(groups, np.zeros(n, bool), "grpo"))
  return programs.gap(batch), np.asarray(batch.old_logp_NxT)[:, -r:]


def bench_optimizer_settings() -> update.OptimizerSettings:
  """The benchmarks' optimizer (they run on a bare accelerator image, without a config): AdamW at
  the reference configs' constant lr 1e-6, clip 1.0."""
  return update.OptimizerSettings(lr=1e-6, schedule="constant", warmup_steps=0, min_lr_ratio=0.0,
                                  b1=0.9, b2=0.999, adam_eps=1e-8, weight_decay=0.0,
                                  grad_clip=1.0, mu_dtype="float32")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """This benchmark's flags (on `fv`; tests parse their own)."""
  flags.DEFINE_string("variant", '1.5B', 'released Qwen2.5 shapes (dots_jax.model.variants)', flag_values=fv)
  flags.DEFINE_integer("layers", 2, "decoder blocks (the variant's width)", flag_values=fv)
  flags.DEFINE_integer("vocab", 0, "> 0: this vocabulary instead of the variant's", flag_values=fv)
  flags.DEFINE_integer("rows", 16, 'rows', flag_values=fv)
  flags.DEFINE_integer("prompt", 32, 'prompt', flag_values=fv)
  flags.DEFINE_integer("new", 1024, 'new', flag_values=fv)
  flags.DEFINE_integer("slots", 16, 'slots', flag_values=fv)
  flags.DEFINE_string("dtype", 'bfloat16', 'compute and parameter dtype', flag_values=fv)
  flags.DEFINE_string("activation_dtype", 'float32', 'activation dtype', flag_values=fv)
  flags.DEFINE_float("init_std", 0.02, 'init std', flag_values=fv)
  flags.DEFINE_integer("seed", 0, 'seed', flag_values=fv)
  flags.DEFINE_string("json", '', 'also write the report here', flag_values=fv)


def main(argv: list[str]) -> None:
  del argv
  run(flags.FLAGS)


def run(args: Any) -> GapReport:
  """The benchmark with parsed flags `args` (attribute access)."""
  cfg = gap_model(args.variant, args.layers, args.dtype, args.activation_dtype, args.vocab,
                  args.init_std)
  graphdef, params = nnx.split(qwen2.init_model(cfg, args.seed))
  setting = dict(variant=args.variant, layers=args.layers, vocab=cfg.vocab_size, rows=args.rows,
                 prompt_len=args.prompt, new_tokens=args.new, dtype=args.dtype,
                 activation_dtype=args.activation_dtype, backend=jax.default_backend(),
                 device_kind=jax.devices()[0].device_kind, jax=jax.__version__)
  report, _ = measure_gap(cfg, graphdef, params, rows=args.rows, prompt_len=args.prompt,
                          new_tokens=args.new, slots=args.slots, seed=args.seed, setting=setting)
  print(f"tokens {report.tokens}, generated in {report.generate_s:.1f}s on {setting['backend']}; "
        f"mean gap by quarter of the completion: "
        f"{', '.join(f'{q:.3g}' for q in report.mean_by_quarter)}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dataclasses.asdict(report), f, indent=1)
  print(report.line(), flush=True)
  return report


if __name__ == "__main__":
  define_flags()
  app.run(main)
