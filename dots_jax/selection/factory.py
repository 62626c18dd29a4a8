"""`config.method` -> strategy, from the method table's (source, filter) (`dots_jax.methods`).
Rollout replay is switched by the main loop, so for selection `dots_rr` is `dots`."""

from __future__ import annotations

import ml_collections
import numpy as np

from dots_jax.difficulty.estimator import DifficultyEstimator
from dots_jax.difficulty.tracker import DifficultyTracker, TrackerSettings
from dots_jax.methods import get_method
from dots_jax.selection.base import EpochStream, RolloutRounds, Strategy
from dots_jax.selection.dots import DotsSource, OracleSource
from dots_jax.selection.greso import GresoStrategy
from dots_jax.selection.mopps import MoppsStrategy
from dots_jax.selection.track import GresoTrackStrategy, TrackSource
from dots_jax.selection.uniform import DynamicSamplingStrategy, UniformStrategy

def uses_dots(method: str) -> bool:
  """Whether `method` needs the question embeddings and the DOTS estimator."""
  return get_method(method).needs_estimator


def make_strategy(config: ml_collections.ConfigDict, num_questions: int, *,
                  embeddings_NxD: np.ndarray | None = None,
                  estimator: DifficultyEstimator | None = None) -> Strategy:
  """The strategy for `config.method` over a training set of `num_questions` questions. DOTS methods
  need the question embeddings and the estimator (`dots_jax.difficulty.offline.dots_inputs`); oracle
  methods need `StepContext.pass_rates` at every step (the loop passes them)."""
  method = get_method(config.method)
  source_kind, kind = method.source, method.filter
  sel = config.selection
  if method.needs_estimator:
    if embeddings_NxD is None or estimator is None:
      raise ValueError(f"config.method={config.method!r} needs embeddings_NxD and estimator")
    if embeddings_NxD.shape[0] != num_questions:
      raise ValueError(f"{embeddings_NxD.shape[0]} embeddings for {num_questions} questions")
  tracker = None
  if method.tracks:
    t = sel.track
    tracker = DifficultyTracker(
        embeddings_NxD, estimator,
        TrackerSettings(half_life=t.half_life, drift=t.drift, max_labels=t.max_labels,
                        clusters=t.clusters, shrink=t.shrink, content_floor=t.content_floor),
        group_size=config.sampling.group_size, seed=config.seed, chunk=sel.dots.chunk)
  if source_kind == "dots":
    d = sel.dots
    source = DotsSource(
        embeddings_NxD, estimator, ref_size=d.ref_size, round_steps=d.round_steps, alpha=d.alpha,
        tau=d.tau, chunk=d.chunk, online_finetune=d.online_finetune, online_steps=d.online_steps,
        online_lr=d.online_lr, online_batch=d.online_batch, seed=config.seed)
  elif source_kind == "oracle":
    d = sel.dots
    source = OracleSource(num_questions, round_steps=d.round_steps, alpha=d.alpha, tau=d.tau)
  elif source_kind == "track":
    t = sel.track
    source = TrackSource(tracker, ref_size=t.ref_size, ref_mode=t.ref_mode,
                         train_refs=t.train_refs, round_steps=sel.dots.round_steps, tau=t.tau)
  else:
    source = EpochStream(num_questions, config.seed)
  if kind == "none":
    strategy = UniformStrategy(source)
  elif kind == "ds":
    strategy = DynamicSamplingStrategy(source, rounds=RolloutRounds(**sel.rounds.to_dict()))
  elif kind == "greso_track":
    g = sel.greso
    strategy = GresoTrackStrategy(
        source, tracker, alpha=g.alpha, p_init=g.p_init, p_step=g.p_step, p_min=g.p_min,
        p_max=g.p_max, min_keep=g.min_keep, rounds=RolloutRounds(**sel.rounds.to_dict()))
  elif kind == "greso":
    g = sel.greso
    strategy = GresoStrategy(
        source, num_questions, alpha=g.alpha, p_init=g.p_init, p_step=g.p_step, p_min=g.p_min,
        p_max=g.p_max, min_keep=g.min_keep, rounds=RolloutRounds(**sel.rounds.to_dict()))
  else:
    m = sel.mopps
    strategy = MoppsStrategy(source, num_questions, prior_a=m.prior_a, prior_b=m.prior_b,
                             forget=m.forget, alpha=m.alpha, candidate_factor=m.candidate_factor)
  strategy.name = config.method  # checkpoints name the method they were written by
  return strategy
