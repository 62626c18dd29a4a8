"""The one place every default lives. `configs/*.py` start from `base_config()` and override.

Each section is owned by one package (named in its comment); code reads `config.section.key` and never
supplies its own fallback default.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = "grpo"  # grpo | dots | dots_rr | greso | ds | mopps | dots_rr_greso (dots_jax.selection)
  c.total_steps = 100
  c.dry_run = False  # build with shapes only and print the plan

  # Device mesh (dots_jax.model.sharding). -1 = all remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # Policy (dots_jax.model).
  c.model = ml_collections.ConfigDict()
  c.model.path = ""  # Hugging Face directory (config.json, *.safetensors, tokenizer files)
  c.model.variant = ""  # shape-only variant name from dots_jax.model.variants (dry runs, planning)
  c.model.dtype = "float32"  # compute dtype
  c.model.param_dtype = "float32"
  c.model.remat = False

  # Data and prompts (dots_jax.data).
  c.data = ml_collections.ConfigDict()
  c.data.train = "synthetic"  # synthetic | math_train | deepscaler | orz57k | deepmath103k
  c.data.manual_dir = ""  # where user-provided training files live
  c.data.shared_dir = ""  # benchmark files; empty = $DOTS_JAX_DATA or ../shared/data
  c.data.eval_sets = ("synthetic_heldout",)
  c.data.system_prompt = "none"  # none | qwen_math | dots
  c.data.chat_template = True
  c.data.max_prompt_tokens = 64
  c.data.prompt_buckets = (64,)
  c.data.skip_bad_rows = False
  c.data.synthetic = ml_collections.ConfigDict(dict(seed=1234, train_size=4000, heldout_size=2000))

  # Rollouts (dots_jax.sampling).
  c.sampling = ml_collections.ConfigDict()
  c.sampling.group_size = 8  # G completions per question
  c.sampling.temperature = 1.0
  c.sampling.top_p = 1.0
  c.sampling.top_k = 0  # 0 = off
  c.sampling.max_new_tokens = 16

  # Rewards (dots_jax.rewards).
  c.reward = ml_collections.ConfigDict(dict(kind="math", timeout_s=5.0, workers=2))

  # RL update (dots_jax.rl).
  c.rl = ml_collections.ConfigDict()
  c.rl.batch_questions = 32  # questions per training batch
  c.rl.lr = 1e-4
  c.rl.schedule = "constant"  # constant | cosine (both after linear warmup)
  c.rl.warmup_steps = 0
  c.rl.weight_decay = 0.0
  c.rl.b1 = 0.9
  c.rl.b2 = 0.999
  c.rl.grad_clip = 1.0
  c.rl.clip_eps_low = 0.2
  c.rl.clip_eps_high = 0.2
  c.rl.adv_norm = "grpo"  # grpo (mean/std) | drgrpo (mean only)
  c.rl.loss_agg = "token_mean"  # token_mean | seq_mean_token_mean
  c.rl.kl_beta = 0.0
  c.rl.entropy_coef = 0.0
  c.rl.micro_batch = 0  # sequences per gradient micro-batch; 0 = whole mini-batch
  c.rl.mini_batches = 1  # PPO mini-batches per RL step
  c.rl.ppo_epochs = 1

  # Rollout replay (dots_jax.rl.replay).
  c.replay = ml_collections.ConfigDict(dict(enabled=False, capacity=256, fresh_fraction=0.5))

  # Online data selection (dots_jax.selection, dots_jax.difficulty).
  c.selection = ml_collections.ConfigDict()
  c.selection.dots = ml_collections.ConfigDict(dict(
      ref_size=32, round_steps=2, alpha=0.5, tau=1e-3, embed_path="", online_finetune=False))
  c.selection.greso = ml_collections.ConfigDict(dict(
      alpha=0.25, p_init=0.5, p_step=0.01, p_min=0.05, p_max=0.95, min_keep=0.01, batch_slack=1.25))
  c.selection.ds = ml_collections.ConfigDict(dict(max_rounds=8))
  c.selection.mopps = ml_collections.ConfigDict(dict(prior_a=1.0, prior_b=1.0, forget=0.9, alpha=0.5))

  # Evaluation (dots_jax.evaluate).
  c.eval = ml_collections.ConfigDict(dict(every=25, k=1, temperature=0.0, top_p=1.0,
                                          max_new_tokens=16, max_questions=0, batch=256))

  # Checkpoints and logs (dots_jax.rl.checkpoint, dots_jax.rl.metrics).
  c.ckpt = ml_collections.ConfigDict(dict(every=50, keep=2))
  c.log = ml_collections.ConfigDict(dict(every=1, tensorboard=True))
  return c
