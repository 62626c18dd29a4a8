"""The method's name -> strategy, from the method table's (source, filter) (`dots_jax.methods`).
Rollout replay is switched by the main loop, so for selection `dots_rr` is `dots`."""

from __future__ import annotations

import dataclasses

import numpy as np

from dots_jax.difficulty.estimator import DifficultyEstimator
from dots_jax.difficulty.tracker import DifficultyTracker
from dots_jax.methods import get_method
from dots_jax.selection.base import EpochStream, Strategy
from dots_jax.selection.dots import DotsSource, OracleSource
from dots_jax.selection.greso import GresoStrategy
from dots_jax.selection.mopps import MoppsStrategy
from dots_jax.selection.settings import SelectionSettings
from dots_jax.selection.track import GresoTrackStrategy, TrackSource
from dots_jax.selection.uniform import DynamicSamplingStrategy, UniformStrategy


def uses_dots(method: str) -> bool:
  """Whether `method` needs the question embeddings and the DOTS estimator."""
  return get_method(method).needs_estimator


def make_strategy(method_name: str, sel: SelectionSettings, num_questions: int, *, seed: int,
                  group_size: int, embeddings_NxD: np.ndarray | None = None,
                  estimator: DifficultyEstimator | None = None) -> Strategy:
  """The strategy of method `method_name` over a training set of `num_questions` questions. DOTS
  and tracking methods need the question embeddings and the estimator
  (`dots_jax.difficulty.offline.dots_inputs`); oracle methods need `StepContext.pass_rates` at
  every step (the loop passes them)."""
  method = get_method(method_name)
  source_kind, kind = method.source, method.filter
  if method.needs_estimator:
    if embeddings_NxD is None or estimator is None:
      raise ValueError(f"config.method={method_name!r} needs embeddings_NxD and estimator")
    if embeddings_NxD.shape[0] != num_questions:
      raise ValueError(f"{embeddings_NxD.shape[0]} embeddings for {num_questions} questions")
  tracker = None
  if method.tracks:
    tracker = DifficultyTracker(embeddings_NxD, estimator, sel.track.tracker,
                                group_size=group_size, seed=seed, chunk=sel.dots.chunk)
  d = sel.dots
  if source_kind == "dots":
    source = DotsSource(
        embeddings_NxD, estimator, ref_size=d.ref_size, round_steps=d.round_steps, alpha=d.alpha,
        tau=d.tau, chunk=d.chunk, online_finetune=d.online_finetune, online_steps=d.online_steps,
        online_lr=d.online_lr, online_batch=d.online_batch, seed=seed)
  elif source_kind == "oracle":
    source = OracleSource(num_questions, round_steps=d.round_steps, alpha=d.alpha, tau=d.tau)
  elif source_kind == "track":
    t = sel.track
    source = TrackSource(tracker, ref_size=t.ref_size, ref_mode=t.ref_mode,
                         train_refs=t.train_refs, round_steps=d.round_steps, draw=t.draw,
                         tau=t.tau, floor=t.floor)
  else:
    source = EpochStream(num_questions, seed)
  greso = dataclasses.asdict(sel.greso)
  if kind == "none":
    strategy = UniformStrategy(source)
  elif kind == "ds":
    strategy = DynamicSamplingStrategy(source, rounds=sel.rounds)
  elif kind == "greso_track":
    strategy = GresoTrackStrategy(source, tracker, rounds=sel.rounds, **greso)
  elif kind == "greso":
    strategy = GresoStrategy(source, num_questions, rounds=sel.rounds, **greso)
  else:
    m = sel.mopps
    strategy = MoppsStrategy(source, num_questions, prior_a=m.prior_a, prior_b=m.prior_b,
                             forget=m.forget, alpha=m.alpha, candidate_factor=m.candidate_factor)
  strategy.name = method_name  # checkpoints name the method they were written by
  return strategy
