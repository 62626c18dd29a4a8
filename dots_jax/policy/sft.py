"""Supervised warm-up of the tiny policy on the synthetic SFT stream (optax, one jitted step).

The loss is the mean negative log-likelihood of the completion tokens (reversed answer + EOS) under
`sequence_logprobs`, the same per-token function the sampler and the RL trainer use, so the SFT'd
policy is exactly the distribution RL later samples from. Examples are packed as the exact
evaluation packs them (`dots_jax.exact`).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dots_jax.exact import pack_completions, target_tokens
from dots_jax.model.qwen2 import Qwen2ForCausalLM, sequence_logprobs


def encode_examples(rows: list[tuple[str, str, str]], prompt_fn: Callable[[str], list[int]],
                    encode: Callable[[str], list[int]], eos_id: int, length: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Left-padded (prompt + reversed answer + EOS) tokens, token mask and completion (loss) mask."""
  return pack_completions(
      [list(prompt_fn(problem)) for problem, _, _ in rows],
      [target_tokens(answer, encode, eos_id) for _, answer, _ in rows], length,
      name=lambda i: f"SFT example {rows[i][0]!r}",
      hint="raise config.data.max_prompt_tokens or config.sampling.max_new_tokens")


def make_optimizer(tiny: Any) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, tiny.sft_lr, tiny.sft_warmup, max(tiny.sft_schedule_steps, tiny.sft_warmup + 1),
      end_value=tiny.sft_lr * 0.01)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def run_sft(model: Qwen2ForCausalLM, stream: Iterator[tuple[str, str, str]], tiny: Any,
            prompt_fn: Callable[[str], list[int]], encode: Callable[[str], list[int]],
            eos_id: int, length: int, log: Callable[[str], None] = print) -> dict[str, float]:
  """Trains `model` in place for `tiny.sft_steps` steps; returns timing and the last loss."""
  graphdef, params = nnx.split(model)
  opt = make_optimizer(tiny)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, tokens, mask, loss_mask):
    def loss_fn(p):
      m = nnx.merge(graphdef, p)
      logp_BxT = sequence_logprobs(m, tokens, mask)
      return -jnp.sum(logp_BxT * loss_mask) / jnp.maximum(jnp.sum(loss_mask), 1.0)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.perf_counter()
  loss = float("nan")
  for i in range(tiny.sft_steps):
    rows = list(itertools.islice(stream, tiny.sft_batch))
    batch = encode_examples(rows, prompt_fn, encode, eos_id, length)
    params, opt_state, loss_arr = step(params, opt_state, *batch)
    if (i + 1) % max(tiny.sft_steps // 10, 1) == 0 or i + 1 == tiny.sft_steps:
      loss = float(loss_arr)
      log(f"  sft step {i + 1}/{tiny.sft_steps}  loss {loss:.4f}  "
          f"{time.perf_counter() - start:.1f}s")
  nnx.update(model, params)
  return {"sft_seconds": time.perf_counter() - start, "sft_final_loss": loss}
