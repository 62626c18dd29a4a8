"""Qwen2.5-Math-7B on DeepScaleR with the DOTS reference settings (as configs/qwen1p5b_math.py).

  python -m dots_jax.main --config=configs/qwen7b.py:method=dots_rr \
      --config.model.path=/models/Qwen2.5-Math-7B --workdir=/mnt/bucket/runs/q7b_dots_rr
  python -m dots_jax.main --config=configs/qwen7b.py:v6e_8,method=dots_rr ...   # on a v6e-8 slice
  python -m dots_jax.tools.plan --config=configs/qwen7b.py:v6e_8,method=dots_rr --topology=v6e-8
      # every program compiled by the TPU's own compiler, from a CPU (docs/MEMORY.md)

7B params + AdamW do not fit one accelerator: parameters, gradients and Adam moments are sharded
over `fsdp` (default: all devices), micro-batches bound the activations. The presets fit the TPU
slices people rent (each checked by the command above, figures in docs/MEMORY.md):

  v6e_8   8 x v6e (31.25 GiB): fsdp 2 x tensor 4, one row per data shard a micro-batch, bfloat16
          activations and AdamW first moment, 12 GiB of KV cache a chip
  v5e_16  16 x v5e (15.75 GiB): fsdp 4 x tensor 4, otherwise as v6e_8 with 4 GiB of KV cache
"""

from dots_jax.config_common import apply_config_arg, dots_reference, slice_preset

PRESETS = {
    "v6e_8": slice_preset(mesh=dict(data=1, fsdp=2, tensor=4), micro_batch=2, kv_budget_gib=12.0,
                          bfloat16_activations=True, bfloat16_mu=True),
    "v5e_16": slice_preset(mesh=dict(data=1, fsdp=4, tensor=4), micro_batch=4, kv_budget_gib=4.0,
                           bfloat16_activations=True, bfloat16_mu=True),
}


def get_config(arg: str = ""):
  c = dots_reference("Math-7B")
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.rl.micro_batch = 16
  # Rollouts stream through as many KV-cache slots as 48 GiB per device hold (the slot
  # engine), so the rollout phase fits 95 GB and 141 GB devices beside params and AdamW (dry run).
  c.sampling.kv_budget_gib = 48.0
  return apply_config_arg(c, arg, PRESETS)
