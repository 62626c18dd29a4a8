"""Qwen2.5-Math-7B on DeepScaleR with the DOTS reference settings (as configs/qwen1p5b_math.py).

  python -m dots_jax.main --config=configs/qwen7b.py:method=dots_rr \
      --config.model.path=/models/Qwen2.5-Math-7B --workdir=/mnt/bucket/runs/q7b_dots_rr
  python -m dots_jax.main --config=configs/qwen7b.py --config.dry_run=True \
      --config.mesh.data=1 --config.mesh.fsdp=32   # plan for a 32-chip slice from a CPU

7B params + AdamW do not fit one accelerator: parameters, gradients and Adam moments are sharded
over `fsdp` (default: all devices), micro-batches bound the activations.
"""

from dots_jax.config_common import apply_config_arg, dots_reference


def get_config(arg: str = ""):
  c = dots_reference("Math-7B")
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.rl.micro_batch = 16
  # Rollouts stream through as many KV-cache slots as 48 GiB per device hold (the slot
  # engine), so the rollout phase fits 95 GB and 141 GB devices beside params and AdamW (dry run).
  c.sampling.kv_budget_gib = 48.0
  return apply_config_arg(c, arg)
