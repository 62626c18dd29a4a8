"""The offline stage's data: a pool of training questions rolled out `group` times each by the initial
policy (sampling settings of config.sampling), their pass rates, and the backbone embeddings.

Shared by `dots_jax.difficulty.offline` (fits the estimator) and `...quality` (held-out Pearson); the
labels are cached in the output directory so the two commands roll the pool out once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from dots_jax.config_common import policy_runtime
from dots_jax.data.dataset import load_dataset
from dots_jax.data.prompts import build_prompts
from dots_jax.difficulty import embed
from dots_jax.difficulty.setup import backbone_path, question_embeddings
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.rewards import score_batch
from dots_jax.rollout.generator import Decoding, EngineSettings, Generator
from dots_jax.policy import policy_path


@dataclasses.dataclass
class Pool:
  rows: np.ndarray  # positions in the training set of the labelled questions
  labels: np.ndarray  # observed pass rates under the initial policy, float32 [P]
  emb: np.ndarray  # embeddings of `rows`, float32 [P, D]
  heldout: np.ndarray  # bool [P]: never trained on, used by evaluate
  out_dir: str
  # Pass rates of the same questions under the checkpoints of selection.dots.fit.label_policies,
  # float32 [M, P] (M may be 0): more label distributions for the estimator to calibrate to.
  extra_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))

  def all_labels(self) -> np.ndarray:
    """[1 + M, P]: the initial policy's labels, then the extra policies'."""
    if self.extra_labels.size == 0:
      return self.labels[None]
    return np.concatenate([self.labels[None], self.extra_labels]).astype(np.float32)


def default_out_dir(config: Any) -> str:
  f = config.selection.dots.fit
  if f.out_dir:
    return f.out_dir
  d = config.data
  # Everything that changes which questions the pool holds or their labels.
  key = json.dumps([d.train, d.synthetic.to_dict() if d.train == "synthetic" else d.manual_dir,
                    d.max_prompt_tokens, d.prompt_overflow, d.system_prompt, d.chat_template,
                    embed.backbone_fingerprint(backbone_path(config)),
                    embed.backbone_fingerprint(policy_path(config)), f.pool, f.heldout, f.group,
                    config.sampling.temperature, config.sampling.top_p,
                    config.sampling.max_new_tokens, config.reward.kind, config.seed], default=list)
  name = f"{d.train}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
  # Next to the embedding cache (selection.dots.embed_path, else $DOTS_JAX_CACHE/embeddings).
  emb_dir = config.selection.dots.embed_path or embed.default_cache_dir()
  return os.path.join(os.path.dirname(os.path.abspath(emb_dir)), "estimators", name)


def _rollout_pass_rates(config: Any, problems: list[str], golds: list[str], *, group: int,
                        batch: int, log: Callable[[str], None], path: str = ""
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(kept positions, pass rates) of `problems` under the checkpoint `path` (default: the initial
  policy), with the training sampling settings."""
  path = path or policy_path(config)
  qcfg, model = load_policy(path, **policy_runtime(config))
  tokenizer = load_tokenizer(path)
  graphdef, params = nnx.split(model)
  decoding = Decoding.training(config)
  generator = Generator(graphdef, qcfg, tokenizer, prompt_buckets=config.data.prompt_buckets,
                        max_new_tokens=decoding.max_new_tokens,
                        engine=EngineSettings.from_config(config))
  generate = generator.text_fn(params, decoding)
  built = build_prompts(tokenizer, problems, config.data)
  kept = np.asarray(built.kept, np.int64)
  rates = np.empty(len(kept), np.float32)
  key = jax.random.key(config.seed)
  for b, start in enumerate(range(0, len(kept), batch)):
    chunk = built.tokens[start:start + batch]
    completions = generate(chunk, group, jax.random.fold_in(key, b))
    flat = [c for row in completions for c in row]
    gold = [golds[kept[start + i]] for i in range(len(chunk)) for _ in range(group)]
    scores, _ = score_batch(flat, gold, kind=config.reward.kind, timeout_s=config.reward.timeout_s,
                            workers=config.reward.workers)
    rates[start:start + len(chunk)] = scores.reshape(len(chunk), group).mean(1)
    log(f"pool rollouts ({path}): {start + len(chunk)}/{len(kept)} questions x {group}")
  return kept, rates


def prepare_pool(config: Any, log: Callable[[str], None] = print) -> Pool:
  """Labels (or reloads) the pool: the first pool + heldout questions of a seeded permutation of the
  training set; the last `heldout` of them are the held-out split."""
  f = config.selection.dots.fit
  out_dir = default_out_dir(config)
  os.makedirs(out_dir, exist_ok=True)
  train = load_dataset(config.data, "train")
  questions = train.get_batch(range(len(train)))
  problems = [q.problem for q in questions]
  total = f.pool + f.heldout
  if total > len(problems) or f.heldout < 2 or f.pool <= f.ref_size:
    raise ValueError(f"selection.dots.fit: pool={f.pool} + heldout={f.heldout} must fit the "
                     f"{len(problems)} training questions, with heldout >= 2 and pool > ref_size")
  emb_all = question_embeddings(config, problems, log=log)
  labels_path = os.path.join(out_dir, "pool_labels.npz")
  if os.path.exists(labels_path):
    with np.load(labels_path) as z:
      rows, labels, n_pool = z["rows"], z["labels"], int(z["n_pool"])
    log(f"pool labels: reusing {labels_path} ({len(rows)} questions)")
  else:
    order = np.random.default_rng([config.seed, 0x9001]).permutation(len(problems))[:total]
    sub_problems = [problems[i] for i in order]
    sub_golds = [questions[i].answer for i in order]
    kept, labels = _rollout_pass_rates(config, sub_problems, sub_golds, group=f.group,
                                       batch=f.rollout_batch, log=log)
    rows = order[kept]
    n_pool = int((kept < f.pool).sum())  # questions dropped for prompt length shrink the splits
    np.savez(labels_path, rows=rows, labels=labels, n_pool=n_pool)
  heldout = np.arange(len(rows)) >= n_pool
  extra = [_policy_labels(config, path, [problems[i] for i in rows],
                          [questions[i].answer for i in rows], out_dir, log)
           for path in f.label_policies]
  return Pool(rows=rows, labels=labels.astype(np.float32), emb=emb_all[rows], heldout=heldout,
              out_dir=out_dir,
              extra_labels=np.stack(extra) if extra else np.zeros((0, len(rows)), np.float32))


def _policy_labels(config: Any, path: str, problems: list[str], golds: list[str], out_dir: str,
                   log: Callable[[str], None]) -> np.ndarray:
  """Pass rates of the pool questions under another checkpoint, cached next to the pool labels."""
  f = config.selection.dots.fit
  tag = hashlib.sha256(embed.backbone_fingerprint(path).encode()).hexdigest()[:12]
  cache = os.path.join(out_dir, f"labels_{tag}.npz")
  if os.path.exists(cache):
    with np.load(cache) as z:
      return z["labels"].astype(np.float32)
  kept, rates = _rollout_pass_rates(config, problems, golds, group=f.group, batch=f.rollout_batch,
                                    log=log, path=path)
  if len(kept) != len(problems):
    raise ValueError(f"selection.dots.fit.label_policies: {path} drops {len(problems) - len(kept)} "
                     "pool prompts for length; label policies must share the initial tokenizer")
  np.savez(cache, labels=rates, path=path)
  return rates
