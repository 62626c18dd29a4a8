"""The simulator's own settings (`python -m dots_jax.sim --sim.KEY=VALUE`), apart from the training
config whose strategies it runs.

The model is `dots_jax.sim.world`'s docstring; each value's source, and the statistics it was
calibrated to, are in docs/SIMULATOR.md. questions: the training set's size (0: the config's own,
where it is known: `training_set_size`); heldout: the questions accuracy is measured on. A question
uses 1..max_skills of `skills` skills; its logit is logit_mean - content + idiosyncratic + what its
skills add + what training on it added + wander: content has sds skill_sd (per skill) and visible_sd
(per question; the embedding sees both), idiosyncratic idio_sd (no embedding sees it). skill_lr:
what a step whose groups all teach adds to a skill, scaled by the step's progress n / (n +
noise_groups) for n teaching groups; a skill adds at most skill_cap to a logit (skill_cap *
tanh(skill / skill_cap); 0 = no cap). question_lr: what a teaching visit adds to its own question.
drift_sd / drift_steps: sd and correlation time (steps) of every logit's wander. replay_decay: a
replayed group's teaching weight per step of age. Embeddings: embed_dim wide, embed_noise per
coordinate. train_cost: the time of training one sequence (pi_old + update) in
rollout-equivalents.
"""

from __future__ import annotations

import ml_collections

from dots_jax.data import sources


def sim_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      questions=0, heldout=2000, skills=16, max_skills=3, logit_mean=0.0, skill_sd=2.5,
      visible_sd=6.0, idio_sd=3.0, skill_lr=0.02, skill_cap=3.0, noise_groups=128.0,
      question_lr=0.05, drift_sd=0.5, drift_steps=50.0, replay_decay=0.8, embed_dim=64,
      embed_noise=0.5, train_cost=0.25))


def training_set_size(train: str, synthetic_train_size: int) -> int:
  """Rows of the training set `train` (config.data.train) without reading it: the synthetic pool's
  size, or the registry's row counts; 0 where unknown (a user's file)."""
  if train == "synthetic":
    return int(synthetic_train_size)
  parts = [sources.SOURCES.get(p) for p in train.split("+")]
  if any(p is None or not p.rows for p in parts):
    return 0
  return sum(p.rows for p in parts)
