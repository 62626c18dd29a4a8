"""Train state, AdamW + schedule, and the jitted GRPO / GRPO-RR update over one RL batch.

Two compiled programs serve one RL step (`make_update_fn` returns both as a `PolicyUpdate`):
  * `old_logp(params, tokens, mask)`: per-token log-probs pi_old of the whole batch under the
    pre-update params (micro-batched, no grad), built into the step's `DeviceBatch` by
    `device_batch`. The learner (`dots_jax.rl.learner`) runs it before the replay buffer takes the
    step's fresh groups, so the behaviour log-probs mu stored for replay are the trainer's pi_old at
    generation time, the definition of the official DOTS trainer (`compute_log_prob` before the
    replay concat).
  * `update(state, batch)`: behaviour log-probs: replayed rows keep their stored mu, fresh rows use
    pi_old (mu == pi_old, so the objective is exactly GRPO for them and sampler/trainer numeric drift
    cannot leak into the ratio; with `tis_cap` their policy-gradient term is weighted by the capped
    ratio pi_old / mu_sampler instead); then ppo_epochs x mini_batches optimizer updates; each mini-batch's
    gradient is accumulated over micro-batches with lax.scan (memory ~ one micro-batch of activations).
    With `shuffle` rows are permuted per epoch with fold_in(fold_in(rng, step), epoch), padding rows
    (all-zero mask: a batch shorter than planned) kept last; without it mini-batches are consecutive
    rows, as verl's `batch.split`. Also pi_ref when kl_beta > 0 (the reference params are then an
    argument; with beta == 0 none exist).
  * An optimizer update is skipped (params and optimizer state left as they were) when its
    mini-batch has no loss tokens (only padding rows: the reference trainers take fewer mini-batches
    on a short batch) or when its loss or gradient norm is non-finite; the latter sets
    metrics["nonfinite"] and the caller stops via `raise_if_nonfinite`.

The learning-rate schedule counts optimizer updates; warmup/total steps are given in RL steps and
multiplied by updates-per-step (mini_batches * ppo_epochs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dots_jax.model.sharding import batch_sharding, forward_shardings, param_shardings
from dots_jax.rl import losses
from dots_jax.rl.batch import RLBatch
from dots_jax.rl.logprobs import logprobs_and_entropy


@struct.dataclass
class DeviceBatch:
  """One RL step's rows as the update consumes them: N = Q*G rows (question-major) of length T, laid
  out over the mesh's data-parallel axes. Built once per step by `PolicyUpdate.device_batch`, pi_old
  included; the update derives everything else (behaviour log-probs of fresh rows, weights)."""

  tokens_NxT: jax.Array  # int32
  mask_NxT: jax.Array  # int32, 1 on prompt and completion tokens
  loss_mask_NxT: jax.Array  # int32, 1 on completion tokens
  behav_logp_NxT: jax.Array  # float32, behaviour log-probs mu (the sampler's, or replay's stored)
  adv_N: jax.Array  # float32
  is_replay_N: jax.Array  # bool
  old_logp_NxT: jax.Array  # float32, pi_old under the pre-update params

  @staticmethod
  def layout(mesh: Mesh) -> "DeviceBatch":
    """The NamedSharding of every field: rows over ('data', 'fsdp')."""
    return DeviceBatch(**{f.name: batch_sharding(mesh, 1 if f.name.endswith("_N") else 2)
                          for f in dataclasses.fields(DeviceBatch)})

  @staticmethod
  def abstract(rows: int, seq: int, mesh: Mesh | None = None) -> "DeviceBatch":
    """Shapes and dtypes only (ahead-of-time compilation), laid out on `mesh` when given."""
    layout = DeviceBatch.layout(mesh) if mesh is not None else None
    out = {}
    for f in dataclasses.fields(DeviceBatch):
      shape = (rows,) if f.name.endswith("_N") else (rows, seq)
      out[f.name] = jax.ShapeDtypeStruct(
          shape, _DTYPES.get(f.name, np.float32),
          sharding=getattr(layout, f.name) if layout is not None else None)
    return DeviceBatch(**out)


_DTYPES = {"tokens_NxT": np.int32, "mask_NxT": np.int32, "loss_mask_NxT": np.int32,
           "is_replay_N": np.bool_}


@struct.dataclass
class TrainState:
  step: jax.Array  # int32: RL steps completed
  params: nnx.State
  opt_state: Any
  rng: jax.Array  # uint32[2] raw base key; per-step keys are fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
  """Static (compile-time) hyper-parameters of the update, from `config.rl` and `config.sampling`."""

  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  loss_agg: str = "token_mean"
  kl_beta: float = 0.0
  entropy_coef: float = 0.0
  mini_batches: int = 1
  ppo_epochs: int = 1
  micro_batch: int = 0  # rows per micro-batch; 0 = the whole mini-batch
  temperature: float = 1.0  # log-probs use log_softmax(logits / temperature), as the sampler
  shuffle: bool = True  # permute rows per epoch before splitting into mini-batches
  logits_chunk: int = 0  # positions per vocabulary-projection chunk (`logprobs_and_entropy`)
  # Truncated importance sampling of fresh tokens: the policy-gradient term of each is weighted by
  # min(pi_old / mu_sampler, tis_cap) (0 = off).
  tis_cap: float = 0.0

  @property
  def updates_per_step(self) -> int:
    return self.mini_batches * self.ppo_epochs

  def split(self, n_rows: int) -> tuple[int, int, int]:
    """(mini-batch rows, micro-batch rows, micro-batches per mini-batch) for a batch of n_rows."""
    if n_rows % self.mini_batches:
      raise ValueError(f"batch of {n_rows} rows does not split into config.rl.mini_batches="
                       f"{self.mini_batches}")
    mb = n_rows // self.mini_batches
    micro = self.micro_batch or mb
    if mb % micro:
      raise ValueError(f"mini-batch of {mb} rows does not split into config.rl.micro_batch={micro}")
    return mb, micro, mb // micro


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """`config.rl`'s AdamW and schedule: lr after a linear warmup of `warmup_steps` RL steps, then
  constant or cosine decay to lr * min_lr_ratio; global-norm clipping at grad_clip (<= 0: off)."""

  lr: float
  schedule: str
  warmup_steps: int
  min_lr_ratio: float
  weight_decay: float
  b1: float
  b2: float
  adam_eps: float
  grad_clip: float
  mu_dtype: str  # AdamW's first moment (config.rl.mu_dtype); the second stays float32


def lr_schedule(rl: OptimizerSettings, total_steps: int,
                updates_per_step: int = 1) -> optax.Schedule:
  """Linear warmup from 0 over rl.warmup_steps, then constant or cosine decay to lr*rl.min_lr_ratio."""
  warm = rl.warmup_steps * updates_per_step
  total = max(total_steps * updates_per_step, warm + 1)
  if rl.schedule == "constant":
    after = optax.constant_schedule(rl.lr)
  elif rl.schedule == "cosine":
    after = optax.cosine_decay_schedule(rl.lr, total - warm, alpha=rl.min_lr_ratio)
  else:
    raise ValueError(f"config.rl.schedule={rl.schedule!r}: expected 'constant' or 'cosine'")
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, rl.lr, warm), after], [warm])


def make_optimizer(rl: OptimizerSettings, total_steps: int,
                   updates_per_step: int = 1) -> optax.GradientTransformation:
  """Global-norm clipping (rl.grad_clip <= 0 disables it) followed by AdamW on all parameters."""
  if rl.mu_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.rl.mu_dtype={rl.mu_dtype!r}: expected 'float32' or 'bfloat16'")
  adamw = optax.adamw(lr_schedule(rl, total_steps, updates_per_step), b1=rl.b1, b2=rl.b2,
                      eps=rl.adam_eps, weight_decay=rl.weight_decay, mu_dtype=jnp.dtype(rl.mu_dtype))
  if rl.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(rl.grad_clip), adamw)
  return adamw


def init_train_state(params: nnx.State, optimizer: optax.GradientTransformation,
                     seed: int) -> TrainState:
  """Fresh state. Under a mesh, pass already-sharded params: jit propagates their layout to Adam's
  moments; then `jax.device_put(state, train_state_shardings(...))` pins every leaf."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=jax.jit(optimizer.init)(params), rng=jax.random.PRNGKey(seed))


def train_state_shardings(optimizer: optax.GradientTransformation, abstract_params: nnx.State,
                          mesh: Mesh) -> TrainState:
  """TrainState of NamedShardings: params by `sharding.param_shardings`, Adam moments follow their
  parameter, step/rng/counters replicated."""
  params_sharding = param_shardings(abstract_params, mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, params_sharding,
                                 transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params_sharding, opt_state=opt_sh, rng=replicated)


def _micro_split(x: jax.Array, k: int) -> jax.Array:
  return x.reshape((k, x.shape[0] // k) + x.shape[1:])


@dataclasses.dataclass(frozen=True)
class PolicyUpdate:
  """The step's two compiled programs (see the module docstring); `__call__` is the update."""

  old_logp_fn: Callable[..., jax.Array]
  update_fn: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  gap_fn: Callable[[DeviceBatch], dict[str, jax.Array]]
  mesh: Mesh | None = None

  def gap(self, batch: DeviceBatch) -> dict[str, float]:
    """The training-inference gap of `batch`'s fresh rows (`behaviour_gap`), on the host."""
    return {k: float(v) for k, v in jax.device_get(self.gap_fn(batch)).items()}

  def old_logp(self, params: nnx.State, tokens_NxT: Any, mask_NxT: Any) -> jax.Array:
    """pi_old per token [N, T] under `params` (0 off the completion tokens' positions)."""
    return self.old_logp_fn(params, tokens_NxT, mask_NxT)

  def device_batch(self, params: nnx.State, rows: RLBatch,
                   old_logp_NxT: jax.Array | None = None) -> DeviceBatch:
    """`rows` on the device(s) (laid out over the mesh's data axes), with pi_old under `params`
    (or `old_logp_NxT` where the caller already has it)."""
    if self.mesh is None:
      put = jnp.asarray
    else:
      put = lambda x: jax.device_put(x, batch_sharding(self.mesh, np.ndim(x)))
    arrays = {f.name: put(getattr(rows, f.name)) for f in dataclasses.fields(rows)}
    if old_logp_NxT is None:
      old_logp_NxT = self.old_logp(params, arrays["tokens_NxT"], arrays["mask_NxT"])
    return DeviceBatch(**arrays, old_logp_NxT=old_logp_NxT)

  def __call__(self, state: TrainState, batch: DeviceBatch, ref_params: Any = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    if not isinstance(batch, DeviceBatch):
      raise TypeError(f"the update takes a DeviceBatch (PolicyUpdate.device_batch), got "
                      f"{type(batch).__name__}")
    return self.update_fn(state, batch, ref_params)


def make_update_fn(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                   ucfg: UpdateConfig, *, mesh: Mesh | None = None,
                   state_shardings: TrainState | None = None, ref_shardings: Any = None
                   ) -> PolicyUpdate:
  """Returns the jitted `PolicyUpdate`: `update(state, batch, ref_params=None) -> (new_state,
  metrics)` over a `DeviceBatch` (`update.device_batch(params, rows)`), and
  `update.old_logp(params, tokens_NxT, mask_NxT)`.

  `state` is donated. `ref_params` must be given iff ucfg.kl_beta != 0. With a `mesh`, also pass
  `state_shardings` (`train_state_shardings`) and, when kl_beta != 0, `ref_shardings`
  (`sharding.param_shardings`): they become the jit's explicit in/out shardings; batch rows (and
  every micro-batch inside) are laid out by `sharding.batch_sharding` (rows over ('data', 'fsdp')),
  so rows per micro-batch must be a multiple of that axis size.
  """
  if (mesh is None) != (state_shardings is None):
    raise ValueError("make_update_fn: pass both mesh and state_shardings, or neither")
  forward_sh = None
  if mesh is not None:
    row_sharding = lambda ndim: batch_sharding(mesh, ndim)
    forward_sh = forward_shardings(state_shardings.params, mesh)

  def logp_fn(params, tokens, mask):
    return logprobs_and_entropy(nnx.merge(graphdef, params), tokens, mask, ucfg.temperature,
                                ucfg.logits_chunk, shardings=forward_sh)

  def constrain(tree):
    if mesh is None:
      return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, row_sharding(x.ndim)), tree)

  def no_grad_logp(params, tokens_NxT, mask_NxT):
    _, micro, _ = ucfg.split(tokens_NxT.shape[0])
    k = tokens_NxT.shape[0] // micro

    def one(xs):
      tok, msk = constrain(xs)
      return logp_fn(params, tok, msk)[0]
    lp = jax.lax.map(one, (_micro_split(tokens_NxT, k), _micro_split(mask_NxT, k)))
    return jax.lax.stop_gradient(lp.reshape(tokens_NxT.shape))

  def micro_loss(params, mb: DeviceBatch, ref_logp_NxT, weights_NxT, is_weight_NxT):
    logp, ent = logp_fn(params, mb.tokens_NxT, mb.mask_NxT)
    return losses.policy_loss(
        logp, mb.old_logp_NxT, mb.behav_logp_NxT, mb.adv_N, weights_NxT, mb.loss_mask_NxT,
        mb.is_replay_N, clip_eps_low=ucfg.clip_eps_low, clip_eps_high=ucfg.clip_eps_high,
        ref_logp_NxT=ref_logp_NxT, kl_beta=ucfg.kl_beta, entropy_NxT=ent,
        entropy_coef=ucfg.entropy_coef, is_weight_NxT=is_weight_NxT)

  grad_fn = jax.grad(micro_loss, has_aux=True)

  def mini_batch_rows(key, is_pad_N, n, mb_rows):
    """[updates, mb_rows] row indices: epochs of consecutive (or shuffled) rows, padding last."""
    if not ucfg.shuffle or ucfg.updates_per_step == 1:
      return jnp.tile(jnp.arange(n), ucfg.ppo_epochs).reshape(ucfg.updates_per_step, mb_rows)
    perms = []
    for e in range(ucfg.ppo_epochs):
      u = jax.random.uniform(jax.random.fold_in(key, e), (n,))
      perms.append(jnp.argsort(jnp.where(is_pad_N, 2.0, u)))
    return jnp.concatenate(perms).reshape(ucfg.updates_per_step, mb_rows)

  def update(state: TrainState, batch: DeviceBatch, ref_params: Any = None):
    if (ref_params is None) != (ucfg.kl_beta == 0.0):
      raise ValueError("ref_params must be passed exactly when config.rl.kl_beta != 0")
    n = batch.tokens_NxT.shape[0]
    mb_rows, micro, k = ucfg.split(n)
    old = batch.old_logp_NxT
    replay = batch.is_replay_N.astype(bool)
    # Fresh rows carry the sampler's log-probs: the TIS weights come from them, then their mu
    # becomes pi_old (replayed rows keep their stored mu, the trainer's pi_old when generated).
    tis_NxT, tis_metrics = losses.tis_weights(old, batch.behav_logp_NxT, batch.loss_mask_NxT,
                                              replay, ucfg.tis_cap)
    batch = batch.replace(behav_logp_NxT=jnp.where(replay[:, None], batch.behav_logp_NxT, old))
    ref_logp = (no_grad_logp(ref_params, batch.tokens_NxT, batch.mask_NxT)
                if ref_params is not None else None)

    key = jax.random.fold_in(state.rng, state.step)
    is_pad_N = jnp.sum(batch.mask_NxT, axis=1) == 0
    idx_UxM = mini_batch_rows(key, is_pad_N, n, mb_rows)

    def one_update(carry, idx_M):
      params, opt_state = carry
      mb, mb_ref, mb_tis = jax.tree.map(lambda x: x[idx_M], (batch, ref_logp, tis_NxT))
      weights = losses.token_weights(mb.loss_mask_NxT, ucfg.loss_agg)
      micro_batches = jax.tree.map(lambda x: _micro_split(x, k), (mb, mb_ref, weights, mb_tis))

      def accumulate(acc, micro_b):
        g, s = grad_fn(params, *constrain(micro_b))
        return (jax.tree.map(jnp.add, acc[0], g), losses.combine_stats(acc[1], s)), None

      first = jax.tree.map(lambda x: x[0], micro_batches)
      stats_shape = jax.eval_shape(micro_loss, params, *first)[1]
      acc0 = (jax.tree.map(jnp.zeros_like, params), losses.empty_stats(stats_shape))
      (grads, stats), _ = jax.lax.scan(accumulate, acc0, micro_batches)
      gnorm = optax.tree.norm(grads)
      finite = jnp.isfinite(gnorm) & jnp.isfinite(stats["loss"])
      ok = finite & (stats["tokens"] > 0)

      def apply(_):
        updates, new_opt = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_opt), optax.tree.norm(updates)

      # A skipped update leaves params and moments as they were; a branch rather than a select
      # over every parameter, which would be one more pass over params and moments.
      carry, step_norm = jax.lax.cond(
          ok, apply, lambda _: ((params, opt_state), jnp.zeros((), jnp.float32)), None)
      return carry, (stats, gnorm, finite, ok, step_norm)

    # Read before the scan: the donated params are updated in place, so no copy of the step's
    # starting weights has to outlive it.
    params_norm = optax.tree.norm(state.params)
    (params, opt_state), (stats_U, gnorm_U, finite_U, ok_U, step_norm_U) = jax.lax.scan(
        one_update, (state.params, state.opt_state), idx_UxM)
    stats = jax.tree.map(lambda x: x[0], stats_U)
    for u in range(1, ucfg.updates_per_step):
      stats = losses.combine_stats(stats, jax.tree.map(lambda x, u=u: x[u], stats_U))
    metrics = losses.finalize_stats(stats)
    n_up = jnp.maximum(jnp.sum(ok_U), 1).astype(jnp.float32)
    metrics["loss"] = metrics["loss"] / n_up
    metrics["pg_loss"] = metrics["pg_loss"] / n_up
    metrics["grad_norm"] = jnp.sum(jnp.where(ok_U, gnorm_U, 0.0)) / n_up
    metrics["grad_norm_max"] = jnp.max(gnorm_U)
    metrics["nonfinite"] = jnp.logical_not(jnp.all(finite_U))
    metrics["optimizer_updates"] = jnp.sum(ok_U).astype(jnp.float32)
    metrics.update(tis_metrics)
    metrics["batch_tokens"] = jnp.sum(batch.mask_NxT).astype(jnp.float32)
    # How far this step moved the weights, relative to their size (the divergence guard reads it):
    # the sum of its optimizer steps' norms, a bound on the distance moved (equal to it for one
    # optimizer step a step) that needs no copy of the starting weights beside the updated ones.
    metrics["update_ratio"] = jnp.sum(step_norm_U) / jnp.maximum(params_norm, 1e-12)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
    return new_state, metrics

  if mesh is None:
    jitted = jax.jit(update, donate_argnums=0)
    old_jitted = jax.jit(no_grad_logp)
  else:
    jitted = jax.jit(update, donate_argnums=0,
                     in_shardings=(state_shardings, DeviceBatch.layout(mesh), ref_shardings),
                     out_shardings=(state_shardings, None))
    old_jitted = jax.jit(no_grad_logp,
                         in_shardings=(state_shardings.params, row_sharding(2), row_sharding(2)),
                         out_shardings=row_sharding(2))
  # A function of this PolicyUpdate's own (jit caches programs per function object).
  return PolicyUpdate(old_jitted, jitted, jax.jit(lambda batch: behaviour_gap(batch)), mesh)


def behaviour_gap(batch: DeviceBatch) -> dict[str, jax.Array]:
  """The training-inference gap on the fresh rows' completion tokens: |log mu_sampler - log pi_old|
  per token (mean, p99, max) and the share of tokens whose ratio pi_old / mu_sampler is off 1 by
  more than 0.1. Replayed rows are left out (their stored mu is the trainer's pi_old). Computed
  before the update replaces the fresh rows' mu by pi_old."""
  fresh = batch.loss_mask_NxT.astype(bool) & ~batch.is_replay_N.astype(bool)[:, None]
  delta = batch.old_logp_NxT - batch.behav_logp_NxT
  gap = jnp.where(fresh, jnp.abs(delta), jnp.nan)
  n = jnp.maximum(jnp.sum(fresh), 1).astype(jnp.float32)
  has = jnp.any(fresh)
  off = jnp.where(fresh, jnp.abs(jnp.expm1(delta)) > 0.1, False)
  return {"logp_gap_mean": jnp.where(has, jnp.nansum(gap) / n, 0.0),
          "logp_gap_p99": jnp.where(has, jnp.nanquantile(gap, 0.99), 0.0),
          "logp_gap_max": jnp.where(has, jnp.nanmax(gap), 0.0),
          "ratio_off_frac": jnp.sum(off) / n}


class NonFiniteError(RuntimeError):
  """Raised by the caller's loop when an update produced a non-finite loss or gradient."""


class DivergenceError(RuntimeError):
  """Raised by the caller's loop when an update left a finite but diverging policy."""


def raise_if_diverged(metrics: dict[str, Any], step: int, *, max_update_ratio: float,
                      first_entropy: float, max_entropy_rise: float, vocab_size: int) -> None:
  """Stops the run naming the step when the update moved the weights by more than
  `max_update_ratio` of their norm, or when the policy's mean token entropy rose more than
  `max_entropy_rise` of the way from the first step's towards ln(vocab) (a collapse towards the
  uniform policy). Call it *before* saving the state; a bound <= 0 turns its check off."""
  why = []
  ratio = float(metrics["update_ratio"])
  if max_update_ratio > 0 and ratio > max_update_ratio:
    why.append(f"the update moved the weights by {ratio:.3g} of their norm (config.guard."
               f"max_update_ratio={max_update_ratio:g})")
  entropy, top = float(metrics.get("entropy", float("nan"))), float(np.log(vocab_size))
  if (max_entropy_rise > 0 and first_entropy == first_entropy and entropy == entropy
      and entropy - first_entropy > max_entropy_rise * max(top - first_entropy, 1e-6)):
    why.append(f"the policy's entropy rose from {first_entropy:.3g} to {entropy:.3g} nats (uniform: "
               f"{top:.3g}; config.guard.max_entropy_rise={max_entropy_rise:g})")
  if why:
    raise DivergenceError(
        f"the policy diverged at RL step {step}: {'; '.join(why)}; nothing was saved for it (the "
        f"newest checkpoint is the last good state); lower config.rl.lr, or set the config.guard "
        f"bound to 0 to go on")


def raise_if_nonfinite(metrics: dict[str, Any], step: int) -> None:
  """Stops the run naming the step; call it *before* saving the state returned with these metrics."""
  if bool(metrics["nonfinite"]):
    raise NonFiniteError(
        f"non-finite loss or gradient norm at RL step {step} (loss={float(metrics['loss'])}, "
        f"grad_norm_max={float(metrics['grad_norm_max'])}); that update was skipped and nothing was "
        f"saved for it: the last checkpoint is the last good state")
