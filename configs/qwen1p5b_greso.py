"""The GRESO reference script: Qwen2.5-Math-1.5B on DAPO-Math-17k + MATH train, selective rollout.

  python -m dots_jax.main --config=configs/qwen1p5b_greso.py \
      --config.model.path=/models/Qwen2.5-Math-1.5B --workdir=/mnt/bucket/runs/q1p5b_greso
  python -m dots_jax.main --config=configs/qwen1p5b_greso.py:method=ds   # its dynamic-sampling baseline
  python -m dots_jax.tools.plan --config=configs/qwen1p5b_greso.py:v6e_8 --topology=v6e-8   # from a CPU

Settings (`dots_jax.config_common.greso_reference`; sources in docs/REPRODUCTION.md): 1000 steps, 256
questions trained of a first rollout round of 384 (later rounds adaptive, at least 64), 4 mini-batches
of 64 questions, G=8, temperature 1.0, prompts up to 1536 and responses up to 2560 tokens, lr 1e-6,
entropy bonus 0.001, reward 1 correct / 0.1 boxed but wrong / 0 otherwise, GRESO targets alpha=0.25
(easy 1/3, hard 2/3), p from 0.5 in steps of 0.01 within [0.05, 0.95].
"""

from dots_jax.config_common import apply_config_arg, greso_reference, slice_preset

# Rented TPU slices, parameters and AdamW sharded over the 8 chips (on v5e-8 also over a tensor
# axis: on fsdp 8 alone the TPU compiler refuses the prefill, docs/MEMORY.md); each checked by
#   python -m dots_jax.tools.plan --config=configs/qwen1p5b_greso.py:<preset> --topology=<slice>
# (v6e_8 on v6e-8, v5e_8 on v5e-8; figures in docs/MEMORY.md).
PRESETS = {
    "v6e_8": slice_preset(mesh=dict(data=1, fsdp=8, tensor=1), micro_batch=64, kv_budget_gib=6.0),
    "v5e_8": slice_preset(mesh=dict(data=1, fsdp=4, tensor=2), micro_batch=16, kv_budget_gib=3.0),
}


def get_config(arg: str = ""):
  c = greso_reference("Math-1.5B")
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  c.rl.micro_batch = 64
  # Rollouts stream through as many KV-cache slots as 24 GiB per device hold (the slot
  # engine), so the rollout phase fits 80 GB devices beside params and AdamW (dry run).
  c.sampling.kv_budget_gib = 24.0
  return apply_config_arg(c, arg, PRESETS)
