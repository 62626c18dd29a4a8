"""Benchmark evaluation of a policy: prompts of every set of `data.eval_sets`, completions sampled with
`config.eval`'s decoding (or, on the synthetic sets, the exact probability of the one correct
completion), scored and summarised (`scores`). `Evaluator.run(generate, rng)` never touches the
sampler: `generate(prompt_token_lists, k, rng) -> list[list[str]]` gives k completions per prompt.
"""

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from dots_jax import fs
from dots_jax.config_common import policy_runtime
from dots_jax.data.dataset import QuestionSet, load_dataset
from dots_jax.data.prompts import build_prompts
from dots_jax.data.sources import DOTS_AVERAGE_SETS
from dots_jax.evaluate.scores import (dots_average, group_accuracy, summarize, summarize_exact)
from dots_jax.exact import ExactFn, exact_logprob_fn, target_tokens
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.model.sharding import make_mesh
from dots_jax.policy import policy_path
from dots_jax.policy.tiny_base import answer_encoder
from dots_jax.rewards import score_batch
from dots_jax.rollout.generator import Decoding, EngineSettings, GenerateFn, Generator
from dots_jax.run.startup import validate_config
from dots_jax.run.workdir import load_trained, read_config


def reward_kind(set_name: str) -> str:
  return "reversed_digits" if set_name.startswith("synthetic") else "math"


class Evaluator:
  """Prompts for every set in config.data.eval_sets, built once; `run` samples, scores and summarises."""

  def __init__(self, config: Any, tokenizer: Any, sets: Mapping[str, QuestionSet] | None = None):
    self.config = config
    if config.eval.exact and (config.eval.temperature != 1.0 or config.eval.top_p != 1.0):
      raise ValueError(f"config.eval.exact=True computes the accuracy of temperature-1 sampling; it "
                       f"needs config.eval.temperature=1.0 and top_p=1.0, got "
                       f"{config.eval.temperature} and {config.eval.top_p}")
    if sets is None:
      sets = {name: load_dataset(config.data, name) for name in config.data.eval_sets}
    self.prompts: dict[str, list[list[int]]] = {}
    self.golds: dict[str, list[str]] = {}
    self.prompt_counts: dict[str, dict] = {}
    self.groups: dict[str, list[str]] = {}
    self.targets: dict[str, list[list[int]]] = {}  # exact mode: the one correct completion's tokens
    self.pass_rates: dict[str, np.ndarray] = {}  # exact mode: each question's pass rate, last run
    for name, qs in sets.items():
      n = len(qs) if config.eval.max_questions <= 0 else min(len(qs), config.eval.max_questions)
      questions = qs.get_batch(range(n))  # the first n: the same questions at every evaluation
      batch = build_prompts(tokenizer, [q.problem for q in questions], config.data)
      if not batch.tokens:
        raise ValueError(f"eval set {name}: every prompt is longer than config.data.max_prompt_tokens="
                         f"{config.data.max_prompt_tokens}")
      self.prompts[name] = batch.tokens
      self.golds[name] = [questions[i].answer for i in batch.kept]
      self.prompt_counts[name] = dict(batch.counts)
      # Per-group breakdown (synthetic family, MATH level/subject): where a change in accuracy comes
      # from. A question without the meta field counts in group "(none)".
      key = config.eval.group_by
      self.groups[name] = ([str(questions[i].meta.get(key, "(none)")) for i in batch.kept]
                           if key else [])
      if config.eval.exact:
        self.targets[name] = exact_targets(name, self.golds[name], tokenizer)

  def _samples(self, name: str, generate: GenerateFn, k: int, rng: Any) -> list[list[str]]:
    prompts, size = self.prompts[name], self.config.eval.batch
    out: list[list[str]] = []
    for b, start in enumerate(range(0, len(prompts), size)):
      chunk = prompts[start:start + size]
      completions = generate(chunk, k, jax.random.fold_in(rng, b))
      if len(completions) != len(chunk) or any(len(c) != k for c in completions):
        raise ValueError(f"generate returned {[len(c) for c in completions][:4]}... completions for "
                         f"{len(chunk)} prompts; expected {k} per prompt")
      out.extend(completions)
    return out

  def run(self, generate: GenerateFn, rng: Any, step: int | None = None,
          exact: ExactFn | None = None) -> dict:
    """Evaluates every set; returns {"sets": {name: metrics}, "dots_average", "step", ...}.

    With config.eval.exact, `exact` scores each set's one correct completion instead of sampling.
    """
    k = self.config.eval.k
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    if self.config.eval.exact and exact is None:
      raise ValueError("config.eval.exact=True: Evaluator.run needs the exact scoring function")
    for i, name in enumerate(self.prompts):
      if self.config.eval.exact:
        scores_QxK = self._exact_pass(name, exact)[:, None]
        self.pass_rates[name] = scores_QxK[:, 0]
        metrics = summarize_exact(scores_QxK[:, 0], k)
      else:
        completions = self._samples(name, generate, k, jax.random.fold_in(rng, i))
        golds = [g for g in self.golds[name] for _ in range(k)]
        flat = [c for row in completions for c in row]
        scores, stats = score_batch(flat, golds, kind=reward_kind(name),
                                    timeout_s=self.config.reward.timeout_s,
                                    workers=self.config.reward.workers)
        scores_QxK = scores.reshape(-1, k)
        metrics = summarize(scores_QxK)
        metrics["reward_reasons"] = dict(stats.counts)
      if self.groups[name]:
        metrics["groups"] = group_accuracy(scores_QxK, self.groups[name])
      metrics["prompts"] = self.prompt_counts[name]
      results[name] = metrics
    return self._report(results, step, t0)

  def _exact_pass(self, name: str, exact: ExactFn) -> np.ndarray:
    prompts, targets, size = self.prompts[name], self.targets[name], self.config.eval.batch
    logp = [np.asarray(exact(prompts[s:s + size], targets[s:s + size]), np.float64)
            for s in range(0, len(prompts), size)]
    return np.exp(np.concatenate(logp))

  def _report(self, results: dict[str, dict], step: int | None, t0: float) -> dict:
    return {"step": step, "sets": results, "dots_average": dots_average(results),
            "dots_average_sets": list(DOTS_AVERAGE_SETS), "seconds": time.perf_counter() - t0,
            "temperature": self.config.eval.temperature, "top_p": self.config.eval.top_p,
            "exact": bool(self.config.eval.exact)}


def exact_targets(name: str, golds: Sequence[str], tokenizer: Any) -> list[list[int]]:
  """Token ids of the only completion the reward accepts for each gold: exact evaluation exists
  where that completion is unique (the reversed-digit synthetic sets), not for free-form math."""
  if reward_kind(name) != "reversed_digits":
    raise ValueError(f"config.eval.exact=True: eval set {name!r} is scored by the math verifier, "
                     "which accepts many completions; exact evaluation covers the synthetic sets "
                     "only (set config.eval.exact=False to sample)")
  encode = answer_encoder(tokenizer)
  return [target_tokens(g, encode, tokenizer.eos_token_id) for g in golds]


def exact_fn(config: Any, graphdef: Any, params: Any, mesh: Any = None) -> ExactFn:
  """The exact scorer at `params` for config.eval (prompt bucket + eval.max_new_tokens rows)."""
  return exact_logprob_fn(graphdef, params,
                          length=max(config.data.prompt_buckets) + config.eval.max_new_tokens,
                          batch=config.eval.batch, mesh=mesh)


def eval_generator(config: Any, qcfg: Any, graphdef: Any, tokenizer: Any, mesh: Any = None
                   ) -> Generator:
  """The generator for config.eval's completion length (training rollouts have their own)."""
  return Generator(graphdef, qcfg, tokenizer, prompt_buckets=config.data.prompt_buckets,
                   max_new_tokens=config.eval.max_new_tokens, mesh=mesh,
                   engine=EngineSettings.from_config(config))


def evaluate_checkpoint(config: Any, path: str = "") -> dict:
  """Loads the policy at `path` (default: the initial policy of `config`) and evaluates it."""
  validate_config(config)
  path = path or policy_path(config)
  mesh = make_mesh(config.mesh)
  qcfg, model = load_policy(path, mesh=mesh, **policy_runtime(config))
  graphdef, params = nnx.split(model)
  report = evaluate_params(config, qcfg, graphdef, params, load_tokenizer(path), mesh)
  report["model_path"] = path
  return report


def evaluate_workdir(workdir: str, step: int | None = None, config: Any = None) -> dict:
  """Evaluates checkpoint `step` (default: the latest) of a training run; `config` (default: the
  run's own) gives the evaluation settings."""
  mesh = make_mesh((config or read_config(workdir)).mesh)
  trained = load_trained(workdir, step, mesh)
  config = config or trained.config
  report = evaluate_params(config, trained.qcfg, trained.graphdef, trained.params,
                           load_tokenizer(trained.tokenizer_dir), mesh)
  report.update(workdir=fs.absolute(workdir), step=trained.step)
  return report


def evaluate_params(config: Any, qcfg: Any, graphdef: Any, params: Any, tokenizer: Any,
                    mesh: Any = None) -> dict:
  """The evaluation report of the policy (graphdef, params) under config.eval."""
  generator = eval_generator(config, qcfg, graphdef, tokenizer, mesh)
  exact = exact_fn(config, graphdef, params, mesh) if config.eval.exact else None
  return Evaluator(config, tokenizer).run(generator.text_fn(params, Decoding.evaluation(config)),
                                          jax.random.key(config.seed), exact=exact)
