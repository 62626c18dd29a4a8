"""Trainer-side per-token log-probs (and entropies) of a left-padded prompt+completion batch.

Uses the model's shared definitions (`positions_from_mask`, `token_logprobs`) so the values agree with
`qwen2.sequence_logprobs` and with the sampler's behaviour log-probs. The entropy is computed from the
same logits in the same forward pass (it is needed for the metric and the optional bonus).

With `chunk > 0` the vocabulary projection runs `chunk` positions at a time under `jax.checkpoint`, so
neither the forward nor the backward pass holds the [N, T, V] float32 logits (for Qwen2.5's 151,936
tokens they dwarf every other activation): each chunk's logits are made, reduced to (log-prob,
entropy) and dropped, and remade in the backward pass. The values are the same computation per
position, so they match the unchunked path to float rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dots_jax.model.qwen2 import (ForwardShardings, Qwen2ForCausalLM, align_to_tokens,
                                  positions_from_mask, token_logprobs)
from dots_jax.rl.losses import token_entropy


def logprobs_and_entropy(model: Qwen2ForCausalLM, tokens_NxT: jax.Array, mask_NxT: jax.Array,
                         temperature: float | jax.Array = 1.0, chunk: int = 0,
                         shardings: ForwardShardings | None = None
                         ) -> tuple[jax.Array, jax.Array]:
  """(logp_NxT, entropy_NxT): out[:, t] scores token t given tokens[:, :t]; 0 at t=0 and at pads.
  `chunk`: positions per vocabulary-projection chunk (0 = all at once); `shardings`: see
  `Qwen2ForCausalLM.hidden`."""
  h_NxTxD, _ = model.hidden(tokens_NxT, positions_from_mask(mask_NxT), mask_NxT,
                            shardings=shardings)
  h, targets = h_NxTxD[:, :-1], tokens_NxT[:, 1:]

  def stats(h_part, t_part):
    logits = model.logits_from_hidden(h_part)
    return token_logprobs(logits, t_part, temperature), token_entropy(logits, temperature)

  steps = h.shape[1]
  if chunk <= 0 or chunk >= steps:
    lp, ent = stats(h, targets)
  else:
    n, d = h.shape[0], h.shape[2]
    k = -(-steps // chunk)
    pad = k * chunk - steps
    h_KxNxCxD = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(n, k, chunk, d).swapaxes(0, 1)
    t_KxNxC = jnp.pad(targets, ((0, 0), (0, pad))).reshape(n, k, chunk).swapaxes(0, 1)
    lp, ent = jax.lax.map(lambda xs: jax.checkpoint(stats)(*xs), (h_KxNxCxD, t_KxNxC))
    lp = lp.swapaxes(0, 1).reshape(n, k * chunk)[:, :steps]
    ent = ent.swapaxes(0, 1).reshape(n, k * chunk)[:, :steps]
  return align_to_tokens(lp, mask_NxT), align_to_tokens(ent, mask_NxT)
