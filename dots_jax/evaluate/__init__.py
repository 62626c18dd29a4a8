"""Evaluation, by job.

  scores.py      avg@k, pass@k, standard errors, per-group accuracy, the DOTS average
  benchmarks.py  `Evaluator`: a policy on the benchmark sets (sampled, or exact on synthetic sets)
  held_out.py    `PolicyEval`: held-out evaluation inside training
  pool_rates.py  `PoolPassRates`: exact pass rates of pool questions (diagnostics, the oracle)
  __main__.py    `python -m dots_jax.evaluate` (a config's policy, or a run's checkpoint)
"""
