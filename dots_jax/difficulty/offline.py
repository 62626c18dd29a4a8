"""The DOTS offline stage: roll out a pool of training questions with the initial policy, fit the
estimator's adapters and calibration head to the observed pass rates, save it; and what a run that
selects with the estimator loads before its first step (`dots_inputs`: embeddings + estimator).

  python -m dots_jax.difficulty --config=configs/tiny.py [--quality]
  then: --config.selection.dots.estimator_path=<printed directory> for DOTS runs.

`selection.dots.estimator_path="auto"` (the tiny default) makes a run do this itself on first use and
reuse the result (`ensure_estimator`), like the tiny base policy. Everything cached here (the
embeddings, the pool's labels, the fitted estimator) is written atomically and checked when read: a
file a killed job left half-written is rebuilt with a line naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from dots_jax import fs
from dots_jax.data.dataset import load_dataset
from dots_jax.data.prompts import build_prompts
from dots_jax.data.settings import DataSettings
from dots_jax.difficulty import embed
from dots_jax.difficulty.estimator import (DifficultyEstimator, EstimatorConfig, init_estimator,
                                           load_estimator, save_estimator)
from dots_jax.difficulty.fit import epoch_steps, fit_estimator
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.rewards import RewardSettings, score_batch
from dots_jax.rollout.generator import Decoding, EngineSettings, Generator


@dataclasses.dataclass(frozen=True)
class FitSettings:
  """`config.selection.dots.fit`: the pool (`pool` + `heldout` questions, `group` rollouts each,
  `rollout_batch` at a time) and the fit (steps or epochs, lr, warmup, batch, references a step),
  labels of more policies (`label_policies`), and where it goes (`out_dir`, "" = the cache)."""

  pool: int
  heldout: int
  group: int
  steps: int
  lr: float
  warmup: int
  batch: int
  ref_size: int
  rollout_batch: int
  out_dir: str
  epochs: int
  label_policies: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class StageSettings:
  """What the DOTS stage reads: the backbone that embeds the questions and the policy that labels
  them (resolved directories), the estimator's architecture, its fit and caches, and the run's data,
  sampling and reward settings the labels are rolled out with."""

  policy_dir: str  # the initial policy (it rolls out the labels)
  backbone_dir: str  # selection.dots.backbone, else the initial policy
  estimator_path: str  # "auto": made here and cached; "": untrained adapters (smoke runs)
  embed_path: str
  embed_batch: int
  embed_max_len: int
  embed_dtype: str  # the backbone's weights and activations in the embedding pass
  width: int
  layers: int
  dropout: float
  score_tau: float
  fit: FitSettings
  seed: int
  data: DataSettings
  decoding: Decoding
  engine: EngineSettings
  reward: RewardSettings
  runtime: dict[str, Any]
  # The devices the stage's passes are laid out on (the run's mesh: the backbone and the labelling
  # policy sharded as the policy is, batches over the data axes); None: the first device.
  mesh: Mesh | None = None

  def estimator_config(self, input_dim: int) -> EstimatorConfig:
    return EstimatorConfig(input_dim=input_dim, width=self.width, layers=self.layers,
                           dropout=self.dropout, tau=self.score_tau)


@dataclasses.dataclass
class Pool:
  rows: np.ndarray  # positions in the training set of the labelled questions
  labels: np.ndarray  # observed pass rates under the initial policy, float32 [P]
  emb: np.ndarray  # embeddings of `rows`, float32 [P, D]
  heldout: np.ndarray  # bool [P]: never trained on, used by evaluate
  out_dir: str
  # Pass rates of the same questions under the checkpoints of fit.label_policies, float32 [M, P]
  # (M may be 0): more label distributions for the estimator to calibrate to.
  extra_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))

  def all_labels(self) -> np.ndarray:
    """[1 + M, P]: the initial policy's labels, then the extra policies'."""
    if self.extra_labels.size == 0:
      return self.labels[None]
    return np.concatenate([self.labels[None], self.extra_labels]).astype(np.float32)


# ----- embeddings ---------------------------------------------------------------------------------

def question_embeddings(stage: StageSettings, problems: Sequence[str], dataset: str = "",
                        log: Callable[[str], None] = print) -> np.ndarray:
  """float32 [N, D] embeddings of the raw problems, computed once per (data set, backbone, dtype):
  the backbone's weights and activations in stage.embed_dtype, sharded over stage.mesh."""
  path = stage.backbone_dir

  def compute() -> np.ndarray:
    log(f"DOTS: embedding {len(problems)} questions with {path} ({stage.embed_dtype})")
    _, model = load_policy(path, mesh=stage.mesh, dtype=stage.embed_dtype,
                           param_dtype=stage.embed_dtype)
    return embed.embed_texts(model, load_tokenizer(path), problems, batch=stage.embed_batch,
                             max_len=stage.embed_max_len, mesh=stage.mesh)

  return embed.cached_embeddings(stage.embed_path, dataset or stage.data.train,
                                 embedding_id(stage), problems, stage.embed_max_len, compute, log)


def embedding_id(stage: StageSettings) -> str:
  """What the embeddings depend on besides the texts: the backbone's fingerprint, and the pass's
  dtype when it is not float32 (float32 caches keep their names)."""
  fingerprint = embed.backbone_fingerprint(stage.backbone_dir)
  return fingerprint if stage.embed_dtype == "float32" else f"{fingerprint}/{stage.embed_dtype}"


# ----- the pool's labels --------------------------------------------------------------------------

def default_out_dir(stage: StageSettings) -> str:
  f, d, dec = stage.fit, stage.data, stage.decoding
  if f.out_dir:
    return f.out_dir
  # Everything that changes which questions the pool holds or their labels.
  key = json.dumps([d.train, dataclasses.asdict(d.synthetic) if d.train == "synthetic"
                    else d.manual_dir, d.max_prompt_tokens, d.prompt_overflow, d.system_prompt,
                    d.chat_template, embedding_id(stage),
                    embed.backbone_fingerprint(stage.policy_dir), f.pool, f.heldout, f.group,
                    dec.temperature, dec.top_p, dec.max_new_tokens, stage.reward.kind, stage.seed],
                   default=list)
  name = f"{d.train}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
  # Next to the embedding cache (selection.dots.embed_path, else $DOTS_JAX_CACHE/embeddings).
  emb_dir = stage.embed_path or embed.default_cache_dir()
  return os.path.join(os.path.dirname(os.path.abspath(emb_dir)), "estimators", name)


def _rollout_pass_rates(stage: StageSettings, problems: list[str], golds: list[str], *,
                        group: int, batch: int, log: Callable[[str], None], path: str = ""
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(kept positions, pass rates) of `problems` under the checkpoint `path` (default: the initial
  policy), with the training sampling settings."""
  path = path or stage.policy_dir
  qcfg, model = load_policy(path, mesh=stage.mesh, **stage.runtime)
  tokenizer = load_tokenizer(path)
  graphdef, params = nnx.split(model)
  generator = Generator(graphdef, qcfg, tokenizer, prompt_buckets=stage.data.prompt_buckets,
                        max_new_tokens=stage.decoding.max_new_tokens, mesh=stage.mesh,
                        engine=stage.engine)
  generate = generator.text_fn(params, stage.decoding)
  built = build_prompts(tokenizer, problems, stage.data)
  kept = np.asarray(built.kept, np.int64)
  rates = np.empty(len(kept), np.float32)
  key = jax.random.key(stage.seed)
  t0 = time.perf_counter()
  for b, start in enumerate(range(0, len(kept), batch)):
    chunk = built.tokens[start:start + batch]
    completions = generate(chunk, group, jax.random.fold_in(key, b))
    flat = [c for row in completions for c in row]
    gold = [golds[kept[start + i]] for i in range(len(chunk)) for _ in range(group)]
    scores, _ = score_batch(flat, gold, stage.reward)
    rates[start:start + len(chunk)] = scores.reshape(len(chunk), group).mean(1)
    log(f"DOTS offline stage: labelling the pool with {path}: {start + len(chunk)}/{len(kept)} "
        f"questions x {group} rollouts ({time.perf_counter() - t0:.0f}s)")
  return kept, rates


def prepare_pool(stage: StageSettings, log: Callable[[str], None] = print) -> Pool:
  """Labels (or reloads) the pool: the first pool + heldout questions of a seeded permutation of the
  training set; the last `heldout` of them are the held-out split."""
  f = stage.fit
  out_dir = default_out_dir(stage)
  os.makedirs(out_dir, exist_ok=True)
  train = load_dataset(stage.data, "train")
  questions = train.get_batch(range(len(train)))
  problems = [q.problem for q in questions]
  total = f.pool + f.heldout
  if total > len(problems) or f.heldout < 2 or f.pool <= f.ref_size:
    raise ValueError(f"selection.dots.fit: pool={f.pool} + heldout={f.heldout} must fit the "
                     f"{len(problems)} training questions, with heldout >= 2 and pool > ref_size")
  emb_all = question_embeddings(stage, problems, log=log)
  labels_path = os.path.join(out_dir, "pool_labels.npz")
  cached = _load_npz(labels_path, ("rows", "labels", "n_pool"), log)
  if cached is not None:
    rows, labels, n_pool = cached["rows"], cached["labels"], int(cached["n_pool"])
    log(f"DOTS offline stage: pool labels from {labels_path} ({len(rows)} questions)")
  else:
    order = np.random.default_rng([stage.seed, 0x9001]).permutation(len(problems))[:total]
    sub_problems = [problems[i] for i in order]
    sub_golds = [questions[i].answer for i in order]
    kept, labels = _rollout_pass_rates(stage, sub_problems, sub_golds, group=f.group,
                                       batch=f.rollout_batch, log=log)
    rows = order[kept]
    n_pool = int((kept < f.pool).sum())  # questions dropped for prompt length shrink the splits
    fs.save_npz(labels_path, rows=rows, labels=labels, n_pool=np.asarray(n_pool))
  heldout = np.arange(len(rows)) >= n_pool
  extra = [_policy_labels(stage, path, [problems[i] for i in rows],
                          [questions[i].answer for i in rows], out_dir, log)
           for path in f.label_policies]
  return Pool(rows=rows, labels=labels.astype(np.float32), emb=emb_all[rows], heldout=heldout,
              out_dir=out_dir,
              extra_labels=np.stack(extra) if extra else np.zeros((0, len(rows)), np.float32))


def _policy_labels(stage: StageSettings, path: str, problems: list[str], golds: list[str],
                   out_dir: str, log: Callable[[str], None]) -> np.ndarray:
  """Pass rates of the pool questions under another checkpoint, cached next to the pool labels."""
  f = stage.fit
  tag = hashlib.sha256(embed.backbone_fingerprint(path).encode()).hexdigest()[:12]
  cache = os.path.join(out_dir, f"labels_{tag}.npz")
  cached = _load_npz(cache, ("labels",), log)
  if cached is not None:
    return cached["labels"].astype(np.float32)
  kept, rates = _rollout_pass_rates(stage, problems, golds, group=f.group, batch=f.rollout_batch,
                                    log=log, path=path)
  if len(kept) != len(problems):
    raise ValueError(f"selection.dots.fit.label_policies: {path} drops {len(problems) - len(kept)} "
                     "pool prompts for length; label policies must share the initial tokenizer")
  fs.save_npz(cache, labels=rates, path=np.asarray(path))
  return rates


def _load_npz(path: str, keys: tuple[str, ...], log: Callable[[str], None]
              ) -> dict[str, np.ndarray] | None:
  """A cached .npz with `keys`, or None where there is none or it does not load (a write cut off
  before the atomic writes existed, a damaged disk): then it is rebuilt, as the line says."""
  if not os.path.exists(path):
    return None
  try:
    z = fs.load_npz(path)
    missing = [k for k in keys if k not in z]
    if missing:
      raise ValueError(f"no {missing}")
    return z
  except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, ValueError, ...
    log(f"DOTS offline stage: {path} does not load ({type(e).__name__}: {e}); making it again")
    os.remove(path)
    return None


# ----- the fit --------------------------------------------------------------------------------------

def fit_on_labels(stage: StageSettings, emb_NxD: np.ndarray, labels_MxN: np.ndarray,
                  log: Callable[[str], None] = print) -> tuple[DifficultyEstimator, dict[str, Any]]:
  """A fresh estimator fitted to `labels_MxN` (M policies' observed pass rates of the N questions
  embedded in `emb_NxD`) with the fit settings: `fit.epochs > 0` sets the steps to that many passes
  over the (policy, question) pairs; the warmup is at most a tenth of the steps, as the official
  script. Returns the model and its fit summary."""
  f = stage.fit
  labels_MxN = np.asarray(labels_MxN, np.float32)
  labels_MxN = labels_MxN[None] if labels_MxN.ndim == 1 else labels_MxN
  steps = epoch_steps(f.epochs, labels_MxN.size, f.batch) if f.epochs > 0 else f.steps
  model = init_estimator(stage.estimator_config(emb_NxD.shape[1]), seed=stage.seed)
  losses = fit_estimator(model, emb_NxD, labels_MxN, steps=steps, lr=f.lr,
                         warmup=min(f.warmup, steps // 10), batch=f.batch, ref_size=f.ref_size,
                         seed=stage.seed)
  head, tail = np.mean(losses[:50]), np.mean(losses[-50:])
  log(f"DOTS offline stage: estimator fitted in {steps} steps on {labels_MxN.shape[1]} questions "
      f"x {labels_MxN.shape[0]} policies' labels, BCE {head:.4f} -> {tail:.4f}")
  return model, {"train_questions": int(labels_MxN.shape[1]), "steps": int(steps),
                 "bce_first50": float(head), "bce_last50": float(tail)}


def train_on_pool(stage: StageSettings, pool: Pool, log: Callable[[str], None] = print
                  ) -> DifficultyEstimator:
  """Fits a fresh estimator on the pool's non-held-out questions (labels of every label policy) and
  saves it in `pool.out_dir`."""
  train = ~pool.heldout
  model, summary = fit_on_labels(stage, pool.emb[train], pool.all_labels()[:, train], log)
  save_estimator(model, pool.out_dir, extra={
      "train_questions": summary["train_questions"], "fit": fit_settings(stage),
      "bce_first50": summary["bce_first50"], "bce_last50": summary["bce_last50"]})
  return model


def fit_settings(stage: StageSettings) -> dict[str, Any]:
  """What the trained estimator depends on beyond the pool labels (which key its directory)."""
  f = stage.fit
  out = {"fit": {"steps": f.steps, "lr": f.lr, "warmup": f.warmup, "batch": f.batch,
                 "ref_size": f.ref_size},
         "arch": [stage.width, stage.layers, stage.dropout, stage.score_tau], "seed": stage.seed}
  if f.epochs or f.label_policies:  # keys only when set: older estimators stay current
    out["epochs"] = f.epochs
    out["label_policies"] = [embed.backbone_fingerprint(p) for p in f.label_policies]
  return out


def ensure_estimator(stage: StageSettings, log: Callable[[str], None] = print) -> str:
  """Directory of the trained estimator for `stage`, running the offline stage first if needed.

  Reuses a saved estimator only when it was fitted with the current settings and loads (else refits
  on the cached pool labels). In a multi-process run process 0 does the work and the others wait
  for estimator.json, which `save_estimator` writes last.
  """
  out_dir = default_out_dir(stage)
  marker = os.path.join(out_dir, "estimator.json")

  def current() -> bool:
    try:
      with open(marker) as f:
        if json.load(f).get("fit") != fit_settings(stage):
          return False
      load_estimator(out_dir)
      return True
    except FileNotFoundError:
      return False
    except Exception as e:  # noqa: BLE001 - a damaged estimator is refitted, with a line
      log(f"DOTS offline stage: the estimator in {out_dir} does not load ({type(e).__name__}); "
          "fitting it again")
      return False

  if current():
    return out_dir
  if jax.process_index() != 0:
    while not current():
      time.sleep(2.0)
    return out_dir
  log(f"== DOTS offline stage: pool labels and estimator fit into {out_dir} (once; later runs "
      "load it)")
  train_on_pool(stage, prepare_pool(stage, log), log)
  return out_dir


def load_or_init_estimator(stage: StageSettings, input_dim: int,
                           log: Callable[[str], None] = print) -> DifficultyEstimator:
  path = stage.estimator_path
  if path == "auto":
    path = ensure_estimator(stage, log=log)
  if not path:
    log("warning: selection.dots.estimator_path is empty: DOTS runs with untrained adapters "
        "(train one with `python -m dots_jax.difficulty`)")
    return init_estimator(stage.estimator_config(input_dim), seed=stage.seed)
  model = load_estimator(path)
  if model.cfg.input_dim != input_dim:
    raise ValueError(f"estimator {path} takes {model.cfg.input_dim}-dim embeddings, the backbone "
                     f"gives {input_dim} (selection.dots.backbone / estimator_path mismatch)")
  return model


def dots_inputs(stage: StageSettings, problems: Sequence[str],
                log: Callable[[str], None] = print) -> tuple[np.ndarray, DifficultyEstimator]:
  """(embeddings [N, D], estimator) for `factory.make_strategy`."""
  emb = question_embeddings(stage, problems, log=log)
  return emb, load_or_init_estimator(stage, emb.shape[1], log)
