"""What a DOTS run needs before its first step: the training questions' embeddings (cached) and the
difficulty estimator (trained offline, or fresh adapters for smoke runs)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from dots_jax.difficulty import embed
from dots_jax.difficulty.estimator import (DifficultyEstimator, EstimatorConfig, init_estimator,
                                           load_estimator)


def backbone_path(config: Any) -> str:
  """selection.dots.backbone, else the initial policy (model.path, else the cached tiny base)."""
  path = config.selection.dots.backbone or config.model.path
  if not path:
    from dots_jax.tiny.base import ensure_tiny_base
    path = ensure_tiny_base(config)
  return path


def question_embeddings(config: Any, problems: Sequence[str], *, dataset: str | None = None,
                        log: Callable[[str], None] = logging.info) -> np.ndarray:
  """float32 [N, D] embeddings of the raw problems, computed once per (data set, backbone)."""
  d = config.selection.dots
  path = backbone_path(config)

  def compute() -> np.ndarray:
    from dots_jax.model.hf_io import load_policy, load_tokenizer
    log(f"DOTS: embedding {len(problems)} questions with {path}")
    _, model = load_policy(path, dtype="float32", param_dtype="float32")
    return embed.embed_texts(model, load_tokenizer(path), problems, batch=d.embed_batch,
                             max_len=d.embed_max_len)

  return embed.cached_embeddings(d.embed_path, dataset or config.data.train,
                                 embed.backbone_fingerprint(path), problems, d.embed_max_len,
                                 compute)


def estimator_config(config: Any, input_dim: int) -> EstimatorConfig:
  d = config.selection.dots
  return EstimatorConfig(input_dim=input_dim, width=d.width, layers=d.layers, dropout=d.dropout,
                         tau=d.score_tau)


def load_or_init_estimator(config: Any, input_dim: int) -> DifficultyEstimator:
  path = config.selection.dots.estimator_path
  if path == "auto":
    from dots_jax.difficulty.train import ensure_estimator
    path = ensure_estimator(config, log=logging.info)
  if not path:
    logging.warning("selection.dots.estimator_path is empty: DOTS runs with untrained adapters "
                    "(train one with `python -m dots_jax.difficulty.train`)")
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
