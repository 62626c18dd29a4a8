"""The one place every default of a training run lives. `configs/*.py` start from `base_config()`
and override; `dots_jax.run.settings.read` turns a config into each part's typed settings.

Each section is owned by one package (named in its comment). The tools keep their own settings: the
dry run's are `python -m dots_jax.tools.plan`'s flags, the simulator's `dots_jax/sim/settings.py`,
and the tiny base's recipe is `configs/tiny.py`'s `tiny` section (a run without model.path needs it).
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # grpo | ds | greso | mopps | dots | dots_rr | dots_track | dots_track_rr | greso_track | ...
  # (dots_jax.methods; `python -m dots_jax.main --list_config` lists them all)
  c.method = "grpo"
  c.total_steps = 100
  # Resume a workdir whose config.json differs in more than dots_jax.run.workdir.RESUMABLE_CHANGES.
  c.allow_config_change = False

  # Device mesh (dots_jax.model.sharding). -1 = all remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # Policy (dots_jax.model).
  c.model = ml_collections.ConfigDict()
  c.model.path = ""  # Hugging Face directory (config.json, *.safetensors, tokenizer files)
  c.model.variant = ""  # shape-only variant name from dots_jax.model.variants (dry runs, planning)
  c.model.dtype = "float32"  # compute dtype
  c.model.param_dtype = "float32"
  # Activations between matmuls; float32 keeps a bfloat16 run's sampler and trainer log-probs
  # together (dots_jax.model.qwen2.Qwen2Config.activation_dtype, docs/GAP.md).
  c.model.activation_dtype = "float32"
  c.model.remat = False
  # What a rematerialised layer keeps (a jax.checkpoint_policies name): nothing_saveable recomputes
  # the whole layer in the backward pass; dots_with_no_batch_dims_saveable keeps its weight matmuls.
  c.model.remat_policy = "nothing_saveable"
  # Queries per attention block in training-shaped passes (0 = all at once): bounds the attention
  # scores held in memory to [rows, heads, attn_chunk, T] (dots_jax.model.qwen2._attend_chunked).
  c.model.attn_chunk = 0
  # Run the decoder blocks of cacheless passes (update, pi_old, scoring) as one lax.scan: compile
  # time and program size stop growing with depth (dots_jax.model.qwen2.Qwen2Config.scan_layers).
  c.model.scan_layers = False

  # Data and prompts (dots_jax.data).
  c.data = ml_collections.ConfigDict()
  # synthetic | a registry name (dots_jax.data.sources: math_train, deepscaler_10240, dapo_math_17k,
  # ...) | a .jsonl/.json/.parquet path read with the *_field names below; "a+b" concatenates.
  c.data.train = "synthetic"
  c.data.problem_field = "problem"
  c.data.answer_field = "answer"
  c.data.id_field = "id"  # "" = row numbers
  c.data.manual_dir = ""  # where user-provided training files live
  c.data.shared_dir = ""  # benchmark files; empty = $DOTS_JAX_DATA or ../shared/data
  c.data.eval_sets = ("synthetic_heldout",)
  c.data.system_prompt = "none"  # none | qwen_math | dots
  c.data.chat_template = True
  c.data.user_template = "plain"  # plain | greso (dots_jax.data.prompts.USER_TEMPLATES)
  c.data.max_prompt_tokens = 64
  c.data.prompt_overflow = "drop"  # over-long prompts: drop | left (truncate, keep the end) | error
  c.data.prompt_buckets = (64,)
  c.data.skip_bad_rows = False
  c.data.prepared_dir = ""  # TFDS array_record copies; empty = $DOTS_JAX_PREPARED or ~/.cache/dots_jax/prepared
  c.data.synthetic = ml_collections.ConfigDict(dict(seed=1234, train_size=4000, heldout_size=2000))
  # Families (dots_jax.data.synthetic.FAMILIES) and their weights in the RL pool / held-out split and
  # in the disjoint SFT stream that makes the tiny base policy.
  c.data.synthetic.families = ("add2", "add3", "add4", "sub2", "sub3", "mul2x1", "mul2x2", "add3t")
  # mul2x1 has 720 distinct problems: half weight keeps the pool and held-out split disjoint.
  c.data.synthetic.pool_weights = (1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0)
  c.data.synthetic.sft_weights = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)

  # Rollouts (dots_jax.rollout).
  c.sampling = ml_collections.ConfigDict()
  c.sampling.group_size = 8  # G completions per question
  c.sampling.temperature = 1.0
  c.sampling.top_p = 1.0
  c.sampling.top_k = 0  # 0 = off
  c.sampling.max_new_tokens = 16
  # The slot engine (dots_jax.rollout.engine): completions stream through `slots` KV-cache rows
  # (or as many as kv_budget_gib GiB of cache holds), engine_steps decode steps per call, attention
  # over the smallest of engine_windows cache windows that covers the live rows; slots are split
  # over the data axes (kv_budget_gib is per device). slots 0 and kv_budget_gib 0: each generate
  # call is one static batch of all its completions.
  c.sampling.slots = 0
  c.sampling.kv_budget_gib = 0.0
  # Prompts one prefill call takes at most (0: all the free slots need). Every device prefills the
  # whole block, so this bounds the rollout's prefill memory (docs/MEMORY.md).
  c.sampling.prefill_prompts = 0
  c.sampling.engine_steps = 8
  c.sampling.engine_windows = 4

  # Rewards (dots_jax.rewards).
  # kind: math | reversed_digits; timeout_s bounds one math-verify call; answers longer than
  # max_answer_chars score 0 without parsing (the longest benchmark gold is ~210 chars).
  c.reward = ml_collections.ConfigDict(dict(kind="math", timeout_s=5.0, workers=2, max_answer_chars=1000))
  # Score of a wrong answer that has the asked-for format (a \boxed{} answer, or a parsable one for
  # reversed_digits); no answer scores 0 and a correct one 1. GRESO's reward uses 0.1.
  c.reward.format_score = 0.0

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
  # Truncated importance sampling of fresh tokens (verl's / TRL's TIS): each token's policy-gradient
  # term weighted by min(pi_old / mu_sampler, cap), correcting the training-inference gap
  # (rollout/logp_gap_* metrics; top-k/top-p truncation in sampling). 0 = off; verl uses 2.
  c.rl.behavior_is_cap = 0.0

  # Divergence guard (dots_jax.rl.update.raise_if_diverged), checked after every update and before
  # anything is saved: a step whose optimizer steps moved the weights by more than max_update_ratio
  # of their norm (the sum of the steps' norms), or whose mean token entropy rose more than
  # max_entropy_rise of the way from the first step's towards ln(vocab) (collapse to a uniform
  # policy), stops the run. 0 turns a check off.
  c.guard = ml_collections.ConfigDict()
  c.guard.max_update_ratio = 0.1
  c.guard.max_entropy_rise = 0.5
  c.rl.micro_batch = 0  # sequences per gradient micro-batch; 0 = whole mini-batch (or the budget's)
  # Per-device memory budget of the update (GiB): with micro_batch = 0 the micro-batch is the
  # largest whose planned bytes fit (dots_jax.run.memory_plan.update_config); 0 = no budget.
  c.rl.memory_budget_gib = 0.0
  # Positions per vocabulary-projection chunk of the update (0 = all): bounds the logits held in
  # memory to micro_batch x logits_chunk x vocab (dots_jax.rl.logprobs).
  c.rl.logits_chunk = 0
  c.rl.mini_batches = 1  # PPO mini-batches per RL step
  c.rl.shuffle = True  # permute rows before the mini-batch split (verl's actor.shuffle=False: off)
  c.rl.ppo_epochs = 1
  c.rl.min_lr_ratio = 0.0  # cosine decays to lr * min_lr_ratio
  c.rl.adam_eps = 1e-8
  # dtype of AdamW's first moment (float32 | bfloat16: a quarter less optimizer state). The second
  # moment stays float32: its per-step relative change, 1 - b2 = 1e-3, is below bfloat16's
  # resolution (2^-8), so a bfloat16 second moment would stop following the gradients.
  c.rl.mu_dtype = "float32"

  # Rollout replay (dots_jax.rl.replay), on for the methods that have it (dots_jax.methods).
  # warmup_steps: steps trained on fresh groups only (the official first round: mu steps); -1 = the
  # DOTS re-prediction interval selection.dots.round_steps.
  c.replay = ml_collections.ConfigDict(dict(capacity=256, fresh_fraction=0.5, warmup_steps=-1))

  # Online data selection (dots_jax.selection, dots_jax.difficulty).
  c.selection = ml_collections.ConfigDict()
  c.selection.dots = ml_collections.ConfigDict(dict(
      ref_size=32, round_steps=2, alpha=0.5, tau=1e-3, embed_path="", online_finetune=False))
  c.selection.greso = ml_collections.ConfigDict(dict(
      alpha=0.25, p_init=0.5, p_step=0.01, p_min=0.05, p_max=0.95, min_keep=0.01))
  # Rollout rounds of dynamic sampling and GRESO (dots_jax.selection.base.RolloutRounds), in units of
  # rl.batch_questions: first round, floor of the adaptive later ones (GRESO: 384 and 64 for 256).
  c.selection.rounds = ml_collections.ConfigDict(dict(first=1.5, floor=0.25, slack=1.25,
                                                      max_rounds=8))
  # MoPPS (its math recipe): lambda = forget = 1.0 (no decay), 16 x batch_questions candidates.
  c.selection.mopps = ml_collections.ConfigDict(dict(prior_a=1.0, prior_b=1.0, forget=1.0, alpha=0.5))
  # DOTS details. embed_path: embedding cache directory ("" = $DOTS_JAX_CACHE or ~/.cache/dots_jax,
  # then /embeddings); backbone: checkpoint embedding the questions ("" = model.path, the initial
  # policy); estimator_path: output of `python -m dots_jax.difficulty`, "auto" = that offline
  # stage run on first use and cached (affordable on the tiny default; a real model's pool rollouts
  # are a job of their own), "" = untrained adapters, for smoke runs only. embed_dtype: the
  # backbone's weights and activations in the embedding pass (float32 | bfloat16: half the memory;
  # the pass is sharded over the run's mesh either way; docs/MEMORY.md).
  # Estimator: width/layers/dropout of each adapter, score_tau the softmax
  # temperature over reference scores; chunk = questions per jitted prediction call.
  c.selection.dots.update(dict(
      backbone="", estimator_path="", embed_batch=64, embed_max_len=256, embed_dtype="float32",
      width=256, layers=3,
      dropout=0.1, score_tau=1.0, chunk=8192, online_steps=20, online_lr=1e-4, online_batch=64))
  # Offline estimator training (dots_jax.difficulty.offline) and its evaluation (...quality): a pool of
  # questions rolled out `group` times each by the initial policy (and by every checkpoint in
  # label_policies: labels of several policies, as the official estimator is trained); heldout of them
  # never trained on. epochs > 0 replaces steps by that many passes over the (policy, question) pairs.
  c.selection.dots.fit = ml_collections.ConfigDict(dict(
      pool=2048, heldout=512, group=16, steps=1500, lr=1e-3, warmup=100, batch=64, ref_size=64,
      rollout_batch=256, out_dir="", epochs=0, label_policies=()))
  # MoPPS: candidates per step = candidate_factor * batch_questions, drawn from the epoch stream.
  c.selection.mopps.candidate_factor = 16
  # The tracking difficulty model (dots_jax.difficulty.tracker) of dots_track, dots_track_rr and
  # greso_track: a label's weight halves every half_life steps; a question's own estimate gains
  # drift logit variance per step unobserved; the newest max_labels labels are kept; clusters
  # embedding clusters each recalibrate their own intercept, moving halfway with shrink labels'
  # worth of evidence; content_floor is the least logit variance of a content prediction. The
  # round (selection.dots.round_steps) starts with ref_size reference questions (uniform |
  # stratified: evenly over the clusters); train_refs lets reference groups with reward variance
  # train; the round's questions are drawn by what the posterior says about reward variance (draw
  # "variance": softmax(E[p (1 - p)] / tau); "signal": in proportion to signal^(1/tau), signal the
  # chance that a group has reward variance, tau 1 composing the batch as dynamic sampling's);
  # floor: the share of the round drawn evenly from every cluster (by the same rule within it).
  c.selection.track = ml_collections.ConfigDict(dict(
      half_life=8.0, drift=0.02, max_labels=2048, clusters=16, shrink=8.0, content_floor=0.1,
      ref_size=16, ref_mode="stratified", train_refs=True, draw="variance", tau=0.05, floor=0.0))

  # Evaluation (dots_jax.evaluate).
  c.eval = ml_collections.ConfigDict(dict(every=25, k=1, temperature=0.0, top_p=1.0,
                                          max_new_tokens=16, max_questions=0, batch=256))
  c.eval.out = "eval_results.json"  # JSON report of `python -m dots_jax.evaluate`
  # Question meta field to break accuracy down by ("" = none): "family" for the synthetic sets,
  # "level" or "subject" for MATH-style sets.
  c.eval.group_by = ""
  # exact: score the one correct completion instead of sampling (synthetic sets, temperature 1):
  # the expected accuracy with no sampling noise, from one forward pass.
  c.eval.exact = False

  # Checkpoints and logs (dots_jax.run.checkpoint, dots_jax.run.metrics).
  # export_hf: also write each checkpoint's policy as a Hugging Face directory <workdir>/hf/<step>.
  # lock_lease_s: a gs:// workdir's writer lease (renewed every third of it): how long a crashed
  # run's successor waits before taking the workdir over (dots_jax.run.workdir.WorkdirLock).
  c.ckpt = ml_collections.ConfigDict(dict(every=50, keep=2, async_save=False, export_hf=False,
                                          lock_lease_s=300.0))
  # samples_every: every that many steps the first `samples` completions of the batch go to
  # <workdir>/samples.jsonl (0 = never).
  # wandb_project: also log to Weights & Biases (pip install wandb; "" = off); the run id is kept
  # in the checkpoint, so a resume continues the same W&B run.
  c.log = ml_collections.ConfigDict(dict(every=1, tensorboard=True, samples_every=10, samples=4,
                                         wandb_project=""))
  # Persistent XLA compilation cache, so a resumed run does not recompile: "workdir" =
  # <workdir>/compile_cache, "" = off, else a directory (shared across runs of the same shapes).
  c.compilation_cache = "workdir"
  return c
