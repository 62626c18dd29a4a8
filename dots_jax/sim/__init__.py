"""The selection simulator: the config's real selection strategies and replay buffer driven by a
calibrated model of per-question pass rates instead of a policy (`python -m dots_jax.sim`)."""
