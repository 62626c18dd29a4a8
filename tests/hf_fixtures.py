"""Tiny random Hugging Face Qwen2 checkpoints (saved with `transformers`) for parity and I/O tests."""

from __future__ import annotations

import os

import torch
import transformers

from dots_jax.policy import tokenizer as tiny_tokenizer


def make_tiny_hf_checkpoint(tmp_dir: str | os.PathLike, *, tie: bool = False,
                            num_attention_heads: int = 4, num_key_value_heads: int = 2,
                            hidden_size: int = 32, num_hidden_layers: int = 2,
                            intermediate_size: int | None = None, vocab_size: int | None = None,
                            max_shard_size: int | str | None = None, seed: int = 0,
                            std: float = 0.2, rope_theta: float = 1_000_000.0,
                            rms_norm_eps: float = 1e-6, dtype: torch.dtype = torch.float32) -> str:
  """Saves a random `Qwen2ForCausalLM` + the tiny tokenizer into `tmp_dir`; returns the directory.

  Weights are redrawn with a larger std than HF's 0.02 (and norms/biases perturbed away from 1/0)
  so a wrongly loaded tensor shows up as a large logit difference. `vocab_size` defaults to the
  tokenizer's size.
  """
  out = os.fspath(tmp_dir)
  tok = tiny_tokenizer.make_char_tokenizer(out)
  hf_cfg = transformers.Qwen2Config(
      vocab_size=vocab_size or len(tok), hidden_size=hidden_size,
      intermediate_size=intermediate_size or 2 * hidden_size, num_hidden_layers=num_hidden_layers,
      num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
      rms_norm_eps=rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
      tie_word_embeddings=tie, max_position_embeddings=512, max_window_layers=num_hidden_layers,
      bos_token_id=tiny_tokenizer.PAD_ID, eos_token_id=tiny_tokenizer.IM_END_ID,
      pad_token_id=tiny_tokenizer.PAD_ID, architectures=["Qwen2ForCausalLM"])
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.normal_(0.0, std)
  model = model.to(dtype)
  kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(out, safe_serialization=True, **kwargs)
  return out
