"""The DOTS reference script: Qwen2.5-Math-1.5B on DeepScaleR (GRPO + DOTS + rollout replay settings).

  python -m dots_jax.main --config=configs/qwen1p5b_math.py:method=dots_rr \
      --config.model.path=/models/Qwen2.5-Math-1.5B --workdir=gs://bucket/runs/q1p5b_dots_rr
  python -m dots_jax.main --config=configs/qwen1p5b_math.py --config.dry_run=True  # plan on a CPU

Settings (`dots_jax.config_common.dots_reference`): 512 questions x G=8 per step, lr 1e-6 constant, AdamW
weight decay 0.01, gradient clip 1.0, sampling temperature 0.6, responses up to 3072 tokens; DOTS with
K=256 reference questions, difficulty re-predicted every mu=2 steps, alpha=0.5, tau=1e-3; rollout
replay buffer of 512 groups with sigma=0.5 of each batch fresh.
"""

from dots_jax.config_common import apply_config_arg, dots_reference


def get_config(arg: str = ""):
  c = dots_reference("Math-1.5B")
  c.mesh.update(data=-1, fsdp=1, tensor=1)  # 1.5B + AdamW fits one 80 GB accelerator
  c.rl.micro_batch = 64
  return apply_config_arg(c, arg)
