"""The embedded default's base policy: made once (tokenizer + tiny Qwen2 + SFT), then cached.

`ensure_tiny_base(config)` returns a Hugging Face directory that `dots_jax.model.hf_io.load_policy`
loads exactly like a real Qwen2.5 checkpoint. The cache key hashes everything that changes the
result (the `tiny` section, the synthetic data and the prompt format), so editing any of them makes a
new base instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable

import jax

from dots_jax.data.prompts import build_prompt
from dots_jax.data.synthetic import sft_stream
from dots_jax.model.hf_io import export_policy, load_tokenizer
from dots_jax.model.qwen2 import Qwen2Config, init_model
from dots_jax.policy import sft
from dots_jax.policy.tokenizer import make_char_tokenizer

_DONE = "tiny_base.json"


def cache_root(tiny: Any) -> str:
  return (tiny.cache_dir or os.environ.get("DOTS_JAX_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "dots_jax"))


def tiny_key(config: Any) -> str:
  """Hash of every setting the base policy depends on (not cache_dir: where it lives is no input)."""
  tiny = {k: v for k, v in config.tiny.to_dict().items() if k != "cache_dir"}
  if tiny.get("sft_borrow_drop", -1.0) < 0:  # unset (= sft_carry_drop): bases made before it keep
    tiny.pop("sft_borrow_drop", None)  # their key
  payload = {"tiny": tiny, "synthetic": config.data.synthetic.to_dict(),
             "system_prompt": config.data.system_prompt, "chat_template": config.data.chat_template,
             "max_prompt_tokens": config.data.max_prompt_tokens,
             "max_new_tokens": config.sampling.max_new_tokens}
  blob = json.dumps(payload, sort_keys=True, default=list).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def tiny_base_dir(config: Any) -> str:
  return os.path.join(cache_root(config.tiny), f"tiny-{tiny_key(config)}")


def tiny_model_config(tiny: Any, vocab_size: int, eos_id: int, bos_id: int | None) -> Qwen2Config:
  return Qwen2Config(
      vocab_size=vocab_size, hidden_size=tiny.hidden_size,
      intermediate_size=tiny.hidden_size * tiny.mlp_ratio, num_hidden_layers=tiny.num_layers,
      num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_kv_heads,
      tie_word_embeddings=True, max_position_embeddings=tiny.max_positions,
      rope_theta=tiny.rope_theta, initializer_range=tiny.init_std,
      bos_token_id=bos_id, eos_token_id=eos_id)


def prompt_encoder(tokenizer: Any, data: Any) -> Callable[[str], list[int]]:
  """problem -> prompt token ids, built exactly as the RL job and the evaluator build prompts."""
  return lambda problem: build_prompt(tokenizer, problem, data.system_prompt, data.chat_template)


def answer_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
  return lambda text: tokenizer.encode(text, add_special_tokens=False)


def ensure_tiny_base(config: Any, log: Callable[[str], None] = print) -> str:
  """Path of the cached tiny base policy for `config`, creating it first if needed.

  In a multi-process run process 0 creates it and the others wait for the finished directory (it
  appears atomically, by rename, only once complete).
  """
  out_dir = tiny_base_dir(config)
  marker = os.path.join(out_dir, _DONE)
  if os.path.exists(marker):
    return out_dir
  if jax.process_index() != 0:
    while not os.path.exists(marker):
      time.sleep(2.0)
    return out_dir
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  log(f"== tiny base policy: creating {out_dir}")
  tmp = tempfile.mkdtemp(prefix=".tmp-tiny-", dir=os.path.dirname(out_dir))
  try:
    info = build_tiny_base(config, tmp, log)
    with open(os.path.join(tmp, _DONE), "w") as f:
      json.dump(info, f, indent=1)
    if os.path.exists(marker):  # another job finished first; keep its copy
      shutil.rmtree(tmp)
    else:
      shutil.rmtree(out_dir, ignore_errors=True)
      os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def build_tiny_base(config: Any, out_dir: str, log: Callable[[str], None] = print
                    ) -> dict[str, Any]:
  """Tokenizer + random tiny Qwen2 + SFT, written to `out_dir` as a Hugging Face directory."""

  tok_dir = os.path.join(out_dir, "_tokenizer")
  make_char_tokenizer(tok_dir)
  tokenizer = load_tokenizer(tok_dir)
  eos_id = tokenizer.eos_token_id
  cfg = tiny_model_config(config.tiny, len(tokenizer), eos_id, tokenizer.bos_token_id)
  model = init_model(cfg, config.tiny.seed)
  length = config.data.max_prompt_tokens + config.sampling.max_new_tokens
  log(f"  tiny Qwen2: {cfg.num_params() / 1e6:.2f}M params, vocab {cfg.vocab_size}, "
      f"SFT {config.tiny.sft_steps} steps x {config.tiny.sft_batch}")
  info = sft.run_sft(model, sft_stream(config.data.synthetic, config.tiny.seed,
                                         config.tiny.sft_carry_drop, config.tiny.sft_borrow_drop),
                     config.tiny,
                     prompt_encoder(tokenizer, config.data), answer_encoder(tokenizer), eos_id,
                     length, log)
  export_policy(cfg, model, out_dir, tokenizer_dir=tok_dir)
  shutil.rmtree(tok_dir)
  info.update(key=tiny_key(config), num_params=cfg.num_params())
  return info
