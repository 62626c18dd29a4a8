"""Difficulty-targeted candidate sources: DOTS (arXiv 2506.05316, reference trainer's round loop) and
its oracle.

Every `round_steps` training steps a round starts: the source predicts every question's pass rate,
and `round_steps * batch_questions` questions are sampled without replacement from
softmax(-|p_hat - alpha| / tau) and shuffled; steps then take batches from that list in order. After
the sampled block the list continues with the rest of the same without-replacement draw, so a strategy
that needs extra candidates in a round (GRESO, dynamic sampling on top of DOTS) still gets the next
most suitable ones.

`DotsSource` predicts as DOTS does: K reference questions drawn at random are rolled out (labels
only, not trained on), the estimator predicts every question's pass rate against them in jitted
chunks, and a least-squares line fitted on the references' own predictions recalibrates all
predictions. Optional online fine-tuning: the groups trained on during a round, labelled with their
observed pass rates, fine-tune the adapters at the start of the next round against that round's
reference set (the labels all come from the same policy era), before predicting with the new
references.

`OracleSource` is a diagnostic, not a method of the papers: the same sampling from the exact pass
rates of every question under the current policy (tasks with one accepted completion, where one
forward pass gives them: `dots_jax.exact`), with no reference rollouts. It measures what DOTS's
selection rule could do with a perfect estimator, separating the rule from the estimator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dots_jax.difficulty import estimator as est
from dots_jax.difficulty.fit import fit_estimator
from dots_jax.selection.base import Proposal, StepContext, group_stats


def targeted_order(pred_N: np.ndarray, alpha: float, tau: float, budget: int,
                   rng: np.random.Generator) -> np.ndarray:
  """Every question once: the first `budget` drawn without replacement from
  softmax(-|pred - alpha| / tau), shuffled, then the rest of the same draw."""
  return drawn_order(-np.abs(np.asarray(pred_N, np.float64) - alpha) / tau, budget, rng)


def drawn_order(logits_N: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
  """Every question once: the first `budget` drawn without replacement from softmax(logits),
  shuffled (the reference trainer shuffles the block), then the rest of the same draw."""
  # Gumbel top-k == successive sampling without replacement from softmax(logits).
  logits = np.asarray(logits_N, np.float64)
  order = np.argsort(-(logits + rng.gumbel(size=len(logits))), kind="stable")
  head = order[:budget][rng.permutation(budget)]
  return np.concatenate([head, order[budget:]])


class TargetedSource:
  """The round loop shared by DOTS and its oracle: predictions per round, sampling near `alpha`,
  serving candidates in order. Subclasses set `self.pred` when a round starts."""

  def __init__(self, num_questions: int, *, round_steps: int, alpha: float, tau: float):
    if round_steps < 1 or tau <= 0:
      raise ValueError(f"selection.dots needs round_steps >= 1 and tau > 0, got {round_steps}, {tau}")
    self.num_questions = int(num_questions)
    self.round_steps = int(round_steps)
    self.alpha, self.tau = float(alpha), float(tau)
    self._reset_round_state()

  def _reset_round_state(self) -> None:
    self.order = np.zeros((0,), np.int64)
    self.pos = 0
    self.steps_in_round = 0
    self.rounds = 0
    self.pred = np.full(self.num_questions, np.nan, np.float32)
    # The round in which each question was last rolled out (-1: never): which questions the draw
    # has stopped drawing (`undrawn`, a diagnostic).
    self.last_round = np.full(self.num_questions, -1, np.int64)

  def _mark_drawn(self, indices: np.ndarray) -> None:
    self.last_round[np.asarray(indices, np.int64)] = self.rounds

  def undrawn(self, indices: np.ndarray, rounds: int) -> np.ndarray:
    """Whether each of `indices` was not rolled out in the last `rounds` rounds (this one included)."""
    last = self.last_round[np.asarray(indices, np.int64)]
    return (last < 0) | (self.rounds - last >= rounds)

  def _round_due(self, ctx: StepContext) -> bool:
    return ctx.round == 0 and (self.rounds == 0 or self.steps_in_round >= self.round_steps)

  def _start_round(self, ctx: StepContext) -> None:
    self.order = self._sample_order(ctx, ctx.batch_questions)
    self.pos, self.steps_in_round = 0, 0
    self.rounds += 1

  def _sample_order(self, ctx: StepContext, batch_questions: int) -> np.ndarray:
    return targeted_order(self.pred, self.alpha, self.tau,
                          min(self.round_steps * batch_questions, self.num_questions), ctx.rng)

  def take(self, n: int) -> np.ndarray:
    if not len(self.order):
      raise RuntimeError(f"{type(self).__name__}.take before the first round")
    out = []
    while n > 0:
      part = self.order[self.pos:self.pos + n]
      out.append(part)
      n -= len(part)
      self.pos = (self.pos + len(part)) % len(self.order)
    return np.concatenate(out)

  def predicted(self, indices: np.ndarray) -> np.ndarray:
    return self.pred[indices]

  def observe_prelude(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> None:
    raise RuntimeError(f"{type(self).__name__} proposed no label-only rollouts")

  def observe_train(self, indices: np.ndarray, rewards_QxG: np.ndarray) -> None:
    del rewards_QxG
    self._mark_drawn(indices)

  def end_step(self, ctx: StepContext) -> dict[str, float]:
    del ctx
    self.steps_in_round += 1
    return {"dots/rounds": float(self.rounds)}

  def state_dict(self) -> dict[str, np.ndarray]:
    out = {"order": self.order, "pos": np.asarray(self.pos),
           "steps_in_round": np.asarray(self.steps_in_round), "rounds": np.asarray(self.rounds),
           "pred": self.pred, "last_round": self.last_round}
    return {k: np.array(v) for k, v in out.items()}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    pred = np.asarray(state["pred"], np.float32)
    if pred.shape != (self.num_questions,):
      raise ValueError(f"selection state covers {pred.shape[0]} questions, data set has "
                       f"{self.num_questions}")
    self.order = np.asarray(state["order"], np.int64)
    self.pos, self.steps_in_round = int(state["pos"]), int(state["steps_in_round"])
    self.rounds = int(state["rounds"])
    self.pred = pred.copy()
    if "last_round" in state:  # checkpoints from before the diagnostic have none
      self.last_round = np.asarray(state["last_round"], np.int64).copy()


class OracleSource(TargetedSource):
  """DOTS's sampling from exact pass rates (`StepContext.pass_rates`): the estimator's upper bound."""

  def prelude(self, ctx: StepContext) -> Proposal | None:
    if self._round_due(ctx):
      if ctx.pass_rates is None:
        raise RuntimeError("the oracle source needs exact pass rates (config.eval.exact=True on a "
                           "task with one accepted completion)")
      self.pred = np.asarray(ctx.pass_rates(np.arange(self.num_questions)), np.float32)
      self._start_round(ctx)
    return None


class DotsSource(TargetedSource):
  """DOTS: predictions from reference rollouts through the attention estimator."""

  def __init__(self, embeddings_NxD: np.ndarray, model: est.DifficultyEstimator, *, ref_size: int,
               round_steps: int, alpha: float, tau: float, chunk: int = 8192,
               online_finetune: bool = False, online_steps: int = 20, online_lr: float = 1e-4,
               online_batch: int = 64, seed: int = 0):
    emb = np.asarray(embeddings_NxD, np.float32)
    if emb.ndim != 2 or emb.shape[1] != model.cfg.input_dim:
      raise ValueError(f"embeddings shape {emb.shape} does not fit the estimator's input_dim "
                       f"{model.cfg.input_dim}")
    if not 2 <= ref_size <= emb.shape[0]:
      raise ValueError(f"selection.dots.ref_size={ref_size} must be in [2, {emb.shape[0]}]")
    self.emb = emb
    self.model = model
    self.ref_size, self.chunk = int(ref_size), int(chunk)
    self.online_finetune = bool(online_finetune)
    self.online_steps, self.online_lr, self.online_batch = online_steps, online_lr, online_batch
    self.seed = int(seed)
    self._pq = None  # cached P_q(e) for all questions; dropped when the adapters change
    super().__init__(emb.shape[0], round_steps=round_steps, alpha=alpha, tau=tau)

  def _reset_round_state(self) -> None:
    super()._reset_round_state()
    self.ref_idx = np.zeros((0,), np.int64)
    self.ref_labels = np.zeros((0,), np.float32)
    self.recal = (1.0, 0.0)
    self.seen_idx = np.zeros((0,), np.int64)  # trained-on groups of this round (online fine-tuning)
    self.seen_labels = np.zeros((0,), np.float32)

  # ----- round start: reference rollouts, prediction, sampling -----

  def prelude(self, ctx: StepContext) -> Proposal | None:
    if not self._round_due(ctx):
      return None
    refs = ctx.rng.choice(self.num_questions, self.ref_size, replace=False)
    return Proposal(refs, self.pred[refs], train=False)

  def observe_prelude(self, ctx: StepContext, proposal: Proposal, rewards_QxG: np.ndarray) -> None:
    labels = group_stats(rewards_QxG).pass_rate_Q.astype(np.float32)
    if self.online_finetune and len(self.seen_idx) and len(self.ref_idx):
      self._finetune(ctx)
    self.ref_idx, self.ref_labels = proposal.indices.copy(), labels
    self._predict()
    self._start_round(ctx)
    self.seen_idx = np.zeros((0,), np.int64)
    self.seen_labels = np.zeros((0,), np.float32)

  def _projections(self) -> np.ndarray:
    if self._pq is None:
      self._pq = est.project_queries(self.model, self.emb, self.chunk)
    return self._pq

  def _predict(self) -> None:
    self.pred, self.recal = est.predict_recalibrated(self.model, self._projections(), self.emb,
                                                     self.ref_idx, self.ref_labels, self.chunk)

  def _finetune(self, ctx: StepContext) -> None:
    fit_estimator(self.model, self.emb, self._label_vector(), steps=self.online_steps,
                  lr=self.online_lr, warmup=0, batch=self.online_batch, ref_size=self.ref_size,
                  seed=int(ctx.rng.integers(1 << 31)), ref_pool=self.ref_idx,
                  query_pool=self.seen_idx)
    self._pq = None

  def _label_vector(self) -> np.ndarray:
    labels = np.zeros(self.num_questions, np.float32)
    labels[self.seen_idx] = self.seen_labels
    labels[self.ref_idx] = self.ref_labels
    return labels

  def observe_train(self, indices: np.ndarray, rewards_QxG: np.ndarray) -> None:
    super().observe_train(indices, rewards_QxG)
    if self.online_finetune:
      self.seen_idx = np.concatenate([self.seen_idx, indices])
      self.seen_labels = np.concatenate(
          [self.seen_labels, group_stats(rewards_QxG).pass_rate_Q.astype(np.float32)])

  def end_step(self, ctx: StepContext) -> dict[str, float]:
    out = super().end_step(ctx)
    out.update({"dots/recal_slope": self.recal[0], "dots/recal_intercept": self.recal[1],
                "dots/ref_pass_rate": (float(self.ref_labels.mean()) if len(self.ref_labels)
                                       else np.nan)})
    return out

  # ----- checkpointing -----

  def state_dict(self) -> dict[str, np.ndarray]:
    out = super().state_dict()
    out.update({"ref_idx": np.array(self.ref_idx), "ref_labels": np.array(self.ref_labels),
                "recal": np.asarray(self.recal, np.float64), "seen_idx": np.array(self.seen_idx),
                "seen_labels": np.array(self.seen_labels)})
    if self.online_finetune:  # the adapters drift only when fine-tuned online
      out.update({f"params/{k}": v for k, v in est.params_to_flat(self.model).items()})
    return out

  def load_state_dict(self, state: dict[str, Any]) -> None:
    super().load_state_dict(state)
    self.ref_idx = np.asarray(state["ref_idx"], np.int64)
    self.ref_labels = np.asarray(state["ref_labels"], np.float32)
    self.recal = tuple(float(v) for v in np.asarray(state["recal"]))
    self.seen_idx = np.asarray(state["seen_idx"], np.int64)
    self.seen_labels = np.asarray(state["seen_labels"], np.float32)
    params = {k[len("params/"):]: v for k, v in state.items() if k.startswith("params/")}
    if self.online_finetune:
      est.load_flat_params(self.model, params, where="selection state params/")
      self._pq = None
