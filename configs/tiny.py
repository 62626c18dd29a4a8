"""The embedded default: RL on synthetic arithmetic with a tiny Qwen2 made on first use (CPU, minutes).

  python -m dots_jax.main --config=configs/tiny.py --workdir=/tmp/tiny
  python -m dots_jax.main --config=configs/tiny.py:method=dots_rr --workdir=/tmp/tiny_dots_rr
  python -m dots_jax.main --config=configs/tiny.py:micro --workdir=/tmp/micro   # CI smoke size
  python -m dots_jax.main --config=configs/tiny.py:carry --workdir=/tmp/carry   # the earlier base

Nothing is downloaded: with `model.path` empty the job builds (once, then cached) a character
tokenizer with Qwen chat tokens and a 3-layer Qwen2 fine-tuned on a synthetic SFT stream disjoint from
the RL pool (`dots_jax.policy.tiny_base`: shipped with the package for the default recipe below,
else built once and cached), and loads it like any Qwen2.5 checkpoint. What that base can and cannot do, and why the settings below were chosen:
docs/TESTBED.md (measured with
`python -m dots_jax.tiny.spread --config=configs/tiny.py --samples`).
"""

import ml_collections

from dots_jax.config_base import base_config
from dots_jax.config_common import apply_config_arg


def get_config(arg: str = ""):
  c = base_config()
  c.total_steps = 200
  c.mesh.data = -1

  c.model.path = ""  # empty: the cached tiny base policy (dots_jax.policy.tiny_base)

  c.data.train = "synthetic"
  # The held-out split is the headline; the pool itself is evaluated too, so a gain on held-out
  # questions can be compared with the gain on the questions trained on (generalisation, not
  # memorisation).
  c.data.eval_sets = ("synthetic_heldout", "synthetic")
  c.data.system_prompt = "none"
  c.data.chat_template = False  # short prompts ("123+456="): the tiny model's compute is per token
  c.data.max_prompt_tokens = 16
  c.data.prompt_buckets = (16,)
  c.data.synthetic.train_size = 4000
  c.data.synthetic.heldout_size = 4000  # held-out accuracy resolves differences of ~1 point
  # Issue 34's base, which passes every go/no-go probe bar (docs/TESTBED.md, base D2): additions and
  # subtractions of 2-4 digits whose carries and borrows the demonstrations drop at different rates
  # (two skills RL sharpens at different speeds, chains up to 4 long, a question's pass rate about
  # the product of its steps' reliabilities), plus a quarter of the pool pinned near 1 or 0 (2-digit
  # additions without carries; 2x2-digit products, never demonstrated) so that zero-variance
  # questions stay zero-variance as on real math pools; more SFT for the 4-digit chains, weighted to
  # them. The earlier one-skill base is the `carry` preset.
  c.data.synthetic.families = ("add2", "add3", "add4", "sub2", "sub3", "sub4_b", "add2_nc", "mul2x2")
  c.data.synthetic.pool_weights = (1.0,) * 8
  c.data.synthetic.sft_weights = (0.5, 1.0, 2.0, 0.5, 1.0, 2.0, 0.5, 0.0)
  # The base policy's recipe (dots_jax.policy.tiny_base): the default recipe's base ships with the
  # package (dots_jax/assets/tiny_base); any other recipe is built on first use and cached under
  # cache_dir (empty = $DOTS_JAX_CACHE or ~/.cache/dots_jax), keyed by a hash of this section,
  # data.synthetic and the prompt format. init_std ~ 1/sqrt(hidden_size): Qwen's 0.02 is made for
  # d >= 896 and slows SFT of a width-128 model; rope_theta 1e4 resolves positions in short
  # sequences better than Qwen's 1e6 (docs/TESTBED.md). sft_carry_drop: probability that an SFT
  # demonstration drops each carry (dots_jax.data.synthetic.noisy_result), so the base executes the
  # carry skill unreliably; sft_borrow_drop, when >= 0, sets the borrow's rate apart (subtraction a
  # second skill of its own; < 0: the carry's).
  c.tiny = ml_collections.ConfigDict(dict(
      hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, mlp_ratio=4, max_positions=256,
      rope_theta=10_000.0, init_std=0.088,
      sft_steps=3000, sft_schedule_steps=3000, sft_batch=128, sft_lr=2e-3, sft_warmup=50, seed=0,
      sft_carry_drop=0.3, sft_borrow_drop=0.6, cache_dir=""))

  c.sampling.group_size = 8
  c.sampling.temperature = 1.0
  c.sampling.max_new_tokens = 8  # up to 6 answer digits + EOS

  c.reward.kind = "reversed_digits"
  c.reward.workers = 0

  c.rl.batch_questions = 32
  # Several optimizer steps per RL step, as the reference scripts (DOTS: 8). A small per-question
  # step keeps pass rates spread and a property of the question, and the gain going to the end
  # (docs/TESTBED.md, the probes). Warmup: Adam's first steps are sign-like (every parameter moves by
  # about lr).
  c.rl.mini_batches = 4
  c.rl.lr = 2e-5
  c.rl.warmup_steps = 20
  c.rl.grad_clip = 1.0

  c.replay.capacity = 128
  c.replay.fresh_fraction = 0.5

  # Reference rollouts cost ref_size / (round_steps * batch_questions) extra, the ratio of the DOTS
  # reference script (K = 256 per 2 x 512 questions); 32 references cover every family.
  c.selection.dots.ref_size = 32
  c.selection.dots.round_steps = 4
  c.selection.dots.estimator_path = "auto"  # offline stage on first use, then cached
  c.selection.dots.alpha = 0.5
  # The paper's tau = 1e-3 draws only the questions predicted nearest alpha; this small policy then
  # forgets the nearly solved families it is no longer shown, so the draw here stays soft: tilted to
  # p = 0.5 but spread over the families (docs/TESTBED.md, the tau probes).
  c.selection.dots.tau = 0.2

  # Held-out accuracy of temperature-1 sampling (what GRPO optimises), computed exactly from each
  # question's probability of its one correct completion: no sampling noise, so methods compared on
  # the same questions differ by exactly their difference in expected accuracy (the reported standard
  # error is over questions). eval.exact=False samples k answers instead.
  c.eval.every = 10  # exact evaluation is one forward pass: a fine curve for time-to-target
  c.eval.exact = True
  c.eval.k = 2
  c.eval.temperature = 1.0
  c.eval.max_new_tokens = 8
  c.eval.batch = 1000
  c.eval.max_questions = 2000  # of each set: held-out standard error ~0.01, half the evaluation time
  c.eval.group_by = "family"

  c.ckpt.every = 50
  c.log.every = 5
  return apply_config_arg(c, arg, presets={"micro": _micro, "carry": _carry})


def _carry(c):
  """The earlier one-skill base (docs/TESTBED.md up to issue 34, the stop-21 comparison): families
  that share the carry/borrow, 0..3 carries per question, each carry dropped by the demonstrations
  with probability 0.6, so a question's pass rate is graded by its carry count; lr 1e-4 and the
  paper's tau. Difficulty there stops being a property of the question early in the run."""
  c.data.synthetic.families = ("add2", "add3", "sub2", "sub3", "add3_c2")
  c.data.synthetic.pool_weights = (1.0,) * 5
  c.data.synthetic.sft_weights = (1.0,) * 5
  c.tiny.update(sft_steps=1200, sft_schedule_steps=1200, sft_carry_drop=0.6, sft_borrow_drop=-1.0)
  c.rl.lr = 1e-4
  c.selection.dots.tau = 1e-3


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
  c.selection.rounds.max_rounds = 2
  c.eval.every = 2
  c.eval.batch = 64
  c.ckpt.every = 2
  c.log.every = 1
  c.log.tensorboard = False
