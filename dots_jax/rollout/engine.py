"""Continuous-batching rollout engine: completions stream through a fixed number of KV-cache slots.

The static `Sampler` decodes a whole call's B*G rows together until the longest ends; its cache is
B*G*(P+R) slots. Here memory is `slots` rows of P+R cache slots whatever the call's size, and work
follows the rows' live lengths:

  * insert: a block of waiting completions is prefilled (the G samples of a prompt share one
    prefill: each unique prompt in the block is run once) and written into free slots;
  * decode: every live slot advances `steps_per_call` tokens in one jitted program; a finished slot
    (stop token or its limit) is freed on the host and the next waiting completion takes it at the
    following insert, so a few long answers do not idle the rest;
  * windows: a decode program attends over the first W cache slots only, W the smallest of a few
    static sizes that covers every live row, so short rows do not pay for the longest cap.

Randomness is keyed by (call key, completion index, token position): completion i of a call (row
b*G+g) draws the same tokens whatever the slot count, the insertion order or the window. Cache
layout per slot: the prompt right-aligned to `max_prompt_len` (its padding masked), then the
completion from slot `max_prompt_len` on. Compiled programs: one insert per prompt bucket, one
decode per window size.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dots_jax.model.qwen2 import (KVCache, Qwen2Config, abstract_model, init_cache,
                                  positions_from_mask)
from dots_jax.model.sharding import (BATCH_AXES, cache_sharding, data_parallel_size,
                                     forward_shardings, param_shardings, to_host)
from dots_jax.rollout.filtering import choose_tokens
from dots_jax.rollout.sampler import FINISH_LENGTH, FINISH_STOP, SampleOutput


@dataclasses.dataclass(frozen=True)
class EngineStats:
  """What the last `generate` call did (for benchmarks and the dry run)."""

  decode_calls: int
  insert_calls: int
  slot_steps: int  # slots x decode steps run (live or not): the decode work
  windows: tuple[int, ...]  # window size of each decode call


def slot_cache_bytes(cfg: Qwen2Config, slots: int, max_prompt_len: int, max_new_tokens: int,
                     kv_dtype: str | None = None, kv_shards: int = 1) -> int:
  """Bytes of the engine's KV cache (k and v, every layer) for `slots` rows on one device, whose
  KV heads are split `kv_shards` ways (`sharding.kv_head_shards`)."""
  per_slot = (2 * cfg.num_hidden_layers * (max_prompt_len + max_new_tokens)
              * cfg.num_key_value_heads // kv_shards * cfg.head_dim
              * np.dtype(kv_dtype or cfg.dtype).itemsize)
  return slots * per_slot


def slots_for_budget(cfg: Qwen2Config, budget_gib: float, max_prompt_len: int,
                     max_new_tokens: int, multiple: int = 1, kv_shards: int = 1) -> int:
  """The most slots (a multiple of `multiple`) whose KV cache fits `budget_gib` GiB on a device
  holding 1 / kv_shards of the KV heads."""
  per_slot = slot_cache_bytes(cfg, 1, max_prompt_len, max_new_tokens, kv_shards=kv_shards)
  n = int(budget_gib * 2**30 // per_slot) // multiple * multiple
  if n < multiple:
    raise ValueError(f"config.sampling.kv_budget_gib={budget_gib}: one slot needs "
                     f"{per_slot / 2**30:.3f} GiB of KV cache (x{multiple} for the data shards)")
  return n


class Engine:
  """Fixed-slot generation for one policy architecture; params are passed per call.

  Same contract as `Sampler.generate` (rows question-major, log-probs of the temperature-scaled
  distribution before truncation, stop tokens kept, finish reasons), with memory bounded by
  `slots`. `windows` static cache-window sizes are used (1 = always the full P + R). With a
  mesh the slots are split over the data axes ('data', 'fsdp'), so `slots` must be a multiple of
  their product (each device holds slots / shards rows of cache); params keep their sharding.
  """

  def __init__(self, graphdef: nnx.GraphDef, cfg: Qwen2Config, *, slots: int, max_prompt_len: int,
               max_new_tokens: int, eos_ids: Sequence[int], pad_id: int, steps_per_call: int = 8,
               windows: int = 4, mesh: Mesh | None = None, prefill_prompts: int = 0):
    if slots < 1 or steps_per_call < 1 or windows < 1 or prefill_prompts < 0:
      raise ValueError(f"slots ({slots}), steps_per_call ({steps_per_call}) and windows "
                       f"({windows}) must be >= 1, prefill_prompts ({prefill_prompts}) >= 0")
    shards = data_parallel_size(mesh)
    if slots % shards:
      raise ValueError(f"config.sampling.slots={slots} is not a multiple of the {shards} "
                       "data-parallel shards")
    self.graphdef, self.cfg = graphdef, cfg
    self.slots, self.shards = slots, shards
    # Prompts one prefill call takes at most (0: as many as the free slots need): it bounds the
    # prefill's memory (docs/MEMORY.md). The block is split over the data axes like the slots.
    self.prefill_prompts = int(prefill_prompts)
    self.max_prompt_len, self.max_new_tokens = max_prompt_len, max_new_tokens
    self.eos_ids = tuple(int(e) for e in eos_ids)
    self.pad_id = int(pad_id)
    self.steps = steps_per_call
    total = max_prompt_len + max_new_tokens
    self.windows = tuple(sorted({min(total, max_prompt_len + -(-max_new_tokens * (i + 1) // windows))
                                 for i in range(windows)}))
    self.trace_count = 0
    self.last_stats: EngineStats | None = None
    self.mesh = mesh
    self._state_sh = self._state_shardings()
    self._forward_sh = (None if mesh is None else
                        forward_shardings(param_shardings(abstract_model(cfg)[1], mesh), mesh))
    jit = lambda f, **kw: jax.jit(f, donate_argnums=(1,), out_shardings=self._state_sh, **kw)
    self._insert = jit(self._insert_device)
    self._decode = jit(self._decode_device, static_argnames=("window",))

  # ---------------------------------------------------------------------------------------------
  # Device programs.

  def _state_shardings(self) -> dict | None:
    """Every state array's slot axis over the data axes; caches in the policy's KV layout."""
    if self.mesh is None:
      return None
    shapes = jax.eval_shape(self._empty_arrays)
    row = lambda a: NamedSharding(self.mesh, PartitionSpec(BATCH_AXES, *([None] * (a.ndim - 1))))
    out = {k: row(v) for k, v in shapes.items() if k not in ("k", "v")}
    for k in ("k", "v"):
      full = cache_sharding(self.mesh, (self.cfg.num_hidden_layers,) + shapes[k][0].shape)
      layer = NamedSharding(self.mesh, PartitionSpec(*full.spec[1:]))
      out[k] = tuple(layer for _ in shapes[k])
    return out

  def _empty_state(self) -> dict:
    if self._state_sh is None:
      return self._empty_arrays()
    return jax.jit(self._empty_arrays, out_shardings=self._state_sh)()

  def _empty_arrays(self) -> dict:
    s, total = self.slots, self.max_prompt_len + self.max_new_tokens
    cache = init_cache(self.cfg, s, total)
    return {"k": cache.ks, "v": cache.vs,
            "kv_mask": jnp.zeros((s, total), jnp.int32),
            "logits": jnp.zeros((s, self.cfg.vocab_size), jnp.float32),
            "plen": jnp.zeros((s,), jnp.int32), "t": jnp.zeros((s,), jnp.int32),
            "alive": jnp.zeros((s,), bool), "req": jnp.zeros((s,), jnp.int32),
            "limit": jnp.zeros((s,), jnp.int32),
            "tokens": jnp.full((s, self.max_new_tokens), self.pad_id, jnp.int32),
            "logp": jnp.zeros((s, self.max_new_tokens), jnp.float32)}

  def _insert_device(self, params, state, prompt_UxP, pmask_UxP, slot_M, src_M, req_M, limit_M):
    """Prefills the U prompts once and writes prompt src_M[m] into slot slot_M[m] (slot == slots:
    an unused entry, dropped) as completion req_M[m] with token limit limit_M[m]."""
    self.trace_count += 1
    model = nnx.merge(self.graphdef, params)
    u, p = prompt_UxP.shape
    off = self.max_prompt_len - p
    cache = init_cache(self.cfg, u, p)
    if self.mesh is not None:  # each device prefills its share of the block's prompts
      rows = NamedSharding(self.mesh, PartitionSpec(BATCH_AXES, None))
      prompt_UxP = jax.lax.with_sharding_constraint(prompt_UxP, rows)
      pmask_UxP = jax.lax.with_sharding_constraint(pmask_UxP, rows)
      layer = self._state_sh["k"][0]
      pin = lambda kv: tuple(jax.lax.with_sharding_constraint(c, layer) for c in kv)
      cache = KVCache(pin(cache.ks), pin(cache.vs))
    h_UxPxD, cache = model.hidden(prompt_UxP, positions_from_mask(pmask_UxP), pmask_UxP, cache, 0,
                                  shardings=self._forward_sh)
    logits_UxV = model.logits_from_hidden(h_UxPxD[:, -1:])[:, 0]
    cols = off + jnp.arange(p)
    put = lambda buf, rows: buf.at[slot_M[:, None], cols[None, :]].set(rows, mode="drop")
    state = dict(state)
    state["k"] = tuple(put(kc, kn[src_M].astype(kc.dtype)) for kc, kn in zip(state["k"], cache.ks))
    state["v"] = tuple(put(vc, vn[src_M].astype(vc.dtype)) for vc, vn in zip(state["v"], cache.vs))
    row_mask = jnp.concatenate([jnp.zeros((u, off), jnp.int32), pmask_UxP.astype(jnp.int32),
                                jnp.ones((u, self.max_new_tokens), jnp.int32)], axis=1)
    set_rows = lambda buf, rows: buf.at[slot_M].set(rows, mode="drop")
    state["kv_mask"] = set_rows(state["kv_mask"], row_mask[src_M])
    state["logits"] = set_rows(state["logits"], logits_UxV[src_M])
    state["plen"] = set_rows(state["plen"], jnp.sum(pmask_UxP, axis=1, dtype=jnp.int32)[src_M])
    m = slot_M.shape[0]
    state["t"] = set_rows(state["t"], jnp.zeros((m,), jnp.int32))
    state["alive"] = set_rows(state["alive"], jnp.ones((m,), bool))
    state["req"] = set_rows(state["req"], req_M)
    state["limit"] = set_rows(state["limit"], limit_M)
    state["tokens"] = set_rows(state["tokens"],
                               jnp.full((m, self.max_new_tokens), self.pad_id, jnp.int32))
    state["logp"] = set_rows(state["logp"], jnp.zeros((m, self.max_new_tokens), jnp.float32))
    return state

  def _decode_device(self, params, state, key, temperature, top_p, top_k, greedy, *, window):
    """`self.steps` decode steps of every slot over the first `window` cache slots."""
    self.trace_count += 1
    model = nnx.merge(self.graphdef, params)
    greedy = greedy | (temperature <= 0)
    eos_E = jnp.asarray(self.eos_ids, jnp.int32)
    s = self.slots
    rows = jnp.arange(s)
    kv_mask_SxW = state["kv_mask"][:, :window]
    plen, req, limit = state["plen"], state["req"], state["limit"]

    def step(_, carry):
      ks, vs, logits_SxV, t_S, alive_S, tokens_SxR, logp_SxR = carry
      keys_S = jax.vmap(lambda r, tt: jax.random.fold_in(jax.random.fold_in(key, r), tt))(req, t_S)
      tok_S, lp_S = choose_tokens(logits_SxV, keys_S, temperature=temperature, top_p=top_p,
                                  top_k=top_k, greedy=greedy)
      col_S = jnp.where(alive_S, t_S, self.max_new_tokens)  # finished rows write nothing
      tokens_SxR = tokens_SxR.at[rows, col_S].set(tok_S, mode="drop")
      logp_SxR = logp_SxR.at[rows, col_S].set(lp_S, mode="drop")
      stopped_S = jnp.any(tok_S[:, None] == eos_E[None, :], axis=-1)
      t_next = t_S + alive_S.astype(jnp.int32)
      alive_next = alive_S & ~stopped_S & (t_next < limit)
      write_S = jnp.where(alive_S, self.max_prompt_len + t_S, window)  # window: dropped
      h_Sx1xD, cache = model.hidden(tok_S[:, None], (plen + t_S)[:, None], kv_mask_SxW,
                                    KVCache(ks, vs), write_S)
      logits_SxV = model.logits_from_hidden(h_Sx1xD)[:, 0]
      return cache.ks, cache.vs, logits_SxV, t_next, alive_next, tokens_SxR, logp_SxR

    # The whole cache is carried (updated in place); attention reads its first `window` slots,
    # the length of the mask.
    carry = (state["k"], state["v"], state["logits"], state["t"], state["alive"], state["tokens"],
             state["logp"])
    ks, vs, logits, t, alive, tokens, logp = jax.lax.fori_loop(0, self.steps, step, carry)
    state = dict(state)
    state["k"], state["v"] = ks, vs
    state.update(logits=logits, t=t, alive=alive, tokens=tokens, logp=logp)
    return state

  def prefill_sizes(self, num_samples: int) -> tuple[int, ...]:
    """Prompt-block sizes of the insert program: powers of two up to what the slots can take
    (a block of consecutive completions spans at most slots / G + 1 prompts), each rounded up to
    a multiple of the data-parallel shards (every device prefills as many prompts)."""
    most = -(-self.slots // num_samples) + 1
    if self.prefill_prompts:
      most = min(most, self.prefill_prompts)
    sizes = {-(-min(2 ** i, most) // self.shards) * self.shards
             for i in range(most.bit_length() + 1)}
    return tuple(sorted(sizes))

  def warmup(self, params: nnx.State, prompt_len: int, num_samples: int) -> None:
    """Compiles the insert programs for prompts of `prompt_len` (G = `num_samples`) and every
    decode window now (a run's first rollouts then time generation, not compilation)."""
    state = self._empty_state()
    zeros = np.zeros((self.slots,), np.int32)
    for u in self.prefill_sizes(num_samples):
      state = self._insert(params, state, np.ones((u, prompt_len), np.int32),
                           np.ones((u, prompt_len), np.int32), np.full_like(zeros, self.slots),
                           zeros, zeros, zeros + 1)
    for window in self.windows:
      state = self._decode(params, state, jax.random.key(0), np.float32(1.0), np.float32(1.0),
                           np.int32(0), np.bool_(False), window=window)
    jax.block_until_ready(state)

  # ---------------------------------------------------------------------------------------------
  # Host loop.

  def _window_for(self, longest: int) -> int:
    need = self.max_prompt_len + longest
    return next((w for w in self.windows if w >= need), self.windows[-1])

  def generate(self, params: nnx.State, prompt_tokens_BxP: np.ndarray, prompt_mask_BxP: np.ndarray,
               rng: jax.Array | None, *, num_samples: int, temperature: float, top_p: float = 1.0,
               top_k: int = 0, greedy: bool = False, max_new_tokens: int | None = None,
               limits_N: np.ndarray | None = None) -> SampleOutput:
    """`num_samples` completions per prompt, streamed through the slots (see `Sampler.generate`).
    `limits_N` optionally caps each completion's length (<= max_new_tokens)."""
    prompt_BxP = np.asarray(prompt_tokens_BxP, np.int32)
    pmask_BxP = np.asarray(prompt_mask_BxP, np.int32)
    b, p = prompt_BxP.shape
    if p > self.max_prompt_len:
      raise ValueError(f"prompt length {p} exceeds max_prompt_len={self.max_prompt_len}")
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if rng is None:
      if not (greedy or temperature <= 0):
        raise ValueError("rng is required unless decoding greedily (greedy=True or temperature <= 0)")
      rng = jax.random.key(0)
    limit = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    if not 1 <= limit <= self.max_new_tokens:
      raise ValueError(f"max_new_tokens={limit} must be in [1, {self.max_new_tokens}]")
    g = num_samples
    n = b * g
    limits = np.full((n,), limit, np.int32) if limits_N is None else np.minimum(
        np.asarray(limits_N, np.int32), limit)
    if np.any(limits < 1):
      raise ValueError("every per-completion limit must be >= 1")
    sampling = (np.float32(temperature), np.float32(top_p), np.int32(top_k), np.bool_(greedy))

    out_tokens = np.full((n, self.max_new_tokens), self.pad_id, np.int32)
    out_logp = np.zeros((n, self.max_new_tokens), np.float32)
    out_len = np.zeros((n,), np.int32)
    out_finish = np.zeros((n,), np.int32)
    waiting = collections.deque(range(n))
    free = list(range(self.slots))
    occupant = np.full((self.slots,), -1, np.int64)  # completion in each slot (-1 free)
    bound = np.zeros((self.slots,), np.int64)  # host upper bound of each slot's length
    state = self._empty_state()
    decode_calls = insert_calls = slot_steps = 0
    windows = []
    m_block = self.slots
    sizes = self.prefill_sizes(g)
    while waiting or (occupant >= 0).any():
      while waiting and free:
        # Every free slot takes the next waiting completion; their prompts are prefilled once,
        # in a block of the smallest size that holds them (padding rows are prefilled too), at
        # most sizes[-1] prompts a call: more calls before the next decode when the slots
        # need more.
        take, prompts = [], []
        while waiting and len(take) < len(free):
          q = waiting[0] // g
          if not prompts or q != prompts[-1]:  # a prompt's completions wait side by side
            if len(prompts) == sizes[-1]:
              break
            prompts.append(q)
          take.append(waiting.popleft())
        u_block = next(u for u in sizes if u >= len(prompts))
        uniq = {q: i for i, q in enumerate(prompts)}
        slot_M = np.full((m_block,), self.slots, np.int32)
        src_M = np.zeros((m_block,), np.int32)
        req_M = np.zeros((m_block,), np.int32)
        lim_M = np.ones((m_block,), np.int32)
        for j, r in enumerate(take):
          s = free.pop(0)
          slot_M[j], src_M[j], req_M[j], lim_M[j] = s, uniq[r // g], r, limits[r]
          occupant[s], bound[s] = r, 0
        rows = np.zeros((u_block,), np.int64)
        rows[:len(prompts)] = prompts
        state = self._insert(params, state, prompt_BxP[rows], pmask_BxP[rows], slot_M, src_M,
                             req_M, lim_M)
        insert_calls += 1
      live = occupant >= 0
      window = self._window_for(int(min(bound[live].max() + self.steps, self.max_new_tokens)))
      state = self._decode(params, state, rng, *sampling, window=window)
      decode_calls += 1
      slot_steps += self.slots * self.steps
      windows.append(window)
      bound[live] += self.steps
      alive, t = to_host(state["alive"]), to_host(state["t"])
      done = np.flatnonzero(live & ~alive)
      if done.size:
        tokens, logp = to_host(state["tokens"]), to_host(state["logp"])
        for s in done:
          r = occupant[s]
          out_tokens[r], out_logp[r], out_len[r] = tokens[s], logp[s], t[s]
          last = tokens[s, t[s] - 1] if t[s] > 0 else self.pad_id
          out_finish[r] = FINISH_STOP if last in self.eos_ids else FINISH_LENGTH
          occupant[s] = -1
          free.append(int(s))
        free.sort()
    mask = (np.arange(self.max_new_tokens)[None, :] < out_len[:, None]).astype(np.int32)
    self.last_stats = EngineStats(decode_calls, insert_calls, slot_steps, tuple(windows))
    return SampleOutput(
        prompt_tokens_NxP=np.repeat(prompt_BxP, g, axis=0),
        prompt_mask_NxP=np.repeat(pmask_BxP, g, axis=0),
        tokens_NxR=out_tokens, mask_NxR=mask, logp_NxR=out_logp, lengths_N=out_len,
        finish_reason_N=out_finish, num_decode_steps=int(out_len.max(initial=0)))
