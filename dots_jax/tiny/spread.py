"""How hard is the synthetic pool for a policy? Per-family pass rates and the zero-variance share.

Exact, without sampling noise: under the exact-match reward a temperature-1 sample is correct iff it
is the target completion (reversed answer + EOS), so a question's pass rate is p = exp(log p(target))
and a group of G samples has zero reward variance with probability p^G + (1-p)^G. Greedy decoding is
correct iff the argmax at every target position is the target token.

  python -m dots_jax.tiny.spread --config=configs/tiny.py [--split=train] [--samples=8]

`--samples` also draws G real samples per question with `dots_jax.sampling.Sampler` and scores them
with the reward, as a check of the exact figures.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from flax import nnx

from dots_jax.data.synthetic import synthetic_rows
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.tiny import sft
from dots_jax.tiny.base import answer_encoder, prompt_encoder


def exact_pass_rates(config: Any, path: str, rows: list[tuple[str, str, str]], batch: int = 500
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(temperature-1 pass rate, greedy correct) per row, computed from the target's log-prob."""
  tokenizer = load_tokenizer(path)
  _, model = load_policy(path)
  graphdef, params = nnx.split(model)
  score = jax.jit(lambda p, t, m, l: sft.completion_logprob(nnx.merge(graphdef, p), t, m, l))
  length = config.data.max_prompt_tokens + config.sampling.max_new_tokens
  lps, oks = [], []
  for i in range(0, len(rows), batch):
    chunk = rows[i:i + batch]
    chunk = chunk + [chunk[-1]] * (batch - len(chunk))  # one compiled shape
    enc = sft.encode_examples(chunk, prompt_encoder(tokenizer, config.data),
                              answer_encoder(tokenizer), tokenizer.eos_token_id, length)
    lp, ok = score(params, *enc)
    lps.append(np.asarray(lp))
    oks.append(np.asarray(ok))
  n = len(rows)
  return np.exp(np.concatenate(lps)[:n]), np.concatenate(oks)[:n]


def spread_report(p_N: np.ndarray, greedy_N: np.ndarray, families_N: np.ndarray, group_size: int
                  ) -> dict[str, Any]:
  """Pool-level and per-family pass rate, greedy accuracy and expected zero-variance shares."""
  def stats(m):
    p = p_N[m]
    return {"n": int(m.sum()), "pass_rate": float(p.mean()), "greedy": float(greedy_N[m].mean()),
            "all_correct": float(np.mean(p ** group_size)),
            "all_wrong": float(np.mean((1 - p) ** group_size)),
            "zero_var": float(np.mean(p ** group_size + (1 - p) ** group_size)),
            "mid_0.1_0.9": float(np.mean((p > 0.1) & (p < 0.9)))}
  out = {"group_size": group_size, "pool": stats(np.ones_like(p_N, bool)), "families": {}}
  for fam in dict.fromkeys(families_N.tolist()):
    out["families"][fam] = stats(families_N == fam)
  return out


def sampled_zero_var(config: Any, path: str, rows: list[tuple[str, str, str]], group_size: int,
                     seed: int = 0) -> dict[str, float]:
  """Zero-variance share and pass rate from real samples (Sampler + reward), as a cross-check."""
  from dots_jax import rewards
  from dots_jax.sampling.sampler import Sampler, pad_prompts
  tokenizer = load_tokenizer(path)
  cfg, model = load_policy(path)
  graphdef, params = nnx.split(model)
  sampler = Sampler(graphdef, cfg, max_prompt_len=max(config.data.prompt_buckets),
                    max_new_tokens=config.sampling.max_new_tokens, eos_ids=[tokenizer.eos_token_id],
                    pad_id=tokenizer.pad_token_id)
  encode = prompt_encoder(tokenizer, config.data)
  scores = []
  for i in range(0, len(rows), 256):
    chunk = rows[i:i + 256]
    tok, mask = pad_prompts([encode(p) for p, _, _ in chunk], config.data.prompt_buckets,
                            tokenizer.pad_token_id)
    out = sampler.generate(params, tok, mask, jax.random.fold_in(jax.random.key(seed), i),
                           num_samples=group_size, temperature=1.0)
    texts = tokenizer.batch_decode([t[m > 0].tolist() for t, m in zip(out.tokens_NxR, out.mask_NxR)],
                                   skip_special_tokens=True)
    golds = [a for _, a, _ in chunk for _ in range(group_size)]
    s, _ = rewards.score_batch(texts, golds, kind="reversed_digits", workers=0)
    scores.append(s.reshape(len(chunk), group_size))
  r = np.concatenate(scores)
  return {"pass_rate": float(r.mean()), "zero_var": float(np.mean(r.std(axis=1) == 0)),
          "all_correct": float(np.mean(r.min(axis=1) == 1)),
          "all_wrong": float(np.mean(r.max(axis=1) == 0))}


def main(argv: list[str]) -> None:
  del argv
  from dots_jax.tiny.base import ensure_tiny_base
  config = _CONFIG.value
  path = config.model.path or ensure_tiny_base(config)
  rows = synthetic_rows(config.data.synthetic, _SPLIT.value)
  g = config.sampling.group_size
  p, greedy = exact_pass_rates(config, path, rows)
  report = spread_report(p, greedy, np.array([f for _, _, f in rows]), g)
  report["split"], report["model_path"] = _SPLIT.value, path
  if _SAMPLES.value:
    report["sampled"] = sampled_zero_var(config, path, rows, g, config.seed)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py")
  _SPLIT = flags.DEFINE_enum("split", "train", ["train", "heldout"], "synthetic split")
  _SAMPLES = flags.DEFINE_bool("samples", False, "also measure with real samples")
  app.run(main)
