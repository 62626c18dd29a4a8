"""Qwen2.5-3B on DeepScaleR with the DOTS reference settings (as configs/qwen1p5b_math.py).

  python -m dots_jax.main --config=configs/qwen3b.py:method=dots_rr \
      --config.model.path=/models/Qwen2.5-3B --workdir=/mnt/bucket/runs/q3b_dots_rr

There is no Qwen2.5-Math-3B; the DOTS paper's 3B runs use the base Qwen2.5-3B, and its script gives
non-Math models responses of up to 4096 tokens.
"""

from dots_jax.config_common import apply_config_arg, dots_reference


def get_config(arg: str = ""):
  c = dots_reference("3B")
  c.mesh.update(data=-1, fsdp=4, tensor=1)  # params + AdamW over 4 devices, data parallel beyond
  c.rl.micro_batch = 32
  # Rollouts stream through as many KV-cache slots as 32 GiB per device hold (the slot
  # engine), so the rollout phase fits 80 GB devices beside params and AdamW (dry run).
  c.sampling.kv_budget_gib = 32.0
  c.sampling.max_new_tokens = c.eval.max_new_tokens = 4096
  return apply_config_arg(c, arg)
