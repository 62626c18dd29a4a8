"""Logit parity of our loader + model against `transformers` on a user's checkpoint.

  python -m dots_jax.tools.parity --hf_dir=DIR

Loads DIR with `dots_jax` and with transformers' PyTorch Qwen2ForCausalLM (both float32), runs a few
fixed token-id prompts (no tokenizer needed) one by one, then all of them as one left-padded batch,
and prints the max absolute logit difference over real tokens as the last line.
"""

from __future__ import annotations


import jax
import numpy as np

from dots_jax.model import hf_io, qwen2

PROMPT_LENGTHS = (1, 5, 12, 23)


def fixed_prompts(vocab_size: int, lengths: tuple[int, ...] = PROMPT_LENGTHS,
                  seed: int = 0) -> list[np.ndarray]:
  """Deterministic token-id prompts covering the whole vocabulary range."""
  rng = np.random.default_rng(seed)
  return [rng.integers(0, vocab_size, size=n, dtype=np.int64) for n in lengths]


def left_pad(prompts: list[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = p
    mask[i, width - len(p):] = 1
  return tokens, mask


@jax.jit
def _forward(model, tokens_BxT, mask_BxT):
  logits, _ = model(tokens_BxT, qwen2.positions_from_mask(mask_BxT), mask_BxT)
  return logits


def _hf_logits(hf_model, prompt: np.ndarray) -> np.ndarray:
  import torch  # Only needed for the reference side.
  with torch.no_grad():
    return hf_model(torch.tensor(prompt[None], dtype=torch.long)).logits[0].float().numpy()


def run_parity(hf_dir: str, lengths: tuple[int, ...] = PROMPT_LENGTHS, verbose: bool = True
               ) -> dict[str, float]:
  """Max abs logit differences: 'single' (each prompt alone), 'batch' (left-padded), 'max'."""
  import torch
  import transformers
  cfg, model = hf_io.load_policy(hf_dir, dtype="float32", param_dtype="float32")
  hf_model = transformers.Qwen2ForCausalLM.from_pretrained(
      hf_dir, dtype=torch.float32, local_files_only=True).eval()
  prompts = fixed_prompts(cfg.vocab_size, lengths)
  refs = [_hf_logits(hf_model, p) for p in prompts]
  single = 0.0
  for p, ref in zip(prompts, refs):
    ours = np.asarray(_forward(model, p[None].astype(np.int32), np.ones((1, len(p)), np.int32)))[0]
    single = max(single, float(np.abs(ours - ref).max()))
  tokens, mask = left_pad(prompts)
  batch_logits = np.asarray(_forward(model, tokens, mask))
  batch = 0.0
  for i, ref in enumerate(refs):
    batch = max(batch, float(np.abs(batch_logits[i, mask.shape[1] - len(ref):] - ref).max()))
  out = {"single": single, "batch": batch, "max": max(single, batch),
         "logit_scale": float(max(np.abs(r).max() for r in refs))}
  if verbose:
    print(f"{hf_dir}: {cfg.num_params() / 1e6:.2f}M params, prompts of lengths {list(lengths)}")
    print(f"max |logit| (reference): {out['logit_scale']:.4g}")
    print(f"single prompts max abs diff: {single:.3e}")
    print(f"left-padded batch max abs diff: {batch:.3e}")
    print(f"max_abs_logit_diff {out['max']:.3e}")
  return out


def main(argv: list[str]) -> None:
  from absl import flags
  del argv
  jax.config.update("jax_default_matmul_precision", "highest")  # float32 parity, not TF32/bf16
  run_parity(flags.FLAGS.hf_dir)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("hf_dir", None, "Hugging Face Qwen2/Qwen2.5 checkpoint directory",
                      required=True)
  app.run(main)
