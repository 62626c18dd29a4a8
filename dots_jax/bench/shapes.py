"""The Qwen2-shaped random model every benchmark builds: its flags and its config."""

from __future__ import annotations

from typing import Any

from absl import flags

from dots_jax.model.qwen2 import Qwen2Config


def define_model_flags(fv: flags.FlagValues, vocab: int) -> None:
  """--hidden/--intermediate/--layers/--heads/--kv_heads/--vocab (defaults: hidden 512, 8 layers)."""
  flags.DEFINE_integer("hidden", 512, 'hidden', flag_values=fv)
  flags.DEFINE_integer("intermediate", 1408, 'intermediate', flag_values=fv)
  flags.DEFINE_integer("layers", 8, 'layers', flag_values=fv)
  flags.DEFINE_integer("heads", 8, 'heads', flag_values=fv)
  flags.DEFINE_integer("kv_heads", 2, 'kv heads', flag_values=fv)
  flags.DEFINE_integer("vocab", vocab, 'vocab', flag_values=fv)


def model_config(args: Any, **runtime: Any) -> Qwen2Config:
  """The config of those flags; `runtime` sets the rest (dtypes, remat, max positions, ids)."""
  return Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden,
                     intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                     num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, **runtime)


def random_setup(args: Any, prompts: int, prompt_len: int, new_tokens: int):
  """(cfg, graphdef, params, prompt_BxP, mask_BxP, rng): a random model of the flags' shape and
  `prompts` random full-length prompts (token 0, the benchmarks' pad, never occurs)."""
  import numpy as np
  from flax import nnx

  from dots_jax.model.qwen2 import init_model
  cfg = model_config(args, max_position_embeddings=max(4096, prompt_len + new_tokens))
  graphdef, params = nnx.split(init_model(cfg, args.seed))
  rng = np.random.default_rng(args.seed)
  prompt_BxP = rng.integers(1, args.vocab, (prompts, prompt_len), dtype=np.int32)
  return cfg, graphdef, params, prompt_BxP, np.ones_like(prompt_BxP), rng
