"""The update side of one RL step, owned in one place: given the step's fresh groups, the learner
mixes in replayed ones, lays the batch out on the device(s) with pi_old, admits the fresh groups to
the replay buffer with pi_old as their behaviour log-probs, and runs the update.

  learner.fresh_groups(step)              how many fresh groups the step should roll out
  state, result = learner.learn(state, fresh, step)

It holds the compiled programs (`update.PolicyUpdate`), the optional replay buffer and the KL
reference params; the train state stays the caller's (it is donated to the update and checkpointed
beside the learner's own `state_dict`, the replay buffer's contents). Replay draws are keyed by
(seed, step), so a resumed run repeats them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from dots_jax.rl import replay, update
from dots_jax.rl.batch import Groups, make_batch
from dots_jax.rl.losses import AdvNorm


@dataclasses.dataclass(frozen=True)
class LearnResult:
  """What one `Learner.learn` call did."""

  metrics: dict[str, Any]  # the update's metrics, on the host
  gap: dict[str, float]  # the fresh rows' training-inference gap (`update.behaviour_gap`)
  seconds: dict[str, float]  # wall time of pi_old (with the batch's transfer) and of the update
  is_replay_Q: np.ndarray  # bool per trained group (fresh first, then replayed)
  admitted: int  # fresh groups the replay buffer took
  replay_size: int  # groups the buffer holds after admitting them

  @property
  def replayed(self) -> int:
    return int(self.is_replay_Q.sum())


class Learner:
  """Owns "learn from this step's groups"; see the module docstring."""

  def __init__(self, programs: update.PolicyUpdate, *, batch_groups: int, adv_norm: AdvNorm,
               seed: int, buffer: replay.ReplayBuffer | None = None, ref_params: Any = None):
    self.programs = programs
    self.batch_groups = int(batch_groups)
    self.adv_norm = adv_norm
    self.seed = int(seed)
    self.buffer = buffer
    self.ref_params = ref_params

  @classmethod
  def build(cls, graphdef: nnx.GraphDef, params: nnx.State, optimizer: optax.GradientTransformation,
            ucfg: update.UpdateConfig, *, batch_groups: int, group_size: int, total_len: int,
            adv_norm: AdvNorm, seed: int, replay_settings: replay.ReplaySettings | None,
            mesh: Any = None, state_shardings: update.TrainState | None = None) -> "Learner":
    """The learner for a policy whose initial weights are `params` (with ucfg.kl_beta != 0 they are
    copied as the KL reference, laid out like the train state's params); a replay buffer where
    `replay_settings` is given."""
    ref_params = ref_sh = None
    if ucfg.kl_beta != 0.0:
      ref_sh = state_shardings.params if state_shardings is not None else None
      copy = jax.tree.map(lambda x: x.copy(), params)
      ref_params = jax.device_put(copy, ref_sh) if ref_sh is not None else copy
    programs = update.make_update_fn(graphdef, optimizer, ucfg, mesh=mesh,
                                     state_shardings=state_shardings, ref_shardings=ref_sh)
    buffer = (replay.ReplayBuffer.build(replay_settings, group_size, total_len, batch_groups)
              if replay_settings is not None else None)
    return cls(programs, batch_groups=batch_groups, adv_norm=adv_norm, seed=seed, buffer=buffer,
               ref_params=ref_params)

  def fresh_groups(self, step: int) -> int:
    """Fresh groups to roll out at `step` (the rest of the batch is replayed)."""
    return self.buffer.plan(step)[0] if self.buffer is not None else self.batch_groups

  def learn(self, state: update.TrainState, fresh: Groups, step: int
            ) -> tuple[update.TrainState, LearnResult]:
    """One update on `fresh` (at most `fresh_groups(step)` groups) plus the replayed groups;
    `state` is donated. A short batch is padded to the planned shape (one compiled update)."""
    t0 = time.perf_counter()
    groups, is_replay_Q = replay.mix_replay(self.buffer, fresh, self.seed, step)
    rows = make_batch(groups, is_replay_Q, self.adv_norm, self.batch_groups)
    batch = self.programs.device_batch(state.params, rows)
    # The gap's few scalars come back to the host, so pi_old is done when they do.
    gap = self.programs.gap(batch)
    t1 = time.perf_counter()
    # The fresh groups join the buffer with pi_old, before the update moves the params.
    admitted = replay.admit(self.buffer, fresh, batch.old_logp_NxT, step)
    state, metrics = self.programs(state, batch, self.ref_params)
    metrics = jax.device_get(metrics)
    return state, LearnResult(metrics=metrics, gap=gap, is_replay_Q=is_replay_Q,
                              admitted=admitted,
                              replay_size=len(self.buffer) if self.buffer is not None else 0,
                              seconds={"pi_old": t1 - t0, "update": time.perf_counter() - t1})

  def state_dict(self) -> dict[str, np.ndarray]:
    """The learner's host state for the checkpoint: the replay buffer's contents ({} without)."""
    return self.buffer.state_dict() if self.buffer is not None else {}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    if self.buffer is not None:
      self.buffer.load_state_dict(state)
