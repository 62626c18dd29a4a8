"""The DOTS estimator's inputs: which backbone embeds the questions, their (cached) embeddings, and the
estimator architecture from config.selection.dots."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from dots_jax import fs
from dots_jax.difficulty import embed
from dots_jax.difficulty.estimator import EstimatorConfig
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.policy import policy_path


def backbone_path(config: Any) -> str:
  """selection.dots.backbone (a gs:// URL copied once into the local cache), else the initial
  policy (model.path, else the cached tiny base)."""
  backbone = config.selection.dots.backbone
  return fs.localize(backbone) if backbone else policy_path(config)


def question_embeddings(config: Any, problems: Sequence[str], *, dataset: str | None = None,
                        log: Callable[[str], None] = logging.info) -> np.ndarray:
  """float32 [N, D] embeddings of the raw problems, computed once per (data set, backbone)."""
  d = config.selection.dots
  path = backbone_path(config)

  def compute() -> np.ndarray:
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
