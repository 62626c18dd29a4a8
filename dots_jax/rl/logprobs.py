"""Trainer-side per-token log-probs (and entropies) of a left-padded prompt+completion batch.

Uses the model's shared definitions (`positions_from_mask`, `token_logprobs`) so the values agree with
`qwen2.sequence_logprobs` and with the sampler's behaviour log-probs. The entropy is computed from the
same logits in the same forward pass (it is needed for the metric and the optional bonus).
"""

from __future__ import annotations

import jax

from dots_jax.model.qwen2 import (Qwen2ForCausalLM, align_to_tokens, positions_from_mask,
                                  token_logprobs)
from dots_jax.rl.losses import token_entropy


def logprobs_and_entropy(model: Qwen2ForCausalLM, tokens_NxT: jax.Array, mask_NxT: jax.Array,
                         temperature: float | jax.Array = 1.0) -> tuple[jax.Array, jax.Array]:
  """(logp_NxT, entropy_NxT): out[:, t] scores token t given tokens[:, :t]; 0 at t=0 and at pads."""
  logits, _ = model(tokens_NxT, positions_from_mask(mask_NxT), mask_NxT)
  lp = token_logprobs(logits[:, :-1], tokens_NxT[:, 1:], temperature)
  ent = token_entropy(logits[:, :-1], temperature)
  return align_to_tokens(lp, mask_NxT), align_to_tokens(ent, mask_NxT)
