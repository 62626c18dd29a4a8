"""How hard is the synthetic pool for a policy? Per-family pass rates and the zero-variance share.

Exact, without sampling noise: under the exact-match reward a temperature-1 sample is correct iff it
is the target completion (reversed answer + EOS), so a question's pass rate is p = exp(log p(target))
and a group of G samples has zero reward variance with probability p^G + (1-p)^G. Greedy decoding is
correct iff the argmax at every target position is the target token.

  python -m dots_jax.tiny.spread --config=configs/tiny.py [--split=train] [--samples=8]

`--samples` also draws G real samples per question with the rollout generator and scores them
with the reward, as a check of the exact figures. The last lines check the testbed's base bars
(`dots_jax.tiny.bars.BASE_BARS`, on the pool split), ending `N/M base checks pass`.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from flax import nnx

from dots_jax import exact
from dots_jax.data.synthetic import synthetic_rows
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.policy import policy_path, sft
from dots_jax.policy.tiny_base import answer_encoder, prompt_encoder
from dots_jax.rewards import score_batch
from dots_jax.rl.batch import group_stats
from dots_jax.rollout.generator import Decoding, Generator
from dots_jax.run import settings
from dots_jax.tiny import bars


def exact_pass_rates(config: Any, path: str, rows: list[tuple[str, str, str]], batch: int = 500
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(temperature-1 pass rate, greedy correct) per row, computed from the target's log-prob."""
  tokenizer = load_tokenizer(path)
  _, model = load_policy(path)
  graphdef, params = nnx.split(model)
  score = exact.scorer(graphdef)
  length = config.data.max_prompt_tokens + config.sampling.max_new_tokens
  lps, oks = [], []
  for i in range(0, len(rows), batch):
    chunk = rows[i:i + batch]
    chunk = chunk + [chunk[-1]] * (batch - len(chunk))  # one compiled shape
    enc = sft.encode_examples(chunk, prompt_encoder(tokenizer, config.data.system_prompt,
                                                    config.data.chat_template),
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
  """Zero-variance share and pass rate from real samples (rollout generator + reward), as a
  cross-check of the exact figures."""
  tokenizer = load_tokenizer(path)
  cfg, model = load_policy(path)
  graphdef, params = nnx.split(model)
  decoding = Decoding(temperature=1.0, top_p=1.0, top_k=0,
                      max_new_tokens=config.sampling.max_new_tokens)
  generator = Generator(graphdef, cfg, tokenizer, prompt_buckets=config.data.prompt_buckets,
                        max_new_tokens=decoding.max_new_tokens)
  encode = prompt_encoder(tokenizer, config.data.system_prompt, config.data.chat_template)
  scores = []
  for i in range(0, len(rows), 256):
    chunk = rows[i:i + 256]
    sample = generator.generate(params, [encode(p) for p, _, _ in chunk], group_size,
                                jax.random.fold_in(jax.random.key(seed), i), decoding)
    golds = [a for _, a, _ in chunk for _ in range(group_size)]
    s, _ = score_batch(generator.texts(sample), golds, settings.read(config).reward)
    scores.append(s.reshape(len(chunk), group_size))
  st = group_stats(np.concatenate(scores))
  return {"pass_rate": float(st.pass_rate_Q.mean()), "zero_var": float(st.zero_var_Q.mean()),
          "all_correct": float(st.all_correct_Q.mean()),
          "all_wrong": float(st.all_wrong_Q.mean())}


def base_checks(config: Any, pool_p_N: np.ndarray) -> dict[str, dict[str, Any]]:
  """The base bars on the pool's exact pass rates (and the pool/held-out split's disjointness)."""
  syn = config.data.synthetic
  overlap = ({p for p, _, _ in synthetic_rows(syn, "train")}
             & {p for p, _, _ in synthetic_rows(syn, "heldout")})
  figures = bars.base_figures(pool_p_N, config.sampling.group_size, len(overlap))
  return bars.check_all(bars.BASE_BARS, figures)


def main(argv: list[str]) -> None:
  del argv
  config = _CONFIG.value
  s = settings.read(config)
  path = policy_path(s.model.path, s.tiny)
  rows = synthetic_rows(config.data.synthetic, _SPLIT.value)
  g = config.sampling.group_size
  p, greedy = exact_pass_rates(config, path, rows)
  report = spread_report(p, greedy, np.array([f for _, _, f in rows]), g)
  report["split"], report["model_path"] = _SPLIT.value, path
  if _SAMPLES.value:
    report["sampled"] = sampled_zero_var(config, path, rows, g, config.seed)
  pool_p = p if _SPLIT.value == "train" else exact_pass_rates(
      config, path, synthetic_rows(config.data.synthetic, "train"))[0]
  checked = base_checks(config, pool_p)
  report["base_checks"] = checked
  print(json.dumps(report, indent=1))
  print("\n".join(bars.report_lines(checked)))
  print(f"{sum(c['pass'] for c in checked.values())}/{len(checked)} base checks pass")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py")
  _SPLIT = flags.DEFINE_enum("split", "train", ["train", "heldout"], "synthetic split")
  _SAMPLES = flags.DEFINE_bool("samples", False, "also measure with real samples")
  app.run(main)
