"""Rollouts: the policy's completions of training, evaluation and label prompts.

  generator.py  `Generator` (prompts -> completions), `Decoding`, `EngineSettings`
  roller.py     `Roller` (question indices -> scored groups, `Rollouts`)
  engine.py     the slot engine: completions stream through a fixed number of KV-cache slots
  sampler.py    the static batch: one jit, prefill once per prompt, while_loop decode
  filtering.py  exact top-k / top-p, inverse-CDF draws
"""
