"""The tiny testbed's analysis tools: the base's bars (`spread`, `bars`) and what a run's pass rates
do over training (`tracking`). The tiny base policy itself is built by `dots_jax.policy.tiny_base`."""
