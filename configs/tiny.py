"""The embedded default: RL on synthetic arithmetic with a tiny Qwen2 made on first use (CPU, minutes).

  python -m dots_jax.main --config=configs/tiny.py --workdir=/tmp/tiny
  python -m dots_jax.main --config=configs/tiny.py:method=dots_rr --workdir=/tmp/tiny_dots_rr
  python -m dots_jax.main --config=configs/tiny.py:micro --workdir=/tmp/micro   # CI smoke size

Nothing is downloaded: with `model.path` empty the job builds (once, then cached; ~6 min on 2 cores) a
character tokenizer with Qwen chat tokens and a 3-layer Qwen2 fine-tuned on a synthetic SFT stream
disjoint from the RL pool (`dots_jax.tiny.ensure_tiny_base`), and loads it like any Qwen2.5 checkpoint.
That base solves 2-digit add/subtract almost always and 4-digit/three-term adds and products almost
never: 74% of its G=8 groups have zero reward variance (25% all-correct, 49% all-wrong), measured with
`python -m dots_jax.tiny.spread --config=configs/tiny.py --samples`.
"""

from dots_jax.config_base import base_config
from dots_jax.train import apply_config_arg


def get_config(arg: str = ""):
  c = base_config()
  c.total_steps = 300
  c.mesh.data = -1

  c.model.path = ""  # empty: the cached tiny base policy (dots_jax.tiny)

  c.data.train = "synthetic"
  c.data.eval_sets = ("synthetic_heldout",)
  c.data.system_prompt = "none"
  c.data.chat_template = False  # short prompts ("123+456="): the tiny model's compute is per token
  c.data.max_prompt_tokens = 16
  c.data.prompt_buckets = (16,)
  c.data.synthetic.train_size = 4000
  c.data.synthetic.heldout_size = 4000  # greedy accuracy s.e. <= 0.008

  c.sampling.group_size = 8
  c.sampling.temperature = 1.0
  c.sampling.max_new_tokens = 8  # up to 6 answer digits + EOS

  c.reward.kind = "reversed_digits"
  c.reward.workers = 0

  c.rl.batch_questions = 32
  # lr 3e-5 after 20 warmup steps (Adam's first steps are sign-like: every parameter moves by ~lr).
  # Measured with exact held-out evaluation, uniform GRPO, 100 steps: 3e-5 rises steadily
  # (0.3516 -> 0.3570, sub3 0.514 -> 0.550, no family loses). 1e-4 (with adam_eps 1e-4) swings
  # (sub3 0.41..0.53 between evaluations 10 steps apart, add2 0.969 -> 0.955) and ends flat at
  # 0.3535; kl_beta 0.1 at 1e-4 ends at 0.3503.
  c.rl.lr = 3e-5
  c.rl.warmup_steps = 20
  c.rl.grad_clip = 1.0

  c.replay.capacity = 128
  c.replay.fresh_fraction = 0.5

  # Reference rollouts cost ref_size / (round_steps * batch_questions) = 25% extra, the ratio of the
  # DOTS reference script (K = 256 per 2 x 512 questions); 32 references cover all 8 families.
  c.selection.dots.ref_size = 32
  c.selection.dots.round_steps = 4
  c.selection.dots.estimator_path = "auto"  # offline stage on first use (~1 min here), then cached
  c.selection.dots.alpha = 0.5
  c.selection.dots.tau = 1e-3

  # Held-out accuracy of temperature-1 sampling (what GRPO optimises), computed exactly from each
  # question's probability of its one correct completion: no sampling noise, so methods compared on
  # these 4000 questions differ by exactly their difference in expected accuracy (the reported
  # standard error, 0.0067, is over questions). eval.exact=False samples k answers instead.
  c.eval.every = 10  # exact evaluation costs ~2 s: a fine curve for time-to-target
  c.eval.exact = True
  c.eval.k = 2
  c.eval.temperature = 1.0
  c.eval.max_new_tokens = 8
  c.eval.batch = 1000
  c.eval.group_by = "family"

  c.ckpt.every = 50
  c.log.every = 5
  return apply_config_arg(c, arg, presets={"micro": _micro})


def _micro(c):
  """A few-second smoke test: 1-layer width-32 model, 20 SFT steps, tiny splits."""
  c.total_steps = 4
  c.tiny.update(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_ratio=2,
                sft_steps=20, sft_schedule_steps=20, sft_batch=32, sft_warmup=2)
  c.data.synthetic.train_size = 200
  c.data.synthetic.heldout_size = 64
  c.sampling.group_size = 4
  c.rl.batch_questions = 8
  c.replay.capacity = 16
  c.selection.dots.ref_size = 8
  c.selection.dots.estimator_path = ""  # untrained adapters: the smoke test skips the offline stage
  c.selection.ds.max_rounds = 2
  c.eval.every = 2
  c.eval.batch = 64
  c.ckpt.every = 2
  c.log.every = 1
  c.log.tensorboard = False
