"""Evaluate a policy on the benchmarks of a config, or a training run's checkpoint.

  python -m dots_jax.evaluate --config=configs/tiny.py --config.model.path=DIR [--out=FILE]
    samples config.eval.k answers per problem of every set in config.data.eval_sets with the
    temperature/top-p of config.eval; prints the scalars and writes the JSON report to --out
    (default: config.eval.out).
  python -m dots_jax.evaluate --workdir=W [--step=S] [--config=...] [--out=FILE]
    evaluates checkpoint S (default: the newest verified one) of a training run with the run's own
    config (W/config.json), or with --config's evaluation settings when one is given. It only reads
    the run (a trainer may be writing it); the report goes to --out (default:
    <W>_eval/step_<S>.json, beside the run directory, never into it).
"""

import json
from typing import Any

import jax
import ml_collections
from flax import nnx

from dots_jax import fs
from dots_jax.config_common import ConfigError
from dots_jax.evaluate.benchmarks import evaluate_policy
from dots_jax.evaluate.scores import flat_metrics
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.model.sharding import make_mesh
from dots_jax.policy import policy_path
from dots_jax.run import settings as job_settings
from dots_jax.run.startup import validate_config
from dots_jax.run.workdir import load_trained, read_config


def evaluate_checkpoint(config: ml_collections.ConfigDict, path: str = "") -> dict:
  """Loads the policy at `path` (default: the initial policy of `config`) and evaluates it."""
  validate_config(config)
  s = job_settings.read(config)
  path = path or policy_path(s.model.path, s.tiny)
  mesh = make_mesh(s.mesh)
  qcfg, model = load_policy(path, mesh=mesh, **s.model.runtime)
  graphdef, params = nnx.split(model)
  report = evaluate_policy(qcfg, graphdef, params, load_tokenizer(path), data=s.data,
                           settings=s.eval, reward=s.reward, engine=s.engine, seed=s.seed, mesh=mesh)
  report["model_path"] = path
  return report


def evaluate_workdir(workdir: str, step: int | None = None,
                     config: ml_collections.ConfigDict | None = None) -> dict:
  """Evaluates checkpoint `step` (default: the newest verified one) of a training run; `config`
  (default: the run's own) gives the evaluation settings."""
  s = job_settings.read(config or read_config(workdir))
  mesh = make_mesh(s.mesh)
  trained = load_trained(workdir, step, mesh)
  report = evaluate_policy(trained.qcfg, trained.graphdef, trained.params,
                           load_tokenizer(trained.tokenizer_dir), data=s.data, settings=s.eval,
                           reward=s.reward, engine=s.engine, seed=s.seed, mesh=mesh)
  report.update(workdir=fs.absolute(workdir), step=trained.step)
  return report


def default_out(workdir: str, step: int) -> str:
  """Where a run's evaluation goes without --out: beside the run directory, never inside it."""
  return fs.join(fs.absolute(workdir).rstrip("/") + "_eval", f"step_{step}.json")


def main(argv: Any) -> None:
  from absl import app
  del argv
  config = _CONFIG.value
  try:
    if _WORKDIR.value:
      report = evaluate_workdir(_WORKDIR.value, _STEP.value, config)
      out = _OUT.value or default_out(_WORKDIR.value, report["step"])
    elif config is None:
      raise ConfigError("pass --config=<config file> (and --config.model.path) or --workdir=<run>")
    else:
      report = evaluate_checkpoint(config)
      out = _OUT.value or config.eval.out
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  if jax.process_index() == 0:
    fs.write_json(out, report)
    print(json.dumps(flat_metrics(report), indent=2, sort_keys=True))
    print(f"wrote {out}")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py")
  _WORKDIR = flags.DEFINE_string("workdir", None, "evaluate a training run's checkpoint")
  _STEP = flags.DEFINE_integer("step", None, "with --workdir: checkpoint step (default: the newest "
                               "verified one)")
  _OUT = flags.DEFINE_string("out", None, "the JSON report (default: config.eval.out, or "
                             "<workdir>_eval/step_<S>.json for a run)")
  app.run(main)
