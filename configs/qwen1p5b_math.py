"""The DOTS reference script: Qwen2.5-Math-1.5B on the 10,240-question DeepScaleR subset, DOTS + RR.

  python -m dots_jax.main --config=configs/qwen1p5b_math.py:method=dots_rr \
      --config.model.path=/models/Qwen2.5-Math-1.5B \
      --config.selection.dots.backbone=/models/Qwen2.5-Math-1.5B-Instruct \
      --workdir=/mnt/bucket/runs/q1p5b_dots_rr
  python -m dots_jax.tools.plan --config=configs/qwen1p5b_math.py:v6e_8 --topology=v6e-8   # from a CPU

Settings (`dots_jax.config_common.dots_reference`, each with its source line in docs/REPRODUCTION.md):
60 steps (30 epochs x mu = 2) of 512 questions x G=8 in 8 mini-batches of 64 questions, lr 1e-6
constant, AdamW weight decay 0.01, gradient clip 1.0, temperature 0.6, responses up to 3072 tokens,
system message "dots"; DOTS with K=256 references every mu=2 steps, alpha=0.5, tau=1e-3, estimator
width 896 fitted with K=256, batch 256, 20 epochs; replay buffer 512 groups, sigma=0.5, the first mu
steps fresh only. Where we differ from the script (and why) is in the same document.
"""

from dots_jax.config_common import apply_config_arg, dots_reference, slice_preset

# Rented TPU slices, parameters and AdamW sharded over the 8 chips (on v5e-8 also over a tensor
# axis: on fsdp 8 alone the TPU compiler refuses the prefill, docs/MEMORY.md); each checked by
#   python -m dots_jax.tools.plan --config=configs/qwen1p5b_math.py:<preset> --topology=<slice>
# (v6e_8 on v6e-8, v5e_8 on v5e-8; figures in docs/MEMORY.md).
PRESETS = {
    "v6e_8": slice_preset(mesh=dict(data=1, fsdp=8, tensor=1), micro_batch=64,
                          kv_budget_gib=12.0),
    "v5e_8": slice_preset(mesh=dict(data=1, fsdp=4, tensor=2), micro_batch=16, kv_budget_gib=3.0),
}


def get_config(arg: str = ""):
  c = dots_reference("Math-1.5B")
  c.method = "dots_rr"
  c.mesh.update(data=-1, fsdp=1, tensor=1)  # 1.5B + AdamW fits one 80 GB accelerator
  c.rl.micro_batch = 64
  # Rollouts stream through as many KV-cache slots as 24 GiB per device hold (the slot
  # engine), so the rollout phase fits 80 GB devices beside params and AdamW (dry run).
  c.sampling.kv_budget_gib = 24.0
  return apply_config_arg(c, arg, PRESETS)
