"""The simulator's stand-in for a policy: every question's pass rate as a function of skills the policy
learns, with question embeddings the DOTS estimator can read.

A question q (pool questions first, then the held-out ones) has:
  * skill weights w_q: it uses 1..`max_skills` of `skills` skills, weight 1/k each;
  * a content difficulty c_q = w_q . h + v_q (h_k the hardness of skill k, v_q the question's own
    visible difficulty): what the question's text says about how hard it is;
  * an idiosyncratic part i_q that no embedding shows (the share the estimator cannot predict).
Its pass rate is sigmoid(logit_mean - c_q + i_q + w_q . g(s) + o_q + u_q): s are the policy's skill
levels (0 at the start), g(s) = skill_cap * tanh(s / skill_cap) what a skill adds to a logit, with
diminishing returns up to skill_cap (the headroom RL has: questions harder than that stay
unsolved), o_q what training on q itself moved it by, u_q its wander (below).

Learning (`learn`), per RL step, from the groups trained on: a group teaches only when its rewards
vary; a replayed group teaches with weight replay_decay ** age (age in steps since its rollout).
  * skills: the step makes progress n / (n + noise_groups) for n the teaching weight of the batch
    (the gradient-noise-scale model of large-batch training, McCandlish et al. 2018, arXiv
    1812.06162: under Adam the step's size is set by the learning rate, its use by the signal-to-noise
    of the gradient, and only groups with reward variance carry signal); that progress is split over
    the skills in proportion to the taught weight on each: s += skill_lr * progress * skills *
    taught_S / sum(taught_S), so a step where every skill is taught equally moves each by skill_lr x
    progress;
  * the trained question itself: o_q += question_lr * its teaching weight (a visit moves it a little
    beyond what its skills give it; held-out questions never get this).
Every question's logit also wanders: u_q, a stationary AR(1) process with standard deviation
drift_sd and correlation time drift_steps steps, added to the logit. The policy changes in ways no
training signal explains (an all-correct question is sometimes failed again, an all-wrong one
sometimes solved), which is what lets a question zero-variance at one visit be informative at a
later one.

Embeddings: [sqrt(k_q) w_q, v_q / visible_sd] rotated into `embed_dim` dimensions by a fixed random
matrix, plus N(0, embed_noise) per coordinate.

Every parameter lives in the simulator's own settings (`dots_jax.sim.settings`), with its source in
docs/SIMULATOR.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class WorldParams:
  """The simulator's model parameters (`sim_config()`; see the module docstring)."""

  skills: int
  max_skills: int
  logit_mean: float
  skill_sd: float
  visible_sd: float
  idio_sd: float
  skill_lr: float
  skill_cap: float
  noise_groups: float
  question_lr: float
  drift_sd: float
  drift_steps: float
  replay_decay: float
  embed_dim: int
  embed_noise: float

  @classmethod
  def from_config(cls, sim: Any) -> "WorldParams":
    return cls(**{f.name: sim[f.name] for f in dataclasses.fields(cls)})

  def __post_init__(self):
    if self.skills < 1 or not 1 <= self.max_skills <= self.skills:
      raise ValueError(f"sim needs skills >= 1 and 1 <= max_skills <= skills, got "
                       f"{self.skills}, {self.max_skills}")
    for name in ("skill_sd", "visible_sd", "idio_sd", "skill_lr", "noise_groups", "question_lr",
                 "skill_cap",
                 "drift_sd", "embed_noise"):
      if getattr(self, name) < 0:
        raise ValueError(f"sim.{name} must be >= 0, got {getattr(self, name)}")
    if self.drift_steps <= 0:
      raise ValueError(f"sim.drift_steps must be > 0, got {self.drift_steps}")
    if not 0.0 <= self.replay_decay <= 1.0:
      raise ValueError(f"sim.replay_decay must be in [0, 1], got {self.replay_decay}")


class PassRateWorld:
  """Pass rates of `num_questions` pool questions and `heldout` held-out ones under a simulated
  policy; a pure function of (params, sizes, seed) until `learn`/`drift` move it."""

  def __init__(self, params: WorldParams, num_questions: int, heldout: int, seed: int):
    if num_questions < 1 or heldout < 1:
      raise ValueError(f"the simulator needs pool and held-out questions, got {num_questions}, "
                       f"{heldout}")
    self.params, self.num_questions, self.heldout = params, int(num_questions), int(heldout)
    p = params
    rng = np.random.default_rng([int(seed), 0x5171])
    n, s = self.num_questions + self.heldout, p.skills
    k_N = rng.integers(1, p.max_skills + 1, n)
    ranks_NxS = np.argsort(rng.random((n, s)), axis=1).argsort(axis=1)
    self.w_NxS = np.where(ranks_NxS < k_N[:, None], 1.0 / k_N[:, None], 0.0)
    hard_S = rng.normal(0.0, p.skill_sd, s)
    visible_N = rng.normal(0.0, p.visible_sd, n)
    idio_N = rng.normal(0.0, p.idio_sd, n)
    content_N = self.w_NxS @ hard_S + visible_N
    self.base_N = p.logit_mean - content_N + idio_N
    self.skill_S = np.zeros(s)
    self.offset_N = np.zeros(n)
    self.wander_N = rng.normal(0.0, p.drift_sd, n)  # drawn from its stationary distribution
    latent = np.concatenate([self.w_NxS * np.sqrt(k_N)[:, None],
                             (visible_N / max(p.visible_sd, 1e-9))[:, None]], axis=1)
    rot = rng.normal(size=(s + 1, p.embed_dim)) / np.sqrt(s + 1)
    self.emb_NxD = (latent @ rot + rng.normal(0.0, p.embed_noise, (n, p.embed_dim))
                    ).astype(np.float32)

  # ----- reading the policy -----

  def logits(self, indices: np.ndarray) -> np.ndarray:
    i = np.asarray(indices, np.int64)
    return (self.base_N[i] + self.w_NxS[i] @ self.skill_gain() + self.offset_N[i]
            + self.wander_N[i])

  def skill_gain(self) -> np.ndarray:
    """What each skill adds to the logits of the questions using it."""
    cap = self.params.skill_cap
    return cap * np.tanh(self.skill_S / cap) if cap > 0 else self.skill_S

  def pass_rates(self, indices: np.ndarray) -> np.ndarray:
    """Exact pass rates of pool (or, offset by num_questions, held-out) question indices."""
    return 1.0 / (1.0 + np.exp(-self.logits(indices)))

  def pool_indices(self) -> np.ndarray:
    return np.arange(self.num_questions)

  def heldout_indices(self) -> np.ndarray:
    return np.arange(self.num_questions, self.num_questions + self.heldout)

  def pool_embeddings(self) -> np.ndarray:
    return self.emb_NxD[:self.num_questions]

  def rollout(self, indices: np.ndarray, group_size: int, rng: np.random.Generator) -> np.ndarray:
    """rewards_QxG: G Bernoulli(pass rate) draws per question."""
    p_Q = self.pass_rates(indices)
    return (rng.random((len(p_Q), group_size)) < p_Q[:, None]).astype(np.float32)

  # ----- moving the policy -----

  def learn(self, indices: np.ndarray, teaches_Q: np.ndarray, weight_Q: np.ndarray) -> None:
    """One RL step on the trained groups `indices` (fresh and replayed): `teaches_Q` marks the groups
    whose rewards vary, `weight_Q` their weight (1 fresh, replay_decay ** age replayed)."""
    i = np.asarray(indices, np.int64)
    if not len(i):
      return
    taught_Q = np.asarray(weight_Q, np.float64) * np.asarray(teaches_Q, bool)
    taught_S = taught_Q @ self.w_NxS[i]
    n_taught = float(taught_Q.sum())
    if n_taught > 0:
      progress = n_taught / (n_taught + self.params.noise_groups)
      self.skill_S += (self.params.skill_lr * progress * self.params.skills
                       * taught_S / taught_S.sum())
    np.add.at(self.offset_N, i, self.params.question_lr * taught_Q)

  def drift(self, rng: np.random.Generator) -> None:
    """One step of every question's wander."""
    if self.params.drift_sd > 0:
      a = np.exp(-1.0 / self.params.drift_steps)
      self.wander_N = (a * self.wander_N
                       + np.sqrt(1.0 - a * a) * rng.normal(0.0, self.params.drift_sd, self.wander_N.shape))
