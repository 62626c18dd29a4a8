"""Benchmark evaluation: avg@k, unbiased pass@k, standard errors, the DOTS average; JSON output.

Library use (inside training): `Evaluator(config, tokenizer).run(generate, rng)` where
`generate(prompt_token_lists, k, rng) -> list[list[str]]` returns k completions per prompt; the
evaluator never touches the sampler's internals.

CLI: python -m dots_jax.evaluate --config=configs/tiny.py --config.model.path=DIR
  samples config.eval.k answers per problem of every set in config.data.eval_sets with the
  temperature/top-p of config.eval, prints and writes JSON to config.eval.out.
     python -m dots_jax.evaluate --workdir=W [--step=S] [--config=...]
  evaluates checkpoint S (default: the latest) of a training run with the run's own config
  (W/config.json), or with --config's evaluation settings when one is given; the report goes to
  W/eval_step_<S>.json.
"""

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from dots_jax import fs
from dots_jax.data.dataset import QuestionSet, load_dataset
from dots_jax.data.prompts import PromptTable, build_prompts
from dots_jax.data.sources import DOTS_AVERAGE_SETS
from dots_jax.exact import ExactFn, exact_logprob_fn, target_tokens
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.model.sharding import make_mesh
from dots_jax.rewards import score_batch
from dots_jax.rollout import Decoding, EngineSettings, GenerateFn, Generator
from dots_jax.config_common import ConfigError, policy_runtime
from dots_jax.startup import validate_config
from dots_jax.policy import policy_path
from dots_jax.policy.tiny_base import answer_encoder
from dots_jax.workdir import load_trained, read_config


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
  if n - c < k:
    return 1.0
  # The product form avoids huge binomials.
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_ks(k: int) -> list[int]:
  """The k's reported for k samples: 1, powers of two below k, and k itself."""
  return sorted({1, k} | {2 ** i for i in range(1, max(1, int(math.log2(k)) + 1)) if 2 ** i <= k})


def summarize(scores_QxK: np.ndarray) -> dict:
  """Metrics of one benchmark from 0/1 scores, one row per question, one column per sample."""
  scores_QxK = np.asarray(scores_QxK, np.float64)
  if scores_QxK.ndim != 2 or scores_QxK.size == 0:
    raise ValueError(f"summarize expects a non-empty [questions, samples] array, got {scores_QxK.shape}")
  q, k = scores_QxK.shape
  per_question_Q = scores_QxK.mean(axis=1)
  correct_Q = scores_QxK.sum(axis=1).astype(int)
  out = {
      "num_questions": q,
      "k": k,
      f"avg@{k}": float(per_question_Q.mean()),
      # Standard error of the mean accuracy over questions (samples of one question are not independent).
      "stderr": float(per_question_Q.std(ddof=1) / math.sqrt(q)) if q > 1 else 0.0,
  }
  for kk in pass_ks(k):
    out[f"pass@{kk}"] = float(np.mean([pass_at_k(k, int(c), kk) for c in correct_Q]))
  return out


def summarize_exact(p_Q: np.ndarray, k: int) -> dict:
  """Metrics from each question's exact probability of a correct temperature-1 sample.

  avg@1 is the expected accuracy (the limit of avg@k over infinitely many samples); pass@k = 1 -
  (1 - p)^k is exact for k independent samples. The standard error is over questions only: there is
  no sampling noise left, so two policies evaluated on the same questions differ by exactly their
  difference in expected accuracy.
  """
  p_Q = np.asarray(p_Q, np.float64)
  if p_Q.ndim != 1 or p_Q.size == 0:
    raise ValueError(f"summarize_exact expects a non-empty [questions] array, got {p_Q.shape}")
  q = p_Q.size
  out = {"num_questions": q, "k": 1, "exact": True, "avg@1": float(p_Q.mean()),
         "stderr": float(p_Q.std(ddof=1) / math.sqrt(q)) if q > 1 else 0.0}
  for kk in pass_ks(k):
    out[f"pass@{kk}"] = float(np.mean(1.0 - (1.0 - p_Q) ** kk))
  return out


def group_accuracy(scores_QxK: np.ndarray, groups_Q: Sequence[str]) -> dict[str, dict[str, float]]:
  """Mean accuracy, question count and standard error per group label."""
  per_question_Q = np.asarray(scores_QxK, np.float64).mean(axis=1)
  labels_Q = np.asarray(groups_Q)
  out = {}
  for g in sorted(set(groups_Q)):
    acc = per_question_Q[labels_Q == g]
    out[g] = {"n": int(acc.size), "accuracy": float(acc.mean()),
              "stderr": float(acc.std(ddof=1) / math.sqrt(acc.size)) if acc.size > 1 else 0.0}
  return out


def dots_average(results: Mapping[str, dict]) -> float | None:
  """Mean avg@k over GSM8K, MATH500, Minerva Math and OlympiadBench; None unless all four ran."""
  if not all(name in results for name in DOTS_AVERAGE_SETS):
    return None
  return float(np.mean([results[n][f"avg@{results[n]['k']}"] for n in DOTS_AVERAGE_SETS]))


def reward_kind(set_name: str) -> str:
  return "reversed_digits" if set_name.startswith("synthetic") else "math"


def write_json(path: str, obj: Any) -> None:
  """Atomic write (local or remote): a reader never sees a half-written file, and a failure keeps
  the old one."""
  fs.write_text(path, json.dumps(obj, indent=2, sort_keys=True))


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


def flat_metrics(report: dict, prefix: str = "eval/") -> dict[str, float]:
  """Scalar view of a `run` report for training logs."""
  out = {}
  for name, m in report["sets"].items():
    for key in [f"avg@{m['k']}", "stderr"] + [f"pass@{kk}" for kk in pass_ks(m["k"])]:
      out[f"{prefix}{name}/{key}"] = m[key]
    for group, g in m.get("groups", {}).items():
      out[f"{prefix}{name}/group/{group}"] = g["accuracy"]
  if report["dots_average"] is not None:
    out[f"{prefix}dots_average"] = report["dots_average"]
  return out


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


class PolicyEval:
  """Held-out evaluation inside training: `due(step)` and `run(params, step)` -> flat metrics
  (`eval/accuracy` is the first set's avg@k, the run's headline figure). Its randomness is keyed by
  (seed, step), so a resumed run evaluates as the uninterrupted one. With exact evaluation and a
  `pass_rates_dir`, each evaluation's per-question pass rates go to <pass_rates_dir>/<step>.npz (one
  array per set): which questions moved, not only the mean."""

  def __init__(self, config: Any, evaluator: Evaluator, generator: Generator, graphdef: Any,
               mesh: Any = None, pass_rates_dir: str = ""):
    self.config, self.evaluator, self.generator = config, evaluator, generator
    self.graphdef, self.mesh = graphdef, mesh
    self.pass_rates_dir = pass_rates_dir
    self.key = jax.random.fold_in(jax.random.key(config.seed), 1)

  def due(self, step: int) -> bool:
    every = self.config.eval.every
    return every > 0 and (step % every == 0 or step == self.config.total_steps)

  def run(self, params: Any, step: int) -> dict[str, float]:
    c = self.config
    exact = exact_fn(c, self.graphdef, params, self.mesh) if c.eval.exact else None
    report = self.evaluator.run(self.generator.text_fn(params, Decoding.evaluation(c)),
                                jax.random.fold_in(self.key, step), step, exact=exact)
    flat = flat_metrics(report)
    first = next(iter(report["sets"].values()))
    flat["eval/accuracy"] = float(first[f"avg@{first['k']}"])
    flat["eval/stderr"] = float(first["stderr"])
    flat["eval/seconds"] = float(report["seconds"])
    if self.pass_rates_dir and c.eval.exact and jax.process_index() == 0:
      fs.save_npz(fs.join(self.pass_rates_dir, f"{step}.npz"),
                  **{k: v.astype(np.float32) for k, v in self.evaluator.pass_rates.items()})
    return flat


class PoolPassRates:
  """Exact pass rates of training-pool questions (`PromptTable` indices) under given params, for a
  training set whose reward accepts one completion (the synthetic sets) and config.eval.exact. The
  loop hands `at(params)` to the driver: it measures a strategy's predictions on the trained batch
  against the truth, and the oracle source selects with it. Scoring runs in calls of
  rl.batch_questions rows (one compiled shape; the trained batch is one call)."""

  def __init__(self, config: Any, tokenizer: Any, prompts: PromptTable, graphdef: Any,
               mesh: Any = None):
    golds = [prompts.question(i).answer for i in range(len(prompts))]
    self.targets = exact_targets(config.data.train, golds, tokenizer)
    self.prompts = prompts.tokens
    self.graphdef, self.mesh = graphdef, mesh
    self.length = max(config.data.prompt_buckets) + config.sampling.max_new_tokens
    self.rows = int(config.rl.batch_questions)

  @classmethod
  def for_config(cls, config: Any, tokenizer: Any, prompts: PromptTable, graphdef: Any,
                 mesh: Any = None, *, required: bool = False) -> "PoolPassRates | None":
    """The scorer where the training task has exact pass rates, else None (`required`: raise a
    ConfigError naming the settings instead)."""
    if config.eval.exact and reward_kind(config.data.train) == "reversed_digits":
      return cls(config, tokenizer, prompts, graphdef, mesh)
    if required:
      raise ConfigError(f"config.method={config.method!r} selects with exact pass rates: it needs "
                        f"config.eval.exact=True and a synthetic training set (data.train="
                        f"{config.data.train!r}, eval.exact={config.eval.exact})")
    return None

  def at(self, params: Any) -> Callable[[np.ndarray], np.ndarray]:
    """indices -> float64 pass rates under `params`."""
    exact = exact_logprob_fn(self.graphdef, params, length=self.length, batch=self.rows,
                             mesh=self.mesh)

    def rates(indices: np.ndarray) -> np.ndarray:
      idx = [int(i) for i in np.asarray(indices).ravel()]
      logp = [np.asarray(exact([self.prompts[i] for i in idx[s:s + self.rows]],
                               [self.targets[i] for i in idx[s:s + self.rows]]), np.float64)
              for s in range(0, len(idx), self.rows)]
      return np.exp(np.concatenate(logp)) if logp else np.zeros((0,), np.float64)

    return rates


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


def main(argv: Sequence[str]) -> None:
  from absl import app
  del argv
  config = _CONFIG.value
  try:
    if _WORKDIR.value:
      report = evaluate_workdir(_WORKDIR.value, _STEP.value, config)
      out = fs.join(_WORKDIR.value, f"eval_step_{report['step']}.json")
    elif config is None:
      raise ConfigError("pass --config=<config file> (and --config.model.path) or --workdir=<run>")
    else:
      report, out = evaluate_checkpoint(config), config.eval.out
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  write_json(out, report)
  print(json.dumps(flat_metrics(report), indent=2, sort_keys=True))
  print(f"wrote {out}")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py")
  _WORKDIR = flags.DEFINE_string("workdir", None, "evaluate a training run's checkpoint")
  _STEP = flags.DEFINE_integer("step", None, "with --workdir: checkpoint step (default: latest)")
  app.run(main)
