"""Offline stage of the DOTS estimator: roll out a pool of training questions with the initial policy,
fit the adapters and calibration head to the observed pass rates, save the estimator; and what a DOTS
run loads before its first step (`dots_inputs`: embeddings + estimator).

  python -m dots_jax.difficulty.offline --config=configs/tiny.py
  then: --config.selection.dots.estimator_path=<printed directory> for DOTS runs.

`selection.dots.estimator_path="auto"` (the tiny default) makes a DOTS run do this itself on first use
and reuse the result (`ensure_estimator`), like the tiny base policy.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging

from dots_jax.difficulty.estimator import (DifficultyEstimator, init_estimator, load_estimator,
                                           save_estimator)
from dots_jax.difficulty import embed
from dots_jax.difficulty.fit import epoch_steps, fit_estimator
from dots_jax.difficulty.labels import Pool, default_out_dir, prepare_pool
from dots_jax.difficulty.setup import estimator_config, question_embeddings


def fit_on_labels(config: Any, emb_NxD: np.ndarray, labels_MxN: np.ndarray,
                  log: Callable[[str], None] = print) -> tuple[DifficultyEstimator, dict[str, Any]]:
  """A fresh estimator fitted to `labels_MxN` (M policies' observed pass rates of the N questions
  embedded in `emb_NxD`) with `selection.dots.fit`'s settings: `fit.epochs > 0` sets the steps to
  that many passes over the (policy, question) pairs; the warmup is at most a tenth of the steps,
  as the official script. Returns the model and its fit summary."""
  f = config.selection.dots.fit
  labels_MxN = np.asarray(labels_MxN, np.float32)
  labels_MxN = labels_MxN[None] if labels_MxN.ndim == 1 else labels_MxN
  steps = epoch_steps(f.epochs, labels_MxN.size, f.batch) if f.epochs > 0 else f.steps
  model = init_estimator(estimator_config(config, emb_NxD.shape[1]), seed=config.seed)
  losses = fit_estimator(model, emb_NxD, labels_MxN, steps=steps, lr=f.lr,
                         warmup=min(f.warmup, steps // 10), batch=f.batch, ref_size=f.ref_size,
                         seed=config.seed)
  head, tail = np.mean(losses[:50]), np.mean(losses[-50:])
  log(f"estimator: {steps} steps on {labels_MxN.shape[1]} questions x {labels_MxN.shape[0]} "
      f"policies' labels, BCE {head:.4f} -> {tail:.4f}")
  return model, {"train_questions": int(labels_MxN.shape[1]), "steps": int(steps),
                 "bce_first50": float(head), "bce_last50": float(tail)}


def train_on_pool(config: Any, pool: Pool, log: Callable[[str], None] = print
                  ) -> DifficultyEstimator:
  """Fits a fresh estimator on the pool's non-held-out questions (labels of every label policy) and
  saves it in `pool.out_dir`."""
  train = ~pool.heldout
  model, summary = fit_on_labels(config, pool.emb[train], pool.all_labels()[:, train], log)
  save_estimator(model, pool.out_dir, extra={
      "train_questions": summary["train_questions"], "fit": fit_settings(config),
      "bce_first50": summary["bce_first50"], "bce_last50": summary["bce_last50"]})
  return model


def fit_settings(config: Any) -> dict[str, Any]:
  """What the trained estimator depends on beyond the pool labels (which key its directory)."""
  d = config.selection.dots
  out = {"fit": {k: d.fit[k] for k in ("steps", "lr", "warmup", "batch", "ref_size")},
         "arch": [d.width, d.layers, d.dropout, d.score_tau], "seed": config.seed}
  if d.fit.epochs or d.fit.label_policies:  # keys only when set: older estimators stay current
    out["epochs"] = d.fit.epochs
    out["label_policies"] = [embed.backbone_fingerprint(p) for p in d.fit.label_policies]
  return out


def ensure_estimator(config: Any, log: Callable[[str], None] = print) -> str:
  """Directory of the trained estimator for `config`, running the offline stage first if needed.

  Reuses a saved estimator only when it was fitted with the current settings (else refits on the
  cached pool labels). In a multi-process run process 0 does the work and the others wait for
  estimator.json, which `save_estimator` writes last.
  """
  out_dir = default_out_dir(config)
  marker = os.path.join(out_dir, "estimator.json")

  def current() -> bool:
    if not os.path.exists(marker):
      return False
    with open(marker) as f:
      return json.load(f).get("fit") == fit_settings(config)

  if current():
    return out_dir
  if jax.process_index() != 0:
    while not current():
      time.sleep(2.0)
    return out_dir
  log(f"== DOTS estimator: offline stage into {out_dir}")
  train_on_pool(config, prepare_pool(config, log), log)
  return out_dir


def load_or_init_estimator(config: Any, input_dim: int) -> DifficultyEstimator:
  path = config.selection.dots.estimator_path
  if path == "auto":
    path = ensure_estimator(config, log=logging.info)
  if not path:
    logging.warning("selection.dots.estimator_path is empty: DOTS runs with untrained adapters "
                    "(train one with `python -m dots_jax.difficulty.offline`)")
    return init_estimator(estimator_config(config, input_dim), seed=config.seed)
  model = load_estimator(path)
  if model.cfg.input_dim != input_dim:
    raise ValueError(f"estimator {path} takes {model.cfg.input_dim}-dim embeddings, the backbone "
                     f"gives {input_dim} (selection.dots.backbone / estimator_path mismatch)")
  return model


def dots_inputs(config: Any, problems: Sequence[str]) -> tuple[np.ndarray, DifficultyEstimator]:
  """(embeddings [N, D], estimator) for `factory.make_strategy`."""
  emb = question_embeddings(config, problems)
  return emb, load_or_init_estimator(config, emb.shape[1])


def main(argv: Any) -> None:
  del argv
  config = _CONFIG.value
  pool = prepare_pool(config)
  train_on_pool(config, pool)
  print(f"saved estimator to {pool.out_dir}")
  print(f"use it with --config.selection.dots.estimator_path={pool.out_dir}")


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py")
  app.run(main)
