"""The RL job: `train_and_evaluate(config, workdir)`; `dots_jax.main` only parses flags.

Phases under banners (setup, mesh, policy, data, selection, learner, restore), then the loop, whose
body reads as one RL step: collect (select -> rollout -> reward, `driver.collect_batch`) -> learn
(replay -> pi_old -> update, `Learner.learn`) -> log -> evaluate -> checkpoint. Every process runs the
same program on the same global batch
(selection is a pure function of (seed, step, its state), so all processes agree); only process 0
writes logs and checkpoint metadata.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import ml_collections
from flax import nnx

from dots_jax import fs
from dots_jax.data.dataset import load_dataset
from dots_jax.data.prompts import PromptTable
from dots_jax.difficulty.offline import dots_inputs
from dots_jax.evaluate.benchmarks import Evaluator
from dots_jax.evaluate.held_out import PolicyEval
from dots_jax.evaluate.pool_rates import PoolPassRates
from dots_jax.methods import get_method
from dots_jax.model import hf_io, qwen2, sharding
from dots_jax.policy import policy_path
from dots_jax.rl import update
from dots_jax.rl.learner import Learner, LearnResult
from dots_jax.rollout.generator import Generator
from dots_jax.rollout.roller import Roller
from dots_jax.run import checkpoint, memory_plan, metrics, report, settings
from dots_jax.run.metrics import Progress, banner, log_line
from dots_jax.run.startup import (check_model_mesh, check_workdir, enable_compilation_cache,
                                  validate_config)
from dots_jax.run.workdir import WorkdirLock, check_config, check_data, commit_config, has_config
from dots_jax.selection import driver, factory


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) RL fine-tuning in `workdir`; returns the final summary."""
  # ----- setup ------------------------------------------------------------------------------------
  t_start = time.perf_counter()
  validate_config(config)
  check_workdir(workdir)
  s = settings.read(config)  # the config's one read: each part gets its own typed settings
  # One writer: a second run on this workdir stops here.
  lock = WorkdirLock(workdir, lease_s=s.ckpt.lock_lease_s, log=log_line).acquire()
  try:
    return _train(config, s, workdir, t_start)
  finally:
    lock.release()


def _train(config: ml_collections.ConfigDict, s: settings.JobSettings, workdir: str,
           t_start: float) -> dict[str, Any]:
  """The run itself, once the workdir is this process's (see `train_and_evaluate`)."""
  # config.json is (re)written once a checkpoint made with this config exists (the loop below).
  config_committed = not check_config(config, workdir, log=log_line) and has_config(workdir)
  enable_compilation_cache(s.compilation_cache, workdir)
  method = get_method(s.method)
  banner(f"setup: method {s.method}, {s.total_steps} steps, workdir {workdir}, "
         f"process {jax.process_index()}/{jax.process_count()}")

  # ----- mesh -------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(s.mesh)
  validate_config(config, sharding.mesh_axis_sizes(mesh))
  banner(f"mesh: {sharding.mesh_axis_sizes(mesh)} over {jax.device_count()} "
         f"{jax.devices()[0].platform} devices")

  # ----- policy -----------------------------------------------------------------------------------
  path = policy_path(s.model.path, s.tiny, log=log_line)
  tokenizer = hf_io.load_tokenizer(path)
  check_model_mesh(qwen2.Qwen2Config.from_hf(hf_io.read_hf_config(path)),
                   sharding.mesh_axis_sizes(mesh))  # before any weight is placed
  qcfg, model = hf_io.load_policy(path, mesh=mesh, **s.model.runtime)
  graphdef, params = nnx.split(model)
  del model
  generator = Generator(graphdef, qcfg, tokenizer, prompt_buckets=s.data.prompt_buckets,
                        max_new_tokens=s.decoding.max_new_tokens, mesh=mesh, engine=s.engine)
  banner(f"policy: {path} ({qcfg.num_params() / 1e6:.2f}M params, {qcfg.num_hidden_layers} layers)")

  # ----- data -------------------------------------------------------------------------------------
  prompts = PromptTable(tokenizer, s.data, load_dataset(s.data, "train"))
  roller = Roller(generator, prompts, group_size=s.group_size, decoding=s.decoding,
                  reward=s.reward, batch_questions=s.batch_questions, seed=s.seed)
  evaluator = Evaluator(tokenizer, s.data, s.eval, s.reward)
  eval_generator = Generator(graphdef, qcfg, tokenizer, prompt_buckets=s.data.prompt_buckets,
                             max_new_tokens=s.eval.max_new_tokens, mesh=mesh, engine=s.engine)
  held_out = PolicyEval(s.eval, evaluator, eval_generator, graphdef, total_steps=s.total_steps,
                        seed=s.seed, mesh=mesh, pass_rates_dir=fs.join(workdir, "pass_rates"))
  banner(f"data: {s.data.train} {len(prompts)} prompts ({dict(prompts.counts)}); eval "
         f"{ {k: len(v) for k, v in evaluator.prompts.items()} }")

  # ----- selection / replay -----------------------------------------------------------------------
  dots_kwargs = {}
  if method.needs_estimator:  # the DOTS stage (its offline fit on first use with "auto")
    emb, estimator = dots_inputs(settings.dots_stage(s, path, mesh), prompts.problems(),
                                 log=log_line)
    dots_kwargs = dict(embeddings_NxD=emb, estimator=estimator)
  strategy = factory.make_strategy(s.method, s.selection, len(prompts), seed=s.seed,
                                   group_size=s.group_size, **dots_kwargs)
  # Exact pass rates of pool questions (synthetic tasks): the predictions' true error, the oracle.
  if method.source == "oracle":
    PoolPassRates.require(s.method, s.data.train, s.eval.exact)
  pool_rates = (PoolPassRates(tokenizer, prompts, graphdef, train_set=s.data.train,
                              length=roller.total_len, rows=s.batch_questions, mesh=mesh)
                if PoolPassRates.available(s.data.train, s.eval.exact) else None)

  # ----- learner + train state --------------------------------------------------------------------
  rows = memory_plan.update_rows(s.batch_questions, s.group_size,
                                 sharding.data_parallel_size(mesh))
  ucfg = memory_plan.fit_micro_batch(s.update, qcfg, dict(mesh.shape), roller.total_len, rows,
                                     s.memory_budget_gib, s.optimizer.mu_dtype)
  optimizer = update.make_optimizer(s.optimizer, s.total_steps, ucfg.updates_per_step)
  state_sh = update.train_state_shardings(optimizer, params, mesh)
  # The learner copies the initial params as the KL reference before the train state takes them
  # (they are donated every step).
  learner = Learner.build(graphdef, params, optimizer, ucfg, batch_groups=s.batch_questions,
                          group_size=s.group_size, total_len=roller.total_len,
                          adv_norm=s.adv_norm, seed=s.seed, replay_settings=s.replay, mesh=mesh,
                          state_shardings=state_sh)
  state = jax.device_put(update.init_train_state(params, optimizer, s.seed), state_sh)
  writer = metrics.MetricsWriter(workdir, tensorboard=s.log.tensorboard,
                                 wandb_project=s.log.wandb_project, run_config=config.to_dict())
  lr_at = update.lr_schedule(s.optimizer, s.total_steps, ucfg.updates_per_step)
  progress = Progress()

  # ----- restore ----------------------------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(workdir, s.ckpt.keep, async_save=s.ckpt.async_save)
  preemption = checkpoint.PreemptionWatch(ckpt)
  state, host, restored = ckpt.restore_or_init(state, log=log_line)
  data_fingerprint = prompts.fingerprint
  if host is not None:
    check_data(host.get("data"), data_fingerprint, s.data.train, s.allow_config_change,
               log=log_line)
    strategy.load_state_dict(host["selection"])
    learner.load_state_dict(host["replay"])
    writer.load_state_dict(host["metrics"])
    progress = Progress(**host["progress"])
    banner(f"restore: resumed from step {restored} ({progress.rollouts:,} rollouts, "
           f"{progress.seconds:.0f}s so far)")
  start = int(jax.device_get(state.step))

  # ----- loop -------------------------------------------------------------------------------------
  banner(f"loop: steps {start}..{s.total_steps}, {s.batch_questions} questions x "
         f"G={s.group_size}, replay {'on' if method.replay else 'off'}")
  if start == 0 and s.eval.every > 0:
    record = held_out.run(state.params, 0)
    progress.last_eval = record["eval/accuracy"]
    writer.write(0, {**record, **progress.metrics()})
  timer = metrics.StepTimer()
  t_loop = None  # set after the first step: the ETA leaves its compilation out
  for step in range(start, s.total_steps):
    t_step = time.perf_counter()
    # collect: the strategy selects questions, the driver rolls them out and rewards them.
    with timer.phase("rollout"):
      collected = driver.collect_batch(
          strategy, functools.partial(roller.run, state.params, step), step,
          learner.fresh_groups(step), seed=s.seed,
          pass_rates=pool_rates.at(state.params) if pool_rates else None)
    # learn: replayed groups join the fresh ones, pi_old, the buffer takes the fresh, the update.
    with timer.phase("update"):
      state, learned = learner.learn(state, collected.rollouts.groups, step)
    update.raise_if_nonfinite(learned.metrics, step)
    update.raise_if_diverged(learned.metrics, step, max_update_ratio=s.guard.max_update_ratio,
                             first_entropy=progress.first_entropy,
                             max_entropy_rise=s.guard.max_entropy_rise,
                             vocab_size=qcfg.vocab_size)
    done = step + 1
    # log
    record = _step_record(learned, collected, timer, lr=float(lr_at(progress.optimizer_updates)))
    progress.add_step(time.perf_counter() - t_step, record, collected.indices)
    if s.log.samples_every and done % s.log.samples_every == 0:
      writer.write_samples(done, collected.rollouts.groups, tokenizer, s.log.samples)
    # evaluate
    if held_out.due(done):
      record.update(held_out.run(state.params, done))
      progress.last_eval = record["eval/accuracy"]
    record.update(progress.metrics())
    writer.write(done, record)
    if t_loop is None:
      t_loop, first = time.perf_counter(), done
    if done % s.log.every == 0 or done == s.total_steps:
      _log_progress(s.total_steps, record, progress, done, first, t_loop)
    # checkpoint (also when the machine is about to be preempted: then stop after saving)
    preempted = preemption.reached(done)
    if done % s.ckpt.every == 0 or done == s.total_steps or preempted:
      ckpt.save(done, state, {"selection": strategy.state_dict(), "replay": learner.state_dict(),
                              "metrics": writer.state_dict(), "progress": progress.state_dict(),
                              "data": data_fingerprint})
      if not config_committed:  # the run's config is the one its newest checkpoint was made with
        commit_config(config, workdir)
        config_committed = True
      writer.flush()
      if s.ckpt.export_hf:
        hf_io.export_policy(qcfg, nnx.merge(graphdef, state.params),
                            fs.join(workdir, "hf", str(done)), tokenizer_dir=path)
    if preempted:
      banner(f"preempted: saved step {done}; rerun the same command to resume")
      break

  # ----- done -------------------------------------------------------------------------------------
  preemption.close()
  ckpt.wait()
  writer.flush()
  steps_done = int(jax.device_get(state.step))
  summary = {"method": s.method, "seed": s.seed, "steps": steps_done,
             "total_steps": s.total_steps, "preempted": steps_done < s.total_steps,
             "rollouts": progress.rollouts, "train_seconds": progress.seconds,
             "final_eval_accuracy": progress.last_eval, "last_reward": progress.last_reward,
             "model_path": path, "workdir": fs.absolute(workdir)}
  if jax.process_index() == 0:
    fs.write_json(fs.join(workdir, "summary.json"), summary)
  newest = ckpt.latest_step()
  writer.close()
  ckpt.close()
  if jax.process_index() == 0:
    _report(s, workdir, writer.history, progress, steps_done, newest, t_start)
  return summary


def _report(s: settings.JobSettings, workdir: str, history: list[dict[str, Any]],
            progress: Progress, steps_done: int, checkpoint_step: int | None,
            t_start: float) -> None:
  """The run's closing lines: what it showed and where everything is (`dots_jax.run.report`)."""
  points = report.eval_points(history)
  first, last = (points[0], points[-1]) if points else (None, None)
  eval_set = s.data.eval_sets[0] if s.data.eval_sets else ""
  gain_se = (report.paired_stderr(workdir, first.step, last.step, eval_set) if points
             else float("nan"))
  done = report.RunReport(
      method=s.method, steps=steps_done, total_steps=s.total_steps,
      rollouts=progress.rollouts, train_seconds=progress.seconds,
      wall_seconds=time.perf_counter() - t_start, eval_set=eval_set, first=first, last=last,
      gain_stderr=gain_se, workdir=fs.absolute(workdir), checkpoint_step=checkpoint_step,
      curve_png=report.draw_curve(workdir, s.method))
  lines = done.lines()
  banner(f"done: {lines[0]}")
  for line in lines[1:]:
    log_line(f"   {line}")


def _step_record(learned: LearnResult, collected: driver.CollectedBatch, timer: metrics.StepTimer,
                 lr: float) -> dict[str, Any]:
  """One step's metrics: update, rollout batch, selection, timing, rewards, replay."""
  step_metrics = learned.metrics
  record = {f"train/{k}": v for k, v in step_metrics.items()}
  record["train/lr"] = lr
  record.update(metrics.batch_stats(collected.rewards_QxG, collected.rollouts.lengths_QxG.ravel()))
  record.update(collected.metrics)
  record.update(timer.metrics())
  record.update({f"time/{k}_s": v for k, v in learned.seconds.items() if k == "pi_old"})
  record.update({f"rollout/{k}": v for k, v in learned.gap.items()})
  record["rollout/truncated_frac"] = (float(collected.rollouts.truncated_QxG.mean())
                                      if collected.rollouts.num_groups else float("nan"))
  if record.get("time/rollout_s"):
    record["rollout/tokens_per_s"] = record["selection/completion_tokens"] / record["time/rollout_s"]
  if record.get("time/update_s"):
    record["train/tokens_per_s"] = float(step_metrics["batch_tokens"]) / record["time/update_s"]
  record.update({f"reward/{k}": float(v)
                 for k, v in collected.reward_stats.counts.items()})
  record["replay/size"] = float(learned.replay_size)
  record["replay/replayed_groups"] = float(learned.replayed)
  record["replay/admitted"] = float(learned.admitted)
  return record


def _log_progress(total_steps: int, record: dict[str, Any], progress: Progress, done: int,
                  first: int, t_first: float) -> None:
  """One progress line; the ETA is the mean step time since the first step (which compiles) times
  the steps left, or that first step's time while it is the only one."""
  per_step = ((time.perf_counter() - t_first) / (done - first) if done > first
              else record["time/step_s"])
  eta = per_step * (total_steps - done)
  log_line(f"step {done}/{total_steps} | ETA {metrics.format_eta(eta)} | rollouts "
           f"{progress.rollouts:,} | reward {progress.last_reward:.3f} | eval "
           f"{progress.last_eval:.3f} | zero-var "
           f"{1 - record['selection/effective_frac_rolled']:.2f} | logp gap max "
           f"{record['rollout/logp_gap_max']:.2g} | {record['time/step_s']:.2f}s/step")
