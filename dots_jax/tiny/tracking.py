"""Can any estimator keep up? How predictable a run's pass rates are from the questions, step by step.

  python -m dots_jax.tiny.tracking --workdir=/tmp/compare/grpo_s0

Reads a run's exact per-question pass rates of the training pool (<workdir>/pass_rates/<step>.npz,
set "synthetic": the first config.eval.max_questions pool questions, exact evaluation) and, at every
evaluation, measures how well each predictor recovers them (Pearson r over those questions):
  * estimator: the run's DOTS estimator and embeddings, predicting as a DOTS round does
    (`estimator.predict_recalibrated`) from `ref_size` random references labelled with G samples
    each, as in training; and from `ref_factor` x as many references labelled exactly (more and
    noise-free labels: what better references alone could buy);
  * ridge: a ridge regression on the same frozen embeddings fitted to that step's exact pass rates on
    half the questions and scored on the other half: what a readout of these embeddings trained on
    the current policy itself could reach;
  * policy ridge: the same readout of embeddings made the same way by the policy being trained (at the
    steps the run kept a checkpoint of; NaN elsewhere): whether fresher embeddings would track;
  * structure R^2: the share of pass-rate variance explained by each question's operation, digit
    counts and carries (`synthetic.problem_structure`), the skill the testbed's difficulty is built on;
  * a round's block: the questions DOTS's rule (selection.dots alpha and tau, or --tau) would draw
    for one round from the estimator's predictions, from the exact pass rates (the oracle) and
    uniformly, each scored by the expected share of its G-sample groups with reward variance (the
    groups that give GRPO a gradient), and the predictions' mean error on that block (what the
    comparison's tracking bar measures). The same error for the block drawn from the estimator with
    the larger exactly labelled reference set, from the ridge readout on its held-out half, and
    from each question's structure group's exact mean pass rate: how low that error goes with far
    more, and noise-free, labels, or with exact knowledge of the skill each question needs.
Writes <workdir>/tracking.json. If the estimator's r falls while the ridge readout's falls with it,
no estimator on these embeddings can track the policy; if the readout of the policy's own
embeddings falls too, the remaining difficulty is not in the question's content.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np
from flax import nnx

from dots_jax import fs
from dots_jax.data.dataset import load_dataset
from dots_jax.data.synthetic import problem_structure
from dots_jax.difficulty import estimator as est
from dots_jax.difficulty import embed
from dots_jax.difficulty.offline import dots_inputs
from dots_jax.model.hf_io import load_tokenizer
from dots_jax.rl.batch import signal_share
from dots_jax.selection.dots import targeted_order
from dots_jax.policy import policy_path
from dots_jax.run import settings
from dots_jax.run.workdir import checkpoint_steps, load_trained, read_config

POOL_SET = "synthetic"


@dataclasses.dataclass
class StepPredictability:
  step: int
  mean_pass_rate: float
  estimator_r: float  # ref_size references, G-sample labels (as in training)
  estimator_r_exact: float  # ref_factor x ref_size references, exact labels
  ridge_r: float
  policy_ridge_r: float  # NaN at steps without a checkpoint
  structure_r2: float
  block: RoundBlock  # a round of DOTS's rule from the estimator_r predictions
  block_error_exact_refs: float  # the block's error, drawn from the estimator_r_exact predictions
  block_error_ridge: float  # the block's error, drawn from the ridge readout (held-out half)
  block_error_structure: float  # the block's error, drawn from the structure groups' exact means


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson r; NaN when either side is constant."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.std() < 1e-12 or y.std() < 1e-12:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def group_means(p_N: np.ndarray, keys: Sequence[str]) -> np.ndarray:
  """Each question's prediction by the mean of p over its key's group."""
  p = np.asarray(p_N, np.float64)
  keys = np.asarray(keys)
  fitted = np.empty_like(p)
  for k in np.unique(keys):
    m = keys == k
    fitted[m] = p[m].mean()
  return fitted


def explained_share(p_N: np.ndarray, fitted_N: np.ndarray) -> float:
  """Share of the variance of p that `fitted_N` explains (R^2; NaN when p is constant)."""
  p = np.asarray(p_N, np.float64)
  total = ((p - p.mean()) ** 2).sum()
  return float(1.0 - ((p - fitted_N) ** 2).sum() / total) if total > 0 else float("nan")


def group_r2(p_N: np.ndarray, keys: Sequence[str]) -> float:
  """Share of the variance of p explained by the mean of p within each key's group."""
  return explained_share(p_N, group_means(p_N, keys))


# The ridge readout is fitted on the even rows and scored on the odd.
RIDGE_FIT, RIDGE_TEST = slice(0, None, 2), slice(1, None, 2)


def ridge_predict(x_NxD: np.ndarray, p_N: np.ndarray, penalty: float) -> np.ndarray:
  """Predictions for the odd rows (`RIDGE_TEST`) of a ridge regression of p on the standardised
  features, fitted on the even rows."""
  x = np.asarray(x_NxD, np.float64)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  a, y = x[RIDGE_FIT], np.asarray(p_N, np.float64)[RIDGE_FIT]
  w = np.linalg.solve(a.T @ a + penalty * np.eye(x.shape[1]), a.T @ (y - y.mean()))
  return x[RIDGE_TEST] @ w + y.mean()


def ridge_r(x_NxD: np.ndarray, p_N: np.ndarray, penalty: float) -> float:
  """r on the odd rows of a ridge regression fitted on the even rows (standardised features)."""
  return pearson(ridge_predict(x_NxD, p_N, penalty), np.asarray(p_N)[RIDGE_TEST])


def reference_predictions(model: est.DifficultyEstimator, pq_NxH: np.ndarray, emb_NxD: np.ndarray,
                          p_N: np.ndarray, refs: int, group_size: int, rng: np.random.Generator,
                          draws: int) -> list[np.ndarray]:
  """DOTS's predictions of every question, one array per draw of `refs` random references labelled
  with `group_size` samples each (0: exactly)."""
  out = []
  for _ in range(draws):
    idx = rng.choice(len(p_N), refs, replace=False)
    labels = (p_N[idx] if group_size == 0
              else rng.binomial(group_size, p_N[idx]) / group_size).astype(np.float32)
    out.append(est.predict_recalibrated(model, pq_NxH, emb_NxD, idx, labels)[0])
  return out


def mean_r(preds: Sequence[np.ndarray], p_N: np.ndarray) -> float:
  """Mean Pearson r between p and each prediction (NaN when every one is constant)."""
  out = [pearson(pred, p_N) for pred in preds]
  return float(np.nanmean(out)) if np.isfinite(out).any() else float("nan")


@dataclasses.dataclass
class RoundBlock:
  """What one round of DOTS's rule would train on, measured against the exact pass rates."""
  signal_estimator: float  # expected share of groups with reward variance, drawn from predictions
  signal_exact: float  # the same rule drawing from the exact pass rates (the oracle)
  signal_uniform: float  # uniform GRPO's expected share
  error: float  # mean |predicted - exact| over the block drawn from predictions


def round_block(preds: Sequence[np.ndarray], p_N: np.ndarray, *, group_size: int, alpha: float,
                tau: float, budget: int, rng: np.random.Generator) -> RoundBlock:
  """The block of `budget` questions DOTS's rule draws (`dots.targeted_order`) from each prediction
  and from the exact pass rates, means over the predictions' draws."""
  share = signal_share(p_N, group_size)
  est_signal, exact_signal, error = [], [], []
  for pred in preds:
    block = targeted_order(pred, alpha, tau, budget, rng)[:budget]
    est_signal.append(share[block].mean())
    error.append(np.abs(pred[block] - p_N[block]).mean())
    exact_signal.append(share[targeted_order(p_N, alpha, tau, budget, rng)[:budget]].mean())
  return RoundBlock(float(np.mean(est_signal)), float(np.mean(exact_signal)), float(share.mean()),
                    float(np.mean(error)))


def policy_embeddings(workdir: str, step: int, problems: Sequence[str], batch: int,
                      max_len: int) -> np.ndarray:
  """[N, D] embeddings of `problems` by checkpoint `step`'s policy, made as DOTS makes its own."""
  trained = load_trained(workdir, step)
  model = nnx.merge(trained.graphdef, trained.params)
  return embed.embed_texts(model, load_tokenizer(trained.tokenizer_dir), problems, batch=batch,
                           max_len=max_len)


def pass_rate_steps(workdir: str) -> list[int]:
  d = fs.join(workdir, "pass_rates")
  steps = sorted(int(f[:-4]) for f in fs.listdir(d) if f.endswith(".npz") and f[:-4].isdigit())
  if not steps:
    raise FileNotFoundError(f"{d} holds no <step>.npz: the run needs config.eval.exact=True")
  return steps


def pool_pass_rates(workdir: str, step: int, n: int) -> np.ndarray:
  """The exact pass rates of the run's `n` evaluated pool questions at evaluation `step`."""
  path = fs.join(workdir, "pass_rates", f"{step}.npz")
  rates = fs.load_npz(path)
  if POOL_SET not in rates:
    raise ValueError(f"{path} has no {POOL_SET!r} set: add it to config.data.eval_sets")
  p = rates[POOL_SET].astype(np.float64)
  if len(p) != n:
    raise ValueError(f"{path} holds {len(p)} {POOL_SET!r} pass rates, the run evaluated {n}")
  return p


def analyze_run(workdir: str, *, draws: int = 5, ref_factor: int = 8, penalty: float = 10.0,
                seed: int = 0, tau: float = 0.0) -> list[StepPredictability]:
  """Every evaluation step of `workdir`; `tau` > 0 replaces selection.dots.tau of the run."""
  config = read_config(workdir)
  s = settings.read(config)
  pool = load_dataset(s.data, "train")
  problems = [pool[i].problem for i in range(len(pool))]
  evaluated = load_dataset(s.data, POOL_SET)
  n_eval = min(len(evaluated), config.eval.max_questions or len(evaluated))
  if [evaluated[i].problem for i in range(n_eval)] != problems[:n_eval]:
    raise ValueError(f"{workdir}: eval set {POOL_SET!r} is not the head of the training pool "
                     f"(data.train={config.data.train!r})")
  emb, model = dots_inputs(settings.dots_stage(s, policy_path(s.model.path, s.tiny)), problems)
  e = emb[:n_eval]  # the evaluated questions, which every pass-rate file covers
  pq = est.project_queries(model, e)
  structure = [problem_structure(t) for t in problems[:n_eval]]
  d, g = config.selection.dots, int(config.sampling.group_size)
  big = min(n_eval, d.ref_size * ref_factor)
  budget = min(n_eval, d.round_steps * config.rl.batch_questions)  # one round's questions
  out = []
  rng = np.random.default_rng(seed)
  saved = set(checkpoint_steps(workdir))
  for step in pass_rate_steps(workdir):
    p = pool_pass_rates(workdir, step, n_eval)
    preds = reference_predictions(model, pq, e, p, d.ref_size, g, rng, draws)
    preds_exact = reference_predictions(model, pq, e, p, big, 0, rng, draws)
    rule = dict(group_size=g, alpha=d.alpha, tau=tau or d.tau, rng=rng)
    ridge_pred, p_test = ridge_predict(e, p, penalty), p[RIDGE_TEST]
    structure_fit = group_means(p, structure)
    out.append(StepPredictability(
        step=step, mean_pass_rate=float(p.mean()),
        estimator_r=mean_r(preds, p),
        estimator_r_exact=mean_r(preds_exact, p),
        ridge_r=pearson(ridge_pred, p_test),
        policy_ridge_r=(ridge_r(policy_embeddings(workdir, step, problems[:n_eval], d.embed_batch,
                                                  d.embed_max_len), p, penalty)
                        if step in saved else float("nan")),
        structure_r2=explained_share(p, structure_fit),
        block=round_block(preds, p, budget=budget, **rule),
        block_error_exact_refs=round_block(preds_exact, p, budget=budget, **rule).error,
        block_error_ridge=round_block([ridge_pred] * draws, p_test,
                                      budget=min(budget, len(p_test)), **rule).error,
        block_error_structure=round_block([structure_fit] * draws, p, budget=budget, **rule).error))
  return out


def report(rows: list[StepPredictability], ref_size: int, big: int, group_size: int) -> str:
  lines = [f"step | mean p | estimator r ({ref_size} refs, G={group_size}) | estimator r ({big} refs, "
           "exact) | ridge r (embeddings, fitted now) | ridge r (policy's embeddings) | structure R^2 "
           "| round block with reward variance: DOTS / exact / uniform | block error: DOTS / "
           f"{big} exact refs / ridge / structure"]
  for r in rows:
    b = r.block
    lines.append(f"{r.step} | {r.mean_pass_rate:.3f} | {r.estimator_r:.2f} | "
                 f"{r.estimator_r_exact:.2f} | {r.ridge_r:.2f} | {r.policy_ridge_r:.2f} | "
                 f"{r.structure_r2:.2f} | {b.signal_estimator:.2f} / {b.signal_exact:.2f} / "
                 f"{b.signal_uniform:.2f} | {b.error:.3f} / {r.block_error_exact_refs:.3f} / "
                 f"{r.block_error_ridge:.3f} / {r.block_error_structure:.3f}")
  return "\n".join(lines)


def main(argv: Any) -> None:
  from absl import app, flags
  del argv
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError("--workdir is required")
  rows = analyze_run(f.workdir, draws=f.draws, ref_factor=f.ref_factor, penalty=f.ridge, tau=f.tau)
  config = read_config(f.workdir)
  print(report(rows, config.selection.dots.ref_size, config.selection.dots.ref_size * f.ref_factor,
               config.sampling.group_size))
  fs.write_text(fs.join(f.workdir, "tracking.json"),
                json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
  print(f"wrote {f.workdir}/tracking.json")


if __name__ == "__main__":  # flags only when run as a command (main.py defines --workdir too)
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "a run of `python -m dots_jax.main` with exact evaluation of "
                      "the pool (config.data.eval_sets has 'synthetic')")
  flags.DEFINE_integer("draws", 5, "reference draws averaged per step")
  flags.DEFINE_integer("ref_factor", 8, "the larger, exactly labelled reference set, as a multiple "
                       "of selection.dots.ref_size")
  flags.DEFINE_float("ridge", 10.0, "ridge penalty on the standardised embeddings")
  flags.DEFINE_float("tau", 0.0, "DOTS's sampling temperature for the round-block columns (0: the "
                     "run's selection.dots.tau)")
  app.run(main)
