"""Benchmark evaluation of a policy: prompts of every set of `data.eval_sets`, completions sampled with
`config.eval`'s decoding (or, on the synthetic sets, the exact probability of the one correct
completion), scored and summarised (`scores`). `Evaluator.run(generate, rng)` never touches the
sampler: `generate(prompt_token_lists, k, rng) -> list[list[str]]` gives k completions per prompt.
"""

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from dots_jax.data.dataset import QuestionSet, load_dataset
from dots_jax.data.prompts import build_prompts
from dots_jax.data.settings import DataSettings
from dots_jax.data.sources import DOTS_AVERAGE_SETS
from dots_jax.evaluate.scores import dots_average, group_accuracy, summarize, summarize_exact
from dots_jax.exact import ExactFn, exact_logprob_fn, target_tokens
from dots_jax.policy.tiny_base import answer_encoder
from dots_jax.rewards import RewardSettings, score_batch
from dots_jax.rollout.generator import Decoding, EngineSettings, GenerateFn, Generator


def reward_kind(set_name: str) -> str:
  return "reversed_digits" if set_name.startswith("synthetic") else "math"


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """`config.eval` (config_base.py says what each does)."""

  every: int
  k: int
  temperature: float
  top_p: float
  max_new_tokens: int
  max_questions: int
  batch: int
  out: str
  group_by: str
  exact: bool

  @property
  def decoding(self) -> Decoding:
    return Decoding(self.temperature, self.top_p, 0, self.max_new_tokens)


class Evaluator:
  """Prompts for every set of `data.eval_sets`, built once; `run` samples, scores and summarises."""

  def __init__(self, tokenizer: Any, data: DataSettings, settings: EvalSettings,
               reward: RewardSettings, sets: Mapping[str, QuestionSet] | None = None):
    self.settings, self.reward = settings, reward
    if settings.exact and (settings.temperature != 1.0 or settings.top_p != 1.0):
      raise ValueError(f"config.eval.exact=True computes the accuracy of temperature-1 sampling; it "
                       f"needs config.eval.temperature=1.0 and top_p=1.0, got "
                       f"{settings.temperature} and {settings.top_p}")
    if sets is None:
      sets = {name: load_dataset(data, name) for name in data.eval_sets}
    self.prompts: dict[str, list[list[int]]] = {}
    self.golds: dict[str, list[str]] = {}
    self.prompt_counts: dict[str, dict] = {}
    self.groups: dict[str, list[str]] = {}
    self.targets: dict[str, list[list[int]]] = {}  # exact mode: the one correct completion's tokens
    self.pass_rates: dict[str, np.ndarray] = {}  # exact mode: each question's pass rate, last run
    for name, qs in sets.items():
      n = len(qs) if settings.max_questions <= 0 else min(len(qs), settings.max_questions)
      questions = qs.get_batch(range(n))  # the first n: the same questions at every evaluation
      batch = build_prompts(tokenizer, [q.problem for q in questions], data)
      if not batch.tokens:
        raise ValueError(f"eval set {name}: every prompt is longer than config.data.max_prompt_tokens="
                         f"{data.max_prompt_tokens}")
      self.prompts[name] = batch.tokens
      self.golds[name] = [questions[i].answer for i in batch.kept]
      self.prompt_counts[name] = dict(batch.counts)
      # Per-group breakdown (synthetic family, MATH level/subject): where a change in accuracy comes
      # from. A question without the meta field counts in group "(none)".
      key = settings.group_by
      self.groups[name] = ([str(questions[i].meta.get(key, "(none)")) for i in batch.kept]
                           if key else [])
      if settings.exact:
        self.targets[name] = exact_targets(name, self.golds[name], tokenizer)

  def _samples(self, name: str, generate: GenerateFn, k: int, rng: Any) -> list[list[str]]:
    prompts, size = self.prompts[name], self.settings.batch
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
    k = self.settings.k
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    if self.settings.exact and exact is None:
      raise ValueError("config.eval.exact=True: Evaluator.run needs the exact scoring function")
    for i, name in enumerate(self.prompts):
      if self.settings.exact:
        scores_QxK = self._exact_pass(name, exact)[:, None]
        self.pass_rates[name] = scores_QxK[:, 0]
        metrics = summarize_exact(scores_QxK[:, 0], k)
      else:
        completions = self._samples(name, generate, k, jax.random.fold_in(rng, i))
        golds = [g for g in self.golds[name] for _ in range(k)]
        flat = [c for row in completions for c in row]
        # Accuracy: a wrong answer scores 0 whatever training's format score.
        scores, stats = score_batch(flat, golds, dataclasses.replace(
            self.reward, kind=reward_kind(name), format_score=0.0))
        scores_QxK = scores.reshape(-1, k)
        metrics = summarize(scores_QxK)
        metrics["reward_reasons"] = dict(stats.counts)
      if self.groups[name]:
        metrics["groups"] = group_accuracy(scores_QxK, self.groups[name])
      metrics["prompts"] = self.prompt_counts[name]
      results[name] = metrics
    return self._report(results, step, t0)

  def _exact_pass(self, name: str, exact: ExactFn) -> np.ndarray:
    prompts, targets, size = self.prompts[name], self.targets[name], self.settings.batch
    logp = [np.asarray(exact(prompts[s:s + size], targets[s:s + size]), np.float64)
            for s in range(0, len(prompts), size)]
    return np.exp(np.concatenate(logp))

  def _report(self, results: dict[str, dict], step: int | None, t0: float) -> dict:
    return {"step": step, "sets": results, "dots_average": dots_average(results),
            "dots_average_sets": list(DOTS_AVERAGE_SETS), "seconds": time.perf_counter() - t0,
            "temperature": self.settings.temperature, "top_p": self.settings.top_p,
            "exact": bool(self.settings.exact)}


def exact_targets(name: str, golds: Sequence[str], tokenizer: Any) -> list[list[int]]:
  """Token ids of the only completion the reward accepts for each gold: exact evaluation exists
  where that completion is unique (the reversed-digit synthetic sets), not for free-form math."""
  if reward_kind(name) != "reversed_digits":
    raise ValueError(f"config.eval.exact=True: eval set {name!r} is scored by the math verifier, "
                     "which accepts many completions; exact evaluation covers the synthetic sets "
                     "only (set config.eval.exact=False to sample)")
  encode = answer_encoder(tokenizer)
  return [target_tokens(g, encode, tokenizer.eos_token_id) for g in golds]


def evaluate_policy(qcfg: Any, graphdef: Any, params: Any, tokenizer: Any, *, data: DataSettings,
                    settings: EvalSettings, reward: RewardSettings, engine: EngineSettings,
                    seed: int, mesh: Any = None) -> dict:
  """The evaluation report of the policy (graphdef, params) on `data.eval_sets` under `settings`."""
  generator = Generator(graphdef, qcfg, tokenizer, prompt_buckets=data.prompt_buckets,
                        max_new_tokens=settings.max_new_tokens, mesh=mesh, engine=engine)
  exact = (exact_logprob_fn(graphdef, params, length=max(data.prompt_buckets) +
                            settings.max_new_tokens, batch=settings.batch, mesh=mesh)
           if settings.exact else None)
  return Evaluator(tokenizer, data, settings, reward).run(
      generator.text_fn(params, settings.decoding), jax.random.key(seed), exact=exact)
