"""Released Qwen2.5 shapes, for shape-only work (benchmarks, memory planning, dry runs).

Real runs read `config.json` from the checkpoint directory; these values copy the base (not
-Instruct) models' config.json (Instruct variants share the shapes but some differ in
max_position_embeddings / rms_norm_eps). All: Qwen2ForCausalLM, silu, head_dim = hidden / heads,
bos = eos = 151643 (<|endoftext|>).
"""

from __future__ import annotations

import dataclasses

from dots_jax.model.qwen2 import Qwen2Config

_ENDOFTEXT = 151643


def _qwen(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, *, tie: bool,
          max_pos: int, eps: float, rope: float = 1_000_000.0) -> Qwen2Config:
  return Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                     rms_norm_eps=eps, rope_theta=rope, tie_word_embeddings=tie,
                     max_position_embeddings=max_pos, bos_token_id=_ENDOFTEXT,
                     eos_token_id=_ENDOFTEXT)


# name -> (config, source config.json)
VARIANTS: dict[str, tuple[Qwen2Config, str]] = {
    "0.5B": (_qwen(151936, 896, 4864, 24, 14, 2, tie=True, max_pos=32768, eps=1e-6),
             "Qwen/Qwen2.5-0.5B config.json"),
    "1.5B": (_qwen(151936, 1536, 8960, 28, 12, 2, tie=True, max_pos=131072, eps=1e-6),
             "Qwen/Qwen2.5-1.5B config.json"),
    "3B": (_qwen(151936, 2048, 11008, 36, 16, 2, tie=True, max_pos=32768, eps=1e-6),
           "Qwen/Qwen2.5-3B config.json"),
    "7B": (_qwen(152064, 3584, 18944, 28, 28, 4, tie=False, max_pos=131072, eps=1e-6),
           "Qwen/Qwen2.5-7B config.json"),
    "14B": (_qwen(152064, 5120, 13824, 48, 40, 8, tie=False, max_pos=131072, eps=1e-5),
            "Qwen/Qwen2.5-14B config.json"),
    "32B": (_qwen(152064, 5120, 27648, 64, 40, 8, tie=False, max_pos=131072, eps=1e-5),
            "Qwen/Qwen2.5-32B config.json"),
    "72B": (_qwen(152064, 8192, 29568, 80, 64, 8, tie=False, max_pos=131072, eps=1e-5),
            "Qwen/Qwen2.5-72B config.json"),
    "Math-1.5B": (_qwen(151936, 1536, 8960, 28, 12, 2, tie=True, max_pos=4096, eps=1e-6,
                        rope=10000.0), "Qwen/Qwen2.5-Math-1.5B config.json"),
    "Math-7B": (_qwen(152064, 3584, 18944, 28, 28, 4, tie=False, max_pos=4096, eps=1e-6,
                      rope=10000.0), "Qwen/Qwen2.5-Math-7B config.json"),
}


def get_variant(name: str, **runtime) -> Qwen2Config:
  """The named shape (e.g. '7B', 'Math-1.5B'; a 'Qwen2.5-' prefix is accepted) with runtime
  fields (dtype, param_dtype, remat) overridden."""
  key = name.removeprefix("Qwen/").removeprefix("Qwen2.5-")
  if key not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
  return dataclasses.replace(VARIANTS[key][0], **runtime)
